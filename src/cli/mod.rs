//! The command line: flags documented where they are defined, one module per command.

mod bench;
mod check;
mod collect;
mod dlq;
mod generate;
mod maintain;
mod query;
mod run;
mod serve;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Streams campaign events from Kafka into Apache Iceberg tables through SQL, exactly once.
#[derive(Debug, Parser)]
#[command(name = "campaign-pipeline", version, about)]
pub struct Cli {
    /// The pipelines configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "CAMPAIGN_PIPELINE_CONFIG",
        default_value = "pipelines.yaml"
    )]
    pub config: PathBuf,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info`, `campaign=debug` (every crate of
    /// campaign-pipeline, whose names all start so), `campaign_core=debug` (the streaming core),
    /// `campaign_kafka=debug` (the consumer and producers) or `campaign_tables=debug`
    /// (setup and maintenance).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// Log lines as text (coloured only on a terminal) or as JSON objects for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per line (timestamp, level, target, fields, message).
    Json,
}

/// The runner's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate pipelines.yaml and plan both SQL files, touching neither Kafka nor the tables.
    Check(check::CheckArgs),
    /// Create the Kafka topics and the Iceberg namespace and tables (idempotent).
    Setup(setup::SetupArgs),
    /// Run the pipelines: Kafka to the Iceberg tables and the dead letter queue, exactly once.
    Run(run::RunArgs),
    /// Keep the tables healthy: compact small files, merge manifests, expire old snapshots and
    /// delete the files nothing references (`run` does this in the background too).
    Maintain(maintain::MaintainArgs),
    /// Run read-only SQL over the Iceberg tables (`FROM campaign_events`, `FROM campaign_metrics`).
    Query(query::QueryArgs),
    /// List the Iceberg tables of the pipeline's namespace.
    Tables(query::TablesArgs),
    /// List a table's snapshots with their summaries (Kafka offsets included).
    Snapshots(query::SnapshotsArgs),
    /// Serve the tables: the campaign dashboard (CTR, CVR, revenue per campaign) over HTTP and a
    /// read-only PostgreSQL-wire SQL endpoint for BI tools and psql.
    Serve(serve::ServeArgs),
    /// Serve only the campaign dashboard (`serve --no-sql`).
    Dashboard(serve::ServeArgs),
    /// Dead letter tools: statistics, live monitor, export and replay.
    Dlq(dlq::DlqArgs),
    /// Measure throughput and CPU cost (build with --release for meaningful figures).
    Bench(bench::BenchArgs),
    /// Take events from apps over HTTP (`POST /v1/events`) into the source topic, answering
    /// 202 once Kafka has acknowledged them.
    Collect(collect::CollectArgs),
    /// Produce synthetic campaign events (valid, malformed, out of order, late) to the source topic.
    Generate(generate::GenerateArgs),
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    init_logging(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Check(args) => check::run(&cli.config, args).await,
            Command::Setup(args) => setup::run(&cli.config, args).await,
            Command::Generate(args) => generate::run(&cli.config, args).await,
            Command::Run(args) => run::run(&cli.config, args).await,
            Command::Maintain(args) => maintain::run(&cli.config, args).await,
            Command::Query(args) => query::run(&cli.config, args).await,
            Command::Tables(args) => query::tables(&cli.config, args).await,
            Command::Snapshots(args) => query::snapshots(&cli.config, args).await,
            Command::Bench(args) => bench::run(&cli.config, args).await,
            Command::Serve(args) => serve::run(&cli.config, args, true).await,
            Command::Dashboard(args) => serve::run(&cli.config, args, false).await,
            Command::Dlq(args) => dlq::run(&cli.config, args).await,
            Command::Collect(args) => collect::run(&cli.config, args).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {}", crate::common::error::join_causes(err.chain()));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

/// A shutdown signal that becomes `true` on SIGINT or SIGTERM (logging `why` when it does).
fn stop_on_signals(why: &'static str) -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let (stop, shutdown) = crate::pipeline::shutdown_channel();
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("{why}");
        let _ = stop.send(true);
    });
    Ok(shutdown)
}

/// Loads the configuration, as every command does first.
fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}
