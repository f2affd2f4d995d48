//! `maintain`: one table maintenance pass over each pipeline's tables (compaction, manifest
//! merging, snapshot expiry, cleanup), safe beside running runners.

use std::path::Path;

use clap::Args;

use crate::common::error::Causes;
use crate::maintain::Maintainer;
#[cfg(feature = "test-hooks")]
use crate::maintain::Stage;

/// Flags of `maintain`.
#[derive(Debug, Args)]
pub struct MaintainArgs {
    /// Maintain only this pipeline's tables (default: every pipeline of the file).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Pause at this point of the pass (tests kill it there, or commit under it).
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub pause_at: Option<Stage>,
    /// How long the pause lasts.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, default_value = "24h", value_parser = humantime::parse_duration)]
    pub pause_for: std::time::Duration,
    /// How long the pass starts new partition rewrites (default: a quarter of orphan_grace).
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub rewrite_for: Option<std::time::Duration>,
}

/// Runs one pass and prints what it did per table.
pub async fn run(config_path: &Path, args: &MaintainArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let mut ok = true;
    for pipeline in config.selected(args.pipeline.as_deref())? {
        let maintainer = Maintainer::open(&config, pipeline).await?;
        #[cfg(feature = "test-hooks")]
        let maintainer = maintainer
            .pause_at(args.pause_at, args.pause_for)
            .rewrite_for(args.rewrite_for);
        for result in maintainer.run_once().await {
            match result {
                Ok(report) => println!("pipeline {}: {report}", pipeline.name),
                Err(err) => {
                    ok = false;
                    eprintln!("error: pipeline {}: {}", pipeline.name, Causes(&err));
                }
            }
        }
    }
    Ok(ok)
}
