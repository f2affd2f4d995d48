//! `try_cast(text AS TIMESTAMPTZ)` for event times written the way producers write them, in
//! RFC 3339 UTC (`2026-11-28T03:16:37.123Z`), without Arrow's general timestamp parser.
//!
//! Arrow's cast tries every layout it accepts and converts each value through the session's
//! time zone, a large share of the parsing SQL's time. Text of exactly the layout
//! `YYYY-MM-DDTHH:MM:SS[.fraction]Z` is read here digit by digit; anything else (other offsets,
//! a space for `T`, a leap second, garbage) goes to Arrow's parser, value by value, exactly as
//! the cast would, so the result is the same either way.

use std::any::Any;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{ArrayRef, AsArray, PrimitiveArray, StringArray};
use arrow::compute::kernels::cast_utils::string_to_datetime;
use arrow::compute::CastOptions;
use arrow::datatypes::{
    ArrowTimestampType, DataType, FieldRef, Schema, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow::record_batch::RecordBatch;
use datafusion::common::format::DEFAULT_FORMAT_OPTIONS;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::TryCastExpr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

/// `plan` with every `try_cast` of text to a timestamp in its projections read by [`UtcText`].
pub fn read_utc_text_directly(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    super::projections::rewrite_projections(plan, |expr, schema| {
        expr.transform_up(|e| {
            let Some(cast) = e.as_any().downcast_ref::<TryCastExpr>() else {
                return Ok(Transformed::no(e));
            };
            let from = cast.expr().data_type(schema)?;
            match (from, cast.cast_type()) {
                (DataType::Utf8, DataType::Timestamp(_, _)) => {
                    Ok(Transformed::yes(Arc::new(UtcText {
                        expr: cast.expr().clone(),
                        cast_type: cast.cast_type().clone(),
                    })
                        as Arc<dyn PhysicalExpr>))
                }
                _ => Ok(Transformed::no(e)),
            }
        })
    })
}

/// `TRY_CAST(expr AS cast_type)` of `Utf8` text to a timestamp, with RFC 3339 UTC text read
/// directly.
#[derive(Debug, Eq)]
pub struct UtcText {
    expr: Arc<dyn PhysicalExpr>,
    cast_type: DataType,
}

impl PartialEq for UtcText {
    fn eq(&self, other: &Self) -> bool {
        self.expr.eq(&other.expr) && self.cast_type == other.cast_type
    }
}

impl Hash for UtcText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.expr.hash(state);
        self.cast_type.hash(state);
    }
}

impl fmt::Display for UtcText {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TRY_CAST({} AS {})", self.expr, self.cast_type)
    }
}

impl PhysicalExpr for UtcText {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(self.cast_type.clone())
    }

    fn nullable(&self, _input_schema: &Schema) -> Result<bool> {
        Ok(true)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let value = self.expr.evaluate(batch)?;
        let (ColumnarValue::Array(array), DataType::Timestamp(unit, zone)) =
            (&value, &self.cast_type)
        else {
            // A scalar: the cast DataFusion planned.
            return value.cast_to(&self.cast_type, Some(&SAFE));
        };
        let Some(text) = array.as_string_opt::<i32>() else {
            return value.cast_to(&self.cast_type, Some(&SAFE));
        };
        let tz: Tz = zone.as_deref().unwrap_or("+00:00").parse()?;
        let cast = match unit {
            TimeUnit::Second => cast::<TimestampSecondType>(text, &tz, zone),
            TimeUnit::Millisecond => cast::<TimestampMillisecondType>(text, &tz, zone),
            TimeUnit::Microsecond => cast::<TimestampMicrosecondType>(text, &tz, zone),
            TimeUnit::Nanosecond => cast::<TimestampNanosecondType>(text, &tz, zone),
        };
        Ok(ColumnarValue::Array(cast))
    }

    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.expr
            .return_field(input_schema)
            .map(|f| f.as_ref().clone().with_data_type(self.cast_type.clone()))
            .map(Arc::new)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.expr]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(UtcText {
            expr: children[0].clone(),
            cast_type: self.cast_type.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TRY_CAST(")?;
        self.expr.fmt_sql(f)?;
        write!(f, " AS {:?})", self.cast_type)
    }
}

/// `TRY_CAST`'s options: a value that does not convert becomes NULL.
const SAFE: CastOptions = CastOptions {
    safe: true,
    format_options: DEFAULT_FORMAT_OPTIONS,
};

/// Each text as a timestamp of `T` in `zone`: read directly when it is RFC 3339 UTC, else by
/// Arrow's parser in `tz` as Arrow's cast does it (NULL where that fails).
fn cast<T: ArrowTimestampType>(text: &StringArray, tz: &Tz, zone: &Option<Arc<str>>) -> ArrayRef {
    let cast: PrimitiveArray<T> = text
        .iter()
        .map(|value| {
            let value = value?;
            match utc(value) {
                Some(instant) => instant.in_unit(T::UNIT),
                None => {
                    T::from_naive_datetime(string_to_datetime(tz, value).ok()?.naive_utc(), None)
                }
            }
        })
        .collect();
    Arc::new(cast.with_timezone_opt(zone.clone()))
}

/// An instant read from RFC 3339 UTC text: seconds since the Unix epoch and the nanoseconds
/// after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UtcInstant {
    seconds: i64,
    /// Below one second.
    nanos: u32,
}

