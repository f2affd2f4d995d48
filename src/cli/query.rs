//! `query`: ad-hoc SQL over the pipeline's Iceberg tables, printed as a table.

use std::path::Path;

use clap::Args;

/// Flags of `query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SQL to run, e.g. "SELECT campaign_id, count(*) FROM campaign_events GROUP BY 1".
    pub sql: String,
    /// Pipeline whose catalog to query (default: the only one).
    #[arg(long)]
    pub pipeline: Option<String>,
}

/// Runs the query and prints its rows.
pub async fn run(config_path: &Path, args: &QueryArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let pipeline = config.pipeline(args.pipeline.as_deref())?;
    let ctx = crate::query::session(&config, pipeline).await?;
    let batches = crate::query::run(&ctx, &args.sql).await?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    Ok(true)
}
