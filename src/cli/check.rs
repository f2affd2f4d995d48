//! `check`: configuration and SQL problems, each with file and line, before anything runs.

use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use clap::Args;
use datafusion::prelude::SessionContext;

use crate::common::error::Causes;
use crate::config::{Config, PipelineConfig};
use crate::engine::{new_session, SqlProblem};
use crate::pipeline::plan::{plan_pipeline, PlannedSql};
use crate::pipeline::sample::run_sample;
use crate::query;

/// Flags of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check only this pipeline (default: all of them).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Also run both SQL files over this file of sample payloads (JSON lines, one payload
    /// each), without Kafka or Iceberg, and print the parsed rows, the rejects with their
    /// reasons and the windows they make.
    #[arg(long, value_name = "FILE")]
    pub sample: Option<PathBuf>,
}

/// Prints every problem found; `Ok(true)` only when there is none.
pub async fn run(config_path: &Path, args: &CheckArgs) -> anyhow::Result<bool> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(err) => {
            println!("{}", Causes(&err));
            return Ok(false);
        }
    };
    let mut ok = true;
    for pipeline in config.selected(args.pipeline.as_deref())? {
        let ctx = new_session();
        let planned = match plan_pipeline(&config, pipeline, &ctx).await {
            Ok(planned) => {
                let window = crate::pipeline::plan::window_operator(
                    &ctx,
                    &planned,
                    pipeline.window.allowed_lateness,
                    pipeline.window.idle_timeout,
                )
                .await;
                match window {
                    Ok(_) => Ok(planned),
                    Err(err) => Err(vec![SqlProblem::whole_file(
                        config.resolve(&pipeline.sql.metrics),
                        Causes(&err).to_string(),
                    )]),
                }
            }
            Err(problems) => Err(problems),
        };
        match planned {
            Ok(planned) => {
                println!(
                "pipeline {}: ok ({} -> {}.{}: {} columns; {} -> {}.{}: {} columns, {} windows on {})",
                pipeline.name,
                pipeline.sql.parse.display(),
                pipeline.sink.namespace,
                pipeline.sink.events_table.name,
                planned.events_schema.fields().len(),
                pipeline.sql.metrics.display(),
                pipeline.sink.namespace,
                pipeline.sink.metrics_table.name,
                planned.metrics_schema.fields().len(),
                humantime::format_duration(planned.window.size),
                planned.window.time_column,
                );
                if let Some(sample) = &args.sample {
                    if !print_sample(&ctx, &planned, pipeline, sample).await {
                        ok = false;
                    }
                }
            }
            Err(problems) => {
                ok = false;
                println!("pipeline {}: {} problem(s)", pipeline.name, problems.len());
                for problem in problems {
                    println!("  {problem}");
                }
            }
        }
    }
    Ok(ok)
}

/// Runs the sample through the planned SQL and prints what the pipeline would make of it;
/// `false` when the sample cannot be read or run.
async fn print_sample(
    ctx: &SessionContext,
    planned: &PlannedSql,
    pipeline: &PipelineConfig,
    path: &Path,
) -> bool {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            println!("sample {}: cannot read: {err}", path.display());
            return false;
        }
    };
    let report = match run_sample(ctx, planned, pipeline, &bytes).await {
        Ok(report) => report,
        Err(err) => {
            println!("sample {}: {}", path.display(), Causes(&err));
            return false;
        }
    };
    println!(
        "\nsample {}: {} payloads, {} parsed, {} rejected, {} windows",
        path.display(),
        report.payloads,
        report.parsed_rows(),
        report.rejected.len(),
        report.window_rows()
    );
    let table = |batches: &[RecordBatch]| {
        query::render(batches, query::OutputFormat::Table)
            .unwrap_or_else(|err| format!("(cannot show the rows: {err})"))
    };
    println!(
        "\nparsed rows ({}):\n{}",
        report.parsed_rows(),
        table(&report.parsed)
    );
    println!("\nrejected ({}):", report.rejected.len());
    for reject in &report.rejected {
        println!(
            "  line {}: {}  <- {}",
            reject.line,
            reject.reason,
            shorten(&reject.payload, 100)
        );
    }
    println!(
        "\nwindows ({}):\n{}",
        report.window_rows(),
        table(&report.windows)
    );
    true
}

/// The first `max` characters of `text`, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}
