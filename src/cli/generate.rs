//! `generate`: synthetic campaign traffic to the source topic, with a progress bar, a summary and
//! optionally the truth file the tables must match.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::generator::{
    start_ending_now, EventGenerator, GeneratedRecord, GeneratorOptions, Truth,
};
use crate::kafka::client_config;
use crate::kafka::producer::EventProducer;
use crate::window::WindowSpec;

/// Flags of `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Pipeline whose source topic receives the events (default: the only one).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Number of records to send; 0 sends until Ctrl-C.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Target records per second; 0 sends as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Number of distinct campaigns.
    #[arg(long, default_value_t = 10)]
    pub campaigns: u32,
    /// Fraction of malformed records (broken JSON, missing fields, wrong types, unknown
    /// event_type, negative revenue, bad timestamp, non-UTF-8 bytes).
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    pub invalid_ratio: f64,
    /// Fraction of valid events shifted back in time but within the allowed lateness (they
    /// still count in their window).
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    pub out_of_order_ratio: f64,
    /// Fraction of valid events shifted back past the allowed lateness and 5 to 10 windows (the
    /// metrics stage dead-letters them as `late`; never among the first 1,000 records).
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    pub late_ratio: f64,
    /// RNG seed; the same seed and flags give the same events (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Event time of the first event, RFC 3339 (default: so that the last event is stamped now,
    /// or now with `--count 0`; events ahead of the clock are rejected, see `window.max_future`).
    #[arg(long)]
    pub start_time: Option<DateTime<Utc>>,
    /// Event-time distance between consecutive events, e.g. `10ms`.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub spacing: Duration,
    /// Tumbling window size used for the truth file (default: the window of the metrics SQL).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub window: Option<Duration>,
    /// Write the expected table contents (per campaign and window) and invalid counts here, as JSON.
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

fn ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

/// Records sent per producer round trip.
const CHUNK: usize = 5_000;

/// Sends the records and prints a summary.
pub async fn run(config_path: &Path, args: &GenerateArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let pipeline = config.pipeline(args.pipeline.as_deref())?;
    let window = match args.window {
        Some(window) => window,
        None => {
            let sql = std::fs::read_to_string(config.resolve(&pipeline.sql.metrics))?;
            WindowSpec::from_sql(&sql)
                .with_context(|| format!("{}", pipeline.sql.metrics.display()))?
                .size
        }
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let spacing = TimeDelta::from_std(args.spacing)?;
    let start_time = args
        .start_time
        .unwrap_or_else(|| start_ending_now(args.count, spacing));
    let options = GeneratorOptions {
        campaigns: args.campaigns,
        invalid_ratio: args.invalid_ratio,
        out_of_order_ratio: args.out_of_order_ratio,
        late_ratio: args.late_ratio,
        seed,
        start_time,
        spacing,
        window: TimeDelta::from_std(window)?,
        allowed_lateness: TimeDelta::from_std(pipeline.window.allowed_lateness)?,
    };
    let mut generator = EventGenerator::new(options);
    let mut truth = Truth::new(seed, window.as_secs() as i64);
    let producer = EventProducer::new(
        &client_config(&pipeline.source.brokers, &pipeline.source.properties),
        &pipeline.source.topic,
    )?;

    let progress = progress_bar(args.count);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut chunk: Vec<GeneratedRecord> = Vec::with_capacity(CHUNK);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let remaining = if args.count == 0 {
            u64::MAX
        } else {
            args.count - sent
        };
        if remaining == 0 {
            break;
        }
        let size = chunk_size(args.rate).min(remaining.min(usize::MAX as u64) as usize);
        chunk.clear();
        chunk.extend((0..size).map(|_| generator.next_record()));
        let send = producer.send_records(
            chunk
                .iter()
                .map(|r| (r.key.as_slice(), r.payload.as_slice())),
        );
        tokio::select! {
            result = send => result.context("sending generated events")?,
            _ = &mut stop => break,
        }
        for record in &chunk {
            truth.record(record);
        }
        sent += size as u64;
        progress.set_position(sent);
        if args.rate > 0 {
            // Pace by the schedule, not by sleeps, so send time does not slow the rate down.
            let due = Duration::from_secs_f64(sent as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut stop => break,
                }
            }
        }
    }
    producer.flush()?;
    progress.finish_and_clear();
    truth.finish();
    print_summary(&truth, &pipeline.source.topic, started.elapsed(), seed);
    if let Some(path) = &args.truth {
        let json = serde_json::to_vec_pretty(&truth)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("truth written to {}", path.display());
    }
    Ok(true)
}

/// Records per round trip: about 10 rounds a second when paced, big chunks when not.
fn chunk_size(rate: u64) -> usize {
    if rate == 0 {
        CHUNK
    } else {
        ((rate / 10).max(1) as usize).min(CHUNK)
    }
}

fn progress_bar(count: u64) -> ProgressBar {
    let bar = if count == 0 {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::new(count)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bar:40} {human_pos}/{human_len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn print_summary(truth: &Truth, topic: &str, elapsed: Duration, seed: u64) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "sent {} records to {topic} in {:.1}s ({:.0} records/s, seed {seed})",
        truth.records,
        secs,
        truth.records as f64 / secs
    );
    println!(
        "  valid: {} ({} out of order within lateness, {} late)",
        truth.valid_events, truth.out_of_order_events, truth.late_events
    );
    let kinds: Vec<String> = truth
        .invalid_by_kind
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    println!("  invalid: {} ({})", truth.invalid_events, kinds.join(", "));
    println!(
        "  campaigns: {}, windows: {}",
        truth.campaigns.len(),
        truth.windows.len()
    );
}
