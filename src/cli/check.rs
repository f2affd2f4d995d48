//! `check`: configuration and SQL problems, each with file and line, before anything runs.

use std::path::Path;

use clap::Args;

use crate::config::Config;
use crate::engine::{new_session, SqlProblem};
use crate::pipeline::plan::plan_pipeline;

/// Flags of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check only this pipeline (default: all of them).
    #[arg(long)]
    pub pipeline: Option<String>,
}

/// Prints every problem found; `Ok(true)` only when there is none.
pub async fn run(config_path: &Path, args: &CheckArgs) -> anyhow::Result<bool> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(err) => {
            println!("{err}");
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
                        err.to_string(),
                    )]),
                }
            }
            Err(problems) => Err(problems),
        };
        match planned {
            Ok(planned) => println!(
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
            ),
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
