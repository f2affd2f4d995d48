//! Finds the tumbling window in the metrics SQL: `date_bin(INTERVAL '1 minute', "timestamp")`.
//! The window size lives only in the SQL; the runner reads it from there with sqlparser.

use std::ops::ControlFlow;
use std::time::Duration;

use arrow::compute::kernels::cast_utils::parse_interval_month_day_nano;
use datafusion::sql::sqlparser::ast::{
    visit_expressions, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Spanned, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Location;

/// The form the runner recognises, shown when it finds none.
pub const EXPECTED_FORM: &str = "GROUP BY ..., date_bin(INTERVAL '1 minute', \"timestamp\")";

/// A tumbling event-time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window length.
    pub size: Duration,
    /// Event-time column the window bins.
    pub time_column: String,
}

/// Why no window could be read from the SQL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WindowSpecError {
    /// The SQL does not parse.
    #[error("cannot parse the metrics SQL")]
    Parse(#[source] ParserError),
    /// No `date_bin(INTERVAL ..., column)` call.
    #[error("the metrics SQL has no tumbling window; write one as {EXPECTED_FORM}")]
    Missing,
    /// A `date_bin` call whose arguments are not an interval literal and a column.
    #[error(
        "date_bin must have an INTERVAL literal and a column, as in {EXPECTED_FORM}; found {found}"
    )]
    Unrecognised {
        /// The call as written.
        found: String,
        /// Where it starts.
        at: Location,
    },
    /// Several `date_bin` calls that disagree.
    #[error(
        "the metrics SQL bins by two different windows ({first} and {second}); use one size and one column"
    )]
    Conflicting {
        /// The first call.
        first: String,
        /// The call that disagrees with it.
        second: String,
        /// Where the second starts.
        at: Location,
    },
    /// A window size the operator cannot close windows by.
    #[error("{found}: {why}")]
    Unsafe {
        /// The call as written.
        found: String,
        /// What is wrong with its size.
        why: String,
        /// Where it starts.
        at: Location,
    },
}

impl WindowSpecError {
    /// 1-based line and column of the offending call, when known.
    pub fn location(&self) -> Option<(u64, u64)> {
        let at = match self {
            Self::Unrecognised { at, .. }
            | Self::Conflicting { at, .. }
            | Self::Unsafe { at, .. } => at,
            Self::Parse(_) | Self::Missing => return None,
        };
        (at.line > 0).then_some((at.line, at.column))
    }
}

impl WindowSpec {
    /// Reads the window from metrics SQL text.
    pub fn from_sql(sql: &str) -> Result<Self, WindowSpecError> {
        let statements =
            Parser::parse_sql(&GenericDialect {}, sql).map_err(WindowSpecError::Parse)?;
        let mut found: Option<(WindowSpec, String)> = None;
        let mut problem: Option<WindowSpecError> = None;
        let _ = visit_expressions(&statements, |expr| {
            let Expr::Function(function) = expr else {
                return ControlFlow::<()>::Continue(());
            };
            if !function.name.to_string().eq_ignore_ascii_case("date_bin") {
                return ControlFlow::Continue(());
            }
            let text = expr.to_string();
            let at = expr.span().start;
            let spec = match window_of(&function.args) {
                Some(Ok(spec)) => spec,
                Some(Err(why)) => {
                    problem = Some(WindowSpecError::Unsafe {
                        found: text,
                        why,
                        at,
                    });
                    return ControlFlow::Break(());
                }
                None => {
                    problem = Some(WindowSpecError::Unrecognised { found: text, at });
                    return ControlFlow::Break(());
                }
            };
            match &found {
                Some((first, first_text)) if *first != spec => {
                    problem = Some(WindowSpecError::Conflicting {
                        first: first_text.clone(),
                        second: text,
                        at,
                    });
                    return ControlFlow::Break(());
                }
                Some(_) => {}
                None => found = Some((spec, text)),
            }
            ControlFlow::Continue(())
        });
        if let Some(problem) = problem {
            return Err(problem);
        }
        found.map(|(spec, _)| spec).ok_or(WindowSpecError::Missing)
    }
}

/// The window of a `date_bin` call's arguments: `None` when they are not of the recognised
/// form, `Some(Err(why))` when the size is one the operator cannot close windows by.
fn window_of(args: &FunctionArguments) -> Option<Result<WindowSpec, String>> {
    let FunctionArguments::List(list) = args else {
        return None;
    };
    let exprs: Vec<&Expr> = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect::<Option<_>>()?;
    // date_bin(stride, source) or date_bin(stride, source, origin): only the epoch origin keeps
    // windows aligned the way the runner closes them, so an explicit origin is not accepted.
    let [Expr::Interval(interval), column] = exprs.as_slice() else {
        return None;
    };
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            _ => return None,
        },
        _ => return None,
    };
    let text = match &interval.leading_field {
        Some(unit) => format!("{text} {unit}"),
        None => text,
    };
    let time_column = match column {
        Expr::Identifier(ident) => ident.value.clone(),
        Expr::CompoundIdentifier(parts) => parts.last()?.value.clone(),
        _ => return None,
    };
    Some(window_size(&text).map(|size| WindowSpec { size, time_column }))
}

