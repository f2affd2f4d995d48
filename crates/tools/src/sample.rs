//! `check --sample`: both SQL files over a file of sample payloads, without Kafka or Iceberg, so
//! that a SQL author sees what an edited rule does before deploying it. The payloads take the
//! runner's own path (the micro-batch builder, the parsing stage, the clock bounds, the window
//! operator); only the reading and the writing are left out.

use std::collections::BTreeMap;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::common::{records, ERROR_COLUMN};
use crate::config::PipelineConfig;
use crate::engine::{Isolated, SqlStage};
use crate::pipeline::plan::{window_operator, PlannedSql};
use crate::pipeline::rejects::Rejection;
use crate::pipeline::{route, Routed};
use crate::source::batch::BatchBuilder;
use crate::window::{EventTimeBounds, WindowError};

/// Topic name the sample's rows carry in `_topic`.
const SAMPLE_TOPIC: &str = "sample";

/// Why a sample could not be run through the SQL.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The parsing SQL failed on the sample.
    #[error("running the parsing SQL on the sample")]
    Parse(#[source] DataFusionError),
    /// The window stage failed on the parsed rows.
    #[error("running the metrics SQL on the parsed sample")]
    Window(#[source] WindowError),
    /// Rows of the sample could not be sorted.
    #[error("sorting the sample's rows")]
    Arrow(#[source] ArrowError),
}

/// A payload the pipeline would dead-letter, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleReject {
    /// 1-based line of the sample file.
    pub line: i64,
    /// The dead letter reason.
    pub reason: String,
    /// The payload (lossy UTF-8).
    pub payload: String,
}

/// What the pipeline makes of a sample.
#[derive(Debug, Default)]
pub struct SampleReport {
    /// Payloads read (non-empty lines).
    pub payloads: usize,
    /// The parsed events, with their sample line first.
    pub parsed: Vec<RecordBatch>,
    /// Rejected payloads in line order.
    pub rejected: Vec<SampleReject>,
    /// Every window the valid events make (all open windows emitted at the end).
    pub windows: Vec<RecordBatch>,
}

impl SampleReport {
    /// Parsed rows.
    pub fn parsed_rows(&self) -> usize {
        self.parsed.iter().map(RecordBatch::num_rows).sum()
    }

    /// Window rows.
    pub fn window_rows(&self) -> usize {
        self.windows.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Runs `sample` (JSON lines, one payload each; blank lines skipped) through the planned SQL
/// with `pipeline`'s window settings and the runner's clock.
pub async fn run_sample(
    ctx: &SessionContext,
    planned: &PlannedSql,
    pipeline: &PipelineConfig,
    sample: &[u8],
) -> Result<SampleReport, SampleError> {
    let mut builder = BatchBuilder::new(SAMPLE_TOPIC, 1024);
    let mut payloads: BTreeMap<i64, &[u8]> = BTreeMap::new();
    let now_ms = chrono::Utc::now().timestamp_millis();
    for (index, line) in sample.split(|b| *b == b'\n').enumerate() {
        let line_text = line.strip_suffix(b"\r").unwrap_or(line);
        if line_text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let number = index as i64 + 1;
        payloads.insert(number, line_text);
        builder.push(0, number, Some(now_ms), None, Some(line_text));
    }
    let batch = builder
        .finish(true, Default::default(), 0)
        .map_err(SampleError::Arrow)?;
    let mut report = SampleReport {
        payloads: payloads.len(),
        ..SampleReport::default()
    };
    let mut reject = |line: i64, reason: String| {
        let payload = payloads.get(&line).copied().unwrap_or_default();
        report.rejected.push(SampleReject {
            line,
            reason,
            payload: String::from_utf8_lossy(payload).into_owned(),
        });
    };
    for raw in &batch.not_utf8 {
        let reason = Rejection::InvalidUtf8.fixed_reason().unwrap_or_default();
        reject(raw.offset, reason.to_string());
    }

    let stage = SqlStage::new(ctx, &planned.parse)
        .await
        .map_err(SampleError::Parse)?;
    let Isolated { outputs, failed } = stage
        .run_isolating(&batch.records)
        .await
        .map_err(SampleError::Parse)?;
    if !failed.is_empty() {
        let messages = records::KafkaRecords::new(&batch.records).map_err(SampleError::Arrow)?;
        for row in &failed {
            reject(messages.offset(row.row), row.reason());
        }
    }
    let mut operator = window_operator(
        ctx,
        planned,
        pipeline.window.allowed_lateness,
        pipeline.window.idle_timeout,
    )
    .await
    .map_err(SampleError::Window)?;
    let limits = EventTimeBounds::new(pipeline.window.max_future, pipeline.window.max_past).now();
    let mut parsed = Vec::new();
    for output in &outputs {
        let Routed {
            valid,
            rejected,
            future,
        } = route(output, limits, &planned.window.time_column).map_err(SampleError::Parse)?;
        for rows in [&rejected, &future] {
            for (line, reason) in lines_and_reasons(rows, None).map_err(SampleError::Arrow)? {
                reject(line, reason);
            }
        }
        let sorted = operator
            .take(&valid, limits.earliest, Instant::now())
            .await
            .map_err(SampleError::Window)?;
        for (rows, rejection) in [
            (&sorted.late, Rejection::Late),
            (&sorted.untimed, Rejection::Untimed),
        ] {
            for (line, reason) in
                lines_and_reasons(rows, rejection.fixed_reason()).map_err(SampleError::Arrow)?
            {
                reject(line, reason);
            }
        }
        let valid = valid.to_batch().map_err(SampleError::Arrow)?;
        parsed.push(with_line_first(&valid).map_err(SampleError::Arrow)?);
    }
    report.windows = operator.flush().await.map_err(SampleError::Window)?;
    report.parsed = parsed;
    report.rejected.sort_by_key(|r| r.line);
    Ok(report)
}

/// (line, reason) of rejected rows: the `_error` column's, or `fixed` for all.
fn lines_and_reasons(
    rows: &RecordBatch,
    fixed: Option<&str>,
) -> Result<Vec<(i64, String)>, ArrowError> {
    if rows.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let lines = records::offsets(rows)?;
    let reasons = match fixed {
        Some(_) => None,
        None => Some(cast(column(rows, ERROR_COLUMN)?, &DataType::Utf8)?),
    };
    Ok((0..rows.num_rows())
        .map(|i| {
            let reason = match (&reasons, fixed) {
                (Some(reasons), _) => reasons.as_string::<i32>().value(i).to_string(),
                (None, fixed) => fixed.unwrap_or_default().to_string(),
            };
            (lines.value(i), reason)
        })
        .collect())
}

/// The parsed rows' table columns, after a `line` column (the sample line they came from).
fn with_line_first(rows: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let mut columns: Vec<(String, std::sync::Arc<dyn Array>)> = vec![(
        "line".to_string(),
        std::sync::Arc::new(records::offsets(rows)?) as _,
    )];
    for (field, array) in rows.schema().fields().iter().zip(rows.columns()) {
        if !field.name().starts_with('_') {
            columns.push((field.name().clone(), array.clone()));
        }
    }
    RecordBatch::try_from_iter(columns)
}

fn column<'a>(rows: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, ArrowError> {
    rows.column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| ArrowError::SchemaError(format!("parsed rows lack `{name}`")))
}
