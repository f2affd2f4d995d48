//! `bench`: throughput and CPU cost per million events, as a table.

use std::path::Path;

use clap::Args;

use crate::bench::{self, BenchOptions};

/// Flags of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Pipeline whose SQL and broker to use (default: the only one).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Events for the in-memory benchmark (parse SQL and Parquet/Iceberg on pre-built batches,
    /// and the window stage on them); 0 skips it.
    #[arg(long, default_value_t = 500_000)]
    pub memory_events: usize,
    /// Events over a fixed set of windows for the window-state memory measure (state is read
    /// after these and after ten times as many); 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    pub window_events: usize,
    /// Events for the end-to-end benchmark through the pipeline's broker; 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    pub kafka_events: usize,
    /// Alternating pairs of the plain consumer and one runner over those events, for the
    /// median and spread of the end-to-end CPU ratio (1: the end-to-end run alone).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub kafka_pairs: u64,
    /// Dead letters for the DLQ tools benchmark (stats, export) through the broker; 0 skips it.
    #[arg(long, default_value_t = 200_000)]
    pub dlq_events: usize,
    /// Events for the comparison of the configured catalog and warehouse (REST or PostgreSQL,
    /// S3) with the embedded default, end to end; 0 skips it (it is skipped anyway when the
    /// configured catalog is the embedded default).
    #[arg(long, default_value_t = 200_000)]
    pub storage_events: usize,
    /// Commits of the simulated day of table maintenance (on, then off; 86,400 is a day of
    /// 1 s commits; 0 skips it).
    #[arg(long, default_value_t = 0)]
    pub day_commits: usize,
    /// Wall clock after which the simulated day without maintenance stops (its commits get
    /// slower with every one).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub day_off_budget: std::time::Duration,
    /// Steady rates (events/s) at which event-to-queryable latency is measured.
    #[arg(long, value_delimiter = ',', default_value = "5000,50000")]
    pub freshness_rates: Vec<u64>,
    /// Seconds each freshness rate is produced (after a 5 s warm-up); 0 skips the rows.
    #[arg(long, default_value_t = 20)]
    pub freshness_seconds: u64,
    /// The runner's `commit.interval` in the freshness rows (default: the pipeline's).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub freshness_commit_interval: Option<std::time::Duration>,
    /// The runner's `batch.max_wait` in the freshness rows (default: the pipeline's).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub freshness_batch_wait: Option<std::time::Duration>,
    /// Events per second of the steady run whose runner memory is sampled.
    #[arg(long, default_value_t = 5_000)]
    pub steady_rate: u64,
    /// Seconds of the steady run (after a 5 s warm-up; 600 is the 10-minute check); 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub steady_seconds: u64,
    /// Seconds of each load step of the HTTP collector rows (10,000 events/s in requests of 1
    /// and of 100 events, then doubling rates); 0 skips them.
    #[arg(long, default_value_t = 5)]
    pub collector_seconds: u64,
    /// Seconds of each run of the commit-contention rows (writers that each hold a partition
    /// commit small appends to one table at the pipeline's commit interval); 0 skips them.
    #[arg(long, default_value_t = 0)]
    pub contention_seconds: u64,
    /// Seconds an idle producer's delivery thread is watched, against rdkafka's
    /// `FutureProducer` beside it; 0 skips the rows.
    #[arg(long, default_value_t = 5)]
    pub idle_seconds: u64,
    /// Writer counts of the commit-contention rows, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    pub contention_writers: Vec<usize>,
}

/// Runs the benchmarks and prints the table.
pub async fn run(config_path: &Path, args: &BenchArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let pipeline = config.pipeline(args.pipeline.as_deref())?;
    let options = BenchOptions {
        memory_events: args.memory_events,
        kafka_events: args.kafka_events,
        kafka_pairs: usize::try_from(args.kafka_pairs).unwrap_or(usize::MAX),
        batch_rows: pipeline.batch.max_rows,
        window_events: args.window_events,
        dlq_events: args.dlq_events,
        storage_events: args.storage_events,
        day_commits: args.day_commits,
        day_off_budget: args.day_off_budget,
        freshness: bench::FreshnessOptions {
            rates: args.freshness_rates.clone(),
            seconds: args.freshness_seconds,
            commit_interval: args.freshness_commit_interval,
            batch_wait: args.freshness_batch_wait,
        },
        steady: bench::SteadyOptions {
            rate: args.steady_rate,
            seconds: args.steady_seconds,
        },
        collector: bench::CollectorOptions {
            seconds: args.collector_seconds,
        },
        contention: bench::ContentionOptions {
            writers: args.contention_writers.clone(),
            seconds: args.contention_seconds,
        },
        idle_seconds: args.idle_seconds,
    };
    let rows = bench::run(&config, pipeline, &options).await?;
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(10);
    println!("| {:width$} | value |", "measure");
    println!("|{}|-------|", "-".repeat(width + 2));
    for r in rows {
        println!("| {:width$} | {} |", r.name, r.value);
    }
    Ok(true)
}
