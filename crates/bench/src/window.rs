//! Window benchmarks: parse + window throughput on in-memory batches, and the window state's
//! memory after 1x and 10x the events over the same open windows (it must not grow).

use std::time::Instant;

use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;

use super::{cpu_per_million, kafka_batches, per_second, records_spaced, timed, valid_rows};
use crate::common::Selection;
use crate::config::PipelineConfig;
use crate::engine::SqlStage;
use crate::pipeline::plan::PlannedSql;
use campaign_core::window::{TimeLimits, WindowOperator};

/// The bench replays a fixed history: no event is too old for it.
const UNBOUNDED: i64 = TimeLimits::UNBOUNDED.earliest;

/// Adds the window rows to the table.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    ctx: &SessionContext,
    planned: &PlannedSql,
    parse: &SqlStage,
    pipeline: &PipelineConfig,
    batches: &[RecordBatch],
    memory_events: usize,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let events: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut operator = new_operator(ctx, planned, pipeline).await?;
    let assigned = |_: i32| false;
    let (emitted, both) = timed(async {
        let mut emitted = 0;
        for batch in batches {
            for valid in parsed(parse, planned, batch).await? {
                let now = Instant::now();
                operator.take(&valid, UNBOUNDED, now).await?;
            }
            for closed in operator.advance(assigned, Instant::now()).await? {
                emitted += closed.num_rows();
            }
        }
        Ok(emitted)
    })
    .await?;
    // The window stage alone on already parsed rows.
    let mut parsed_batches = Vec::new();
    for batch in batches {
        parsed_batches.extend(parsed(parse, planned, batch).await?);
    }
    let mut alone = new_operator(ctx, planned, pipeline).await?;
    let (_, window_only) = timed(async {
        for valid in &parsed_batches {
            let now = Instant::now();
            alone.take(valid, UNBOUNDED, now).await?;
            alone.advance(assigned, now).await?;
        }
        Ok(())
    })
    .await?;
    row(
        "window stage only, on parsed rows (in memory)",
        per_second(events, window_only.wall),
    );
    row(
        "window stage only, CPU",
        cpu_per_million(events, window_only.cpu),
    );
    row(
        "parse SQL + window (in memory)",
        per_second(events, both.wall),
    );
    row("parse SQL + window, CPU", cpu_per_million(events, both.cpu));
    row("  window rows emitted", emitted.to_string());

    // Same five minutes of event time however many events: the state must stay as it is.
    let spacing =
        chrono::TimeDelta::microseconds((300_000_000 / memory_events.max(1) as i64).max(1));
    let generated = records_spaced(memory_events, spacing);
    let mut valid = Vec::new();
    for batch in kafka_batches(&generated, pipeline.batch.max_rows)? {
        valid.extend(parsed(parse, planned, &batch).await?);
    }
    drop(generated);
    let mut operator = new_operator(ctx, planned, pipeline).await?;
    let now = Instant::now();
    for pass in 1..=10 {
        for batch in &valid {
            operator.take(batch, UNBOUNDED, now).await?;
        }
        if pass == 1 || pass == 10 {
            // Between compactions a window holds up to 9 partial batches; checkpoints (and
            // this measure) see it compacted to one state row per group.
            let (windows, loose) = operator.state_size();
            operator.compact_all().await?;
            let (_, bytes) = operator.state_size();
            row(
                &format!("window state after {} events", pass * memory_events),
                format!(
                    "{windows} open windows, {} state rows, {:.1} KiB compacted ({:.1} KiB before)",
                    operator.state_rows(),
                    bytes as f64 / 1024.0,
                    loose as f64 / 1024.0,
                ),
            );
        }
    }
    Ok(())
}

async fn new_operator(
    ctx: &SessionContext,
    planned: &PlannedSql,
    pipeline: &PipelineConfig,
) -> anyhow::Result<WindowOperator> {
    Ok(crate::pipeline::plan::window_operator(
        ctx,
        planned,
        pipeline.window.allowed_lateness,
        pipeline.window.idle_timeout,
    )
    .await?)
}

/// The valid parsed rows of one `kafka_records` batch.
async fn parsed(
    parse: &SqlStage,
    planned: &PlannedSql,
    batch: &RecordBatch,
) -> anyhow::Result<Vec<Selection>> {
    let mut valid = Vec::new();
    for out in parse.run(vec![batch.clone()]).await? {
        valid.push(valid_rows(&out, planned)?);
    }
    Ok(valid)
}
