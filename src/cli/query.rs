//! `query`, `tables` and `snapshots`: ad-hoc read-only SQL over the pipeline's Iceberg tables
//! (from the argument, a file, or an interactive prompt), optionally back in time.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use datafusion::prelude::SessionContext;

use crate::common::error::Causes;
use crate::query::{self, AsOf, OutputFormat};

/// How `query`, `tables` and `snapshots` print rows (the flag's names for [`OutputFormat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// A JSON array of objects, one per row.
    Json,
}

impl From<Format> for OutputFormat {
    fn from(format: Format) -> Self {
        match format {
            Format::Table => OutputFormat::Table,
            Format::Csv => OutputFormat::Csv,
            Format::Json => OutputFormat::Json,
        }
    }
}

/// Flags of `query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SQL to run, e.g. "SELECT campaign_id, count(*) FROM campaign_events GROUP BY 1".
    /// Without it and without --file, an interactive prompt opens.
    pub sql: Option<String>,
    /// Run the SQL in this file instead (statements separated by `;`).
    #[arg(long, conflicts_with = "sql")]
    pub file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Read the table that has this snapshot as of that snapshot (time travel).
    #[arg(long, conflicts_with = "as_of")]
    pub snapshot: Option<i64>,
    /// Read every table as it was at this time (RFC 3339), e.g. 2026-11-26T14:00:00Z.
    #[arg(long)]
    pub as_of: Option<DateTime<Utc>>,
    /// Pipeline whose catalog to query (default: the only one).
    #[arg(long)]
    pub pipeline: Option<String>,
}

/// Flags of `tables`.
#[derive(Debug, Args)]
pub struct TablesArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Pipeline whose catalog to list (default: the only one).
    #[arg(long)]
    pub pipeline: Option<String>,
}

/// Flags of `snapshots`.
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Table name, e.g. campaign_metrics.
    pub table: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Pipeline whose catalog to read (default: the only one).
    #[arg(long)]
    pub pipeline: Option<String>,
}

/// Runs the query (or the prompt) and prints the rows.
pub async fn run(config_path: &Path, args: &QueryArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let pipeline = config.pipeline(args.pipeline.as_deref())?;
    let as_of = match (args.snapshot, args.as_of) {
        (Some(id), _) => AsOf::Snapshot(id),
        (None, Some(at)) => AsOf::Time(at),
        (None, None) => AsOf::Current,
    };
    let ctx = query::session_at(&config, pipeline, as_of).await?;
    match (&args.sql, &args.file) {
        (Some(sql), _) => print(&ctx, sql, args.format.into()).await,
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            for statement in statements(&text) {
                if !print(&ctx, &statement, args.format.into()).await? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        (None, None) => prompt(&ctx, args.format.into()).await,
    }
}

/// Lists the namespace's tables.
pub async fn tables(config_path: &Path, args: &TablesArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let pipeline = config.pipeline(args.pipeline.as_deref())?;
    let batch = query::tables(&config, pipeline).await?;
    println!("{}", query::render(&[batch], args.format.into())?);
    Ok(true)
}

/// Lists a table's snapshots with their summaries.
pub async fn snapshots(config_path: &Path, args: &SnapshotsArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let pipeline = config.pipeline(args.pipeline.as_deref())?;
    let batch = query::snapshots(&config, pipeline, &args.table).await?;
    println!("{}", query::render(&[batch], args.format.into())?);
    Ok(true)
}

async fn print(ctx: &SessionContext, sql: &str, format: OutputFormat) -> anyhow::Result<bool> {
    match query::run(ctx, sql).await {
        Ok(batches) => {
            println!("{}", query::render(&batches, format)?);
            Ok(true)
        }
        Err(err) => {
            eprintln!("error: {}", Causes(&err));
            Ok(false)
        }
    }
}

/// Statements of a script, split at `;` outside quotes.
fn statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (None, ';') => {
                if !current.trim().is_empty() {
                    out.push(current.trim().to_string());
                }
                current.clear();
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// The interactive prompt: statements end with `;`, history kept in ~/.campaign-pipeline_history.
async fn prompt(ctx: &SessionContext, format: OutputFormat) -> anyhow::Result<bool> {
    let mut editor = rustyline::DefaultEditor::new().context("starting the prompt")?;
    let history =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".campaign-pipeline_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!("read-only SQL over the pipeline's tables; end statements with `;`, quit with \\q or Ctrl-D");
    let mut buffer = String::new();
    loop {
        let line = match editor.readline(if buffer.is_empty() { "sql> " } else { "...> " }) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(_) => break,
        };
        if buffer.is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
            break;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let _ = editor.add_history_entry(buffer.trim());
        for statement in statements(&buffer) {
            print(ctx, &statement, format).await?;
        }
        buffer.clear();
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_split_at_semicolons_outside_quotes() {
        assert_eq!(
            super::statements("SELECT 'a;b' AS x;\n SELECT 2 ;  "),
            vec!["SELECT 'a;b' AS x", "SELECT 2"]
        );
    }
}