const NANOS_PER_SECOND: i64 = 1_000_000_000;

impl UtcInstant {
    /// The instant as Arrow's timestamp of `unit` holds it, as chrono's `timestamp*` methods
    /// give it (whole units, rounded down); `None` when it does not fit (nanoseconds outside
    /// the years 1677-2262).
    fn in_unit(self, unit: TimeUnit) -> Option<i64> {
        let nanos = i64::from(self.nanos);
        match unit {
            TimeUnit::Second => Some(self.seconds),
            TimeUnit::Millisecond => self
                .seconds
                .checked_mul(1_000)?
                .checked_add(nanos / 1_000_000),
            TimeUnit::Microsecond => self
                .seconds
                .checked_mul(1_000_000)?
                .checked_add(nanos / 1_000),
            // As chrono's `timestamp_nanos_opt`: before the epoch, the product one second
            // nearer to it, so that the earliest instant that fits does not overflow on the way.
            TimeUnit::Nanosecond if self.seconds < 0 => (self.seconds + 1)
                .checked_mul(NANOS_PER_SECOND)?
                .checked_add(nanos - NANOS_PER_SECOND),
            TimeUnit::Nanosecond => self
                .seconds
                .checked_mul(NANOS_PER_SECOND)?
                .checked_add(nanos),
        }
    }
}