/// The size of an interval literal as DataFusion reads it (`'1 minute'`, `'30 seconds'`,
/// `'5' MINUTE`, `'500 ms'`), when windows can be closed by it: event times are whole
/// microseconds, so a size that is not (`'0.5 us'`) would bin every event into a window of
/// its own and leave the operator dividing by zero; months and years have no fixed length.
fn window_size(text: &str) -> Result<Duration, String> {
    let interval = parse_interval_month_day_nano(text).map_err(|e| e.to_string())?;
    if interval.months != 0 {
        return Err(
            "a window of months or years has no fixed length; use days, hours, minutes or seconds"
                .into(),
        );
    }
    let nanos = i128::from(interval.days) * 86_400_000_000_000 + i128::from(interval.nanoseconds);
    if nanos <= 0 {
        return Err("the window size must be positive".into());
    }
    if nanos % 1_000 != 0 {
        return Err(format!(
            "the window size ({nanos} ns) must be a whole number of microseconds, the unit of \
             event times"
        ));
    }
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| "the window size is too large".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shipped_metrics_sql() {
        let sql = include_str!("../../../../sql/campaign_metrics.sql");
        let spec = WindowSpec::from_sql(sql).unwrap();
        assert_eq!(spec.size, Duration::from_secs(60));
        assert_eq!(spec.time_column, "timestamp");
    }

    #[test]
    fn reads_other_sizes_and_forms() {
        let spec = |sql: &str| WindowSpec::from_sql(sql).map(|s| s.size);
        assert_eq!(
            spec("SELECT date_bin(INTERVAL '30 seconds', ts) FROM t GROUP BY 1"),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            spec("SELECT 1 FROM t GROUP BY date_bin(INTERVAL '5' MINUTE, t.ts)"),
            Ok(Duration::from_secs(300))
        );
        assert_eq!(
            spec("SELECT 1 FROM t GROUP BY date_bin(INTERVAL '2 hours', ts)"),
            Ok(Duration::from_secs(7200))
        );
    }

    #[test]
    fn refuses_missing_unrecognised_and_conflicting_windows() {
        assert_eq!(
            WindowSpec::from_sql("SELECT count(*) FROM t GROUP BY campaign_id"),
            Err(WindowSpecError::Missing)
        );
        assert!(matches!(
            WindowSpec::from_sql("SELECT 1 FROM t GROUP BY date_bin(some_col, ts)"),
            Err(WindowSpecError::Unrecognised { .. })
        ));
        let conflict = WindowSpec::from_sql(
            "SELECT date_bin(INTERVAL '1 minute', ts)\nFROM t GROUP BY date_bin(INTERVAL '2 minutes', ts)",
        )
        .unwrap_err();
        assert!(matches!(conflict, WindowSpecError::Conflicting { .. }));
        assert_eq!(conflict.location(), Some((2, 17)), "the second call");
        let message = WindowSpecError::Missing.to_string();
        assert_eq!(WindowSpecError::Missing.location(), None);
        assert!(
            message.contains("date_bin(INTERVAL '1 minute'"),
            "{message}"
        );
    }

    #[test]
    fn refuses_sizes_the_operator_cannot_close_windows_by() {
        for (sql_size, expected) in [
            ("'0.5 us'", "whole number of microseconds"),
            ("'1500 nanoseconds'", "whole number of microseconds"),
            ("'1 month'", "no fixed length"),
            ("'0 seconds'", "must be positive"),
            ("'-1 minute'", "must be positive"),
        ] {
            let sql = format!("SELECT 1\nFROM t\nGROUP BY date_bin(INTERVAL {sql_size}, ts)");
            let err = WindowSpec::from_sql(&sql).unwrap_err();
            assert!(
                matches!(err, WindowSpecError::Unsafe { .. }),
                "{sql_size}: {err:?}"
            );
            assert!(err.to_string().contains(expected), "{sql_size}: {err}");
            assert_eq!(err.location(), Some((3, 10)), "{sql_size}");
        }
        let ok = |size: &str| {
            WindowSpec::from_sql(&format!(
                "SELECT 1 FROM t GROUP BY date_bin(INTERVAL {size}, ts)"
            ))
            .map(|s| s.size)
        };
        assert_eq!(ok("'1500 us'"), Ok(Duration::from_micros(1500)));
        assert_eq!(ok("'1 day 2 hours'"), Ok(Duration::from_secs(93_600)));
    }
}