/// The instant `text` names when it is exactly `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, with 1 to
/// 9 fraction digits and a valid date and time; `None` for anything else.
///
/// The seconds are counted from the fields here: through chrono's date and time, which Arrow
/// then converted to its unit, each date was checked and converted twice.
fn utc(text: &str) -> Option<UtcInstant> {
    let (head, rest) = text.as_bytes().split_at_checked(19)?;
    let number = |digits: &[u8]| -> Option<u32> {
        digits.iter().try_fold(0_u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, c)| head.get(at) != Some(&c)) {
        return None;
    }
    let nanos = match rest {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            number(fraction)? * 10_u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let field = |from: usize, to: usize| head.get(from..to).and_then(number);
    let (year, month, day) = (field(0, 4)?, field(5, 7)?, field(8, 10)?);
    let (hour, minute, second) = (field(11, 13)?, field(14, 16)?, field(17, 19)?);
    // A leap second (60) is left to Arrow's parser, as chrono's `and_hms_nano_opt` refuses it.
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let seconds = days_from_civil(i64::from(year), month, day) * 86_400
        + i64::from(hour * 3_600 + minute * 60 + second);
    Some(UtcInstant { seconds, nanos })
}

/// Days in `month` (1-12) of `year`, proleptic Gregorian.
fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a valid date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`: years counted from March, so the leap day ends each one).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use arrow::compute::cast_with_options;

    use super::*;

    const TEXTS: &[&str] = &[
        "2026-11-28T03:16:37.123Z",
        "2026-11-28T03:16:37Z",
        "2026-11-28T03:16:37.1Z",
        "2026-11-28T03:16:37.123456789Z",
        "2026-11-28T03:16:37.1234567891Z",
        "2024-02-29T23:59:59.999Z",
        "2023-02-29T00:00:00Z",
        "2026-12-31T24:00:00Z",
        "2026-06-30T23:59:60Z",
        "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
        "1677-09-21T00:12:44Z",
        "1677-09-21T00:12:43.145224192Z",
        "1677-09-21T00:12:43.145224191Z",
        "1969-12-31T23:59:59.5Z",
        "1900-02-29T00:00:00Z",
        "2000-02-29T00:00:00Z",
        "2262-04-11T23:47:16.854775807Z",
        "2262-04-11T23:47:17Z",
        "2026-11-28T03:16:37.Z",
        "2026-11-28t03:16:37z",
        "2026-11-28 03:16:37Z",
        "2026-11-28T03:16:37+02:00",
        "2026-11-28T03:16:37.5-05:30",
        "2026-11-28T03:16:37",
        "2026-11-28",
        "2026-1-28T03:16:37Z",
        "2026-11-28T03:16:3xZ",
        "+2026-11-28T03:16:37Z",
        "2026-11-28T03:16:37ZZ",
        "yesterday",
        "",
        "2026-11-28T03:16:37.123Zé",
    ];

    /// Arrow's own `TRY_CAST` result for the texts, next to ours.
    fn both(data_type: &DataType) -> (ArrayRef, ArrayRef) {
        let mut texts: Vec<Option<&str>> = TEXTS.iter().copied().map(Some).collect();
        texts.push(None);
        let input: ArrayRef = Arc::new(StringArray::from(texts));
        let expected = cast_with_options(&input, data_type, &SAFE).expect("arrow casts");
        let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
            "t",
            DataType::Utf8,
            true,
        )]));
        let batch = RecordBatch::try_new(schema, vec![input]).expect("batch");
        let expr = UtcText {
            expr: Arc::new(datafusion::physical_expr::expressions::Column::new("t", 0)),
            cast_type: data_type.clone(),
        };
        let ColumnarValue::Array(ours) = expr.evaluate(&batch).expect("evaluates") else {
            panic!("an array in, an array out");
        };
        (expected, ours)
    }

    #[test]
    fn gives_what_arrows_cast_gives_for_every_unit_and_zone() {
        for unit in [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ] {
            for zone in [
                None,
                Some("UTC"),
                Some("+00:00"),
                Some("+05:30"),
                Some("America/New_York"),
            ] {
                let data_type = DataType::Timestamp(unit, zone.map(Arc::from));
                let (expected, ours) = both(&data_type);
                assert_eq!(ours.data_type(), &data_type);
                assert_eq!(&expected, &ours, "{data_type}");
            }
        }
        let (expected, _) = both(&DataType::Timestamp(TimeUnit::Millisecond, None));
        // 13 with arrow 58: the cases keep covering texts the cast rejects.
        assert!(expected.null_count() >= 10, "{}", expected.null_count());
    }

    #[test]
    fn reads_the_usual_layout_itself() {
        let expected = chrono::NaiveDate::from_ymd_opt(2026, 11, 28)
            .and_then(|date| date.and_hms_milli_opt(3, 16, 37, 123))
            .expect("a valid date")
            .and_utc();
        assert_eq!(
            utc("2026-11-28T03:16:37.123Z"),
            Some(UtcInstant {
                seconds: expected.timestamp(),
                nanos: 123_000_000
            })
        );
        assert_eq!(utc("2026-11-28T03:16:37+02:00"), None);
        assert_eq!(utc("2026-02-30T00:00:00Z"), None);
    }

    #[test]
    fn counts_every_day_as_chrono_does() {
        let years = (0..=8).chain(1580..=2420).chain(9990..=9999);
        for year in years {
            for month in 1..=12 {
                for day in 1..=31 {
                    let text = format!("{year:04}-{month:02}-{day:02}T23:59:59.999999999Z");
                    let expected = chrono::NaiveDate::from_ymd_opt(year, month, day)
                        .and_then(|date| date.and_hms_nano_opt(23, 59, 59, 999_999_999))
                        .map(|naive| naive.and_utc());
                    let ours = utc(&text);
                    assert_eq!(
                        ours.map(|instant| instant.seconds),
                        expected.map(|at| at.timestamp()),
                        "{text}"
                    );
                    for unit in [TimeUnit::Millisecond, TimeUnit::Nanosecond] {
                        let chrono_value = expected.and_then(|at| match unit {
                            TimeUnit::Millisecond => Some(at.timestamp_millis()),
                            _ => at.timestamp_nanos_opt(),
                        });
                        assert_eq!(
                            ours.and_then(|instant| instant.in_unit(unit)),
                            chrono_value,
                            "{text} in {unit:?}"
                        );
                    }
                }
            }
        }
    }
}
