//! Event to queryable: events produced at a steady rate while a runner runs; for a sample of
//! them, the time from handing the event to the producer until the events table's current
//! snapshot holds it, read fresh through the catalog (what a query started then would see).
//!
//! A snapshot holds an event when its offsets (the runner's exactly-once record) reach past
//! the event's partition and offset, which the producer's delivery report gives. The reader
//! loads the table every [`POLL`]; a sample's time is taken when the load that first shows it
//! ends, so the figures may be up to one poll late, never early.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;

use super::{create_topics, generator, quantile, scratch_config};
use crate::catalog::open_catalog;
use crate::common::Offsets;
use crate::config::{Config, PipelineConfig};
use crate::kafka::client_config;
use crate::kafka::producer::EventProducer;
use crate::kafka::KafkaError;
use crate::pipeline::{self, RunOptions};
use crate::sink::iceberg::load_state;

/// How often the reader loads the table.
const POLL: Duration = Duration::from_millis(10);
/// Events produced before sampling starts: the runner joins its group and commits once.
pub(super) const WARM_UP: Duration = Duration::from_secs(5);
/// Sampled events per second of producing.
const SAMPLES_PER_SECOND: u64 = 100;
/// How often the producer sends the events due.
const TICK: Duration = Duration::from_millis(5);

/// How the freshness rows are run.
#[derive(Debug, Clone)]
pub struct FreshnessOptions {
    /// Steady production rates, events per second.
    pub rates: Vec<u64>,
    /// How long each rate is produced after the warm-up.
    pub seconds: u64,
    /// The runner's `commit.interval` (the pipeline's own when not given).
    pub commit_interval: Option<Duration>,
    /// The runner's `batch.max_wait` (the pipeline's own when not given).
    pub batch_wait: Option<Duration>,
}

/// An event whose latency is measured.
pub(super) struct Sample {
    sent: Instant,
    partition: i32,
    offset: i64,
}

/// A table state the reader saw: the offsets of the events table's current snapshot.
struct Seen {
    at: Instant,
    offsets: Offsets,
}

/// Adds a row per rate: the latency percentiles, and the commits and files it took.
pub async fn measure(
    config: &Config,
    pipeline: &PipelineConfig,
    options: &FreshnessOptions,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    for &rate in &options.rates {
        one_rate(config, pipeline, options, rate, row)
            .await
            .with_context(|| format!("event to queryable at {rate} events/s"))?;
    }
    Ok(())
}

async fn one_rate(
    config: &Config,
    pipeline: &PipelineConfig,
    options: &FreshnessOptions,
    rate: u64,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let topic = super::scratch_topic(&format!("bench_fresh_{rate}"));
    let dir = tempfile::tempdir()?;
    let mut scratch = scratch_config(config, pipeline, dir.path(), &topic)?;
    let commit_interval = options.commit_interval.unwrap_or(pipeline.commit.interval);
    let batch_wait = options.batch_wait.unwrap_or(pipeline.batch.max_wait);
    scratch.pipelines[0].commit.interval = commit_interval;
    scratch.pipelines[0].batch.max_wait = batch_wait;
    let p = scratch.pipelines[0].clone();
    create_topics(&p).await?;
    let planned = crate::setup::plan(&scratch, &p).await?;
    crate::setup::ensure_tables(&scratch, &p, &planned).await?;

    let (stop, shutdown) = pipeline::shutdown_channel();
    let (reading, read_until) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(read_offsets(scratch.clone(), p.clone(), read_until));
    let measured = Duration::from_secs(options.seconds);
    let total = (rate as f64 * (WARM_UP + measured).as_secs_f64()) as usize;
    let driver = tokio::spawn(drive(
        scratch.clone(),
        p.clone(),
        rate,
        total,
        measured,
        stop,
    ));
    // The runner runs on this task (its future is not Send); the producer and the reader on
    // others, so that neither waits for a batch in the runner's hands.
    let summary = campaign_kafka::run::run(
        &scratch,
        &p,
        RunOptions {
            until_caught_up: false,
            flush_open_windows: false,
            shutdown,
            telemetry: None,
            max_unassigned: Duration::from_secs(60),
            accept_offset_jumps: false,
        },
    )
    .await;
    let samples = driver.await?;
    let _ = reading.send(true);
    let seen = reader.await??;
    let (summary, samples) = (summary?, samples?);

    let mut latencies = Vec::with_capacity(samples.len());
    let mut invisible = 0;
    for sample in &samples {
        match seen
            .iter()
            .find(|s| s.at >= sample.sent && visible(&s.offsets, &topic, sample))
        {
            Some(s) => latencies.push(s.at - sample.sent),
            None => invisible += 1,
        }
    }
    latencies.sort_unstable();
    let dead_letters: u64 = summary.dead_letters.values().sum();
    anyhow::ensure!(
        (summary.rows + dead_letters) as usize == total,
        "of the {total} events produced, the runner wrote {} rows and {dead_letters} dead letters ({} messages consumed)",
        summary.rows,
        summary.messages
    );
    let interval = humantime::format_duration(commit_interval);
    row(
        &format!("event to queryable at {rate} events/s: p50 / p99 / max"),
        format!(
            "{:.0} / {:.0} / {:.0} ms ({} samples over {}s{}; commit.interval {interval}, batch.max_wait {})",
            ms(quantile(&latencies, 0.50)),
            ms(quantile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default()),
            latencies.len(),
            options.seconds,
            if invisible > 0 {
                format!(", {invisible} never seen")
            } else {
                String::new()
            },
            humantime::format_duration(batch_wait),
        ),
    );
    let files = added_files(&scratch, &p).await?;
    let minutes = (WARM_UP + measured).as_secs_f64() / 60.0;
    row(
        &format!("  {rate} events/s: commits, data files written to the events table"),
        format!(
            "{} commits, {files} files: {:.0} files a minute before compaction",
            summary.commits,
            files as f64 / minutes
        ),
    );
    Ok(())
}

/// Produces the events, waits until the events table holds them all (at most a minute), then
/// stops the runner (also when producing failed).
async fn drive(
    scratch: Config,
    p: PipelineConfig,
    rate: u64,
    total: usize,
    measured: Duration,
    stop: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<Vec<Sample>> {
    let produced = match produce(&p, rate, total, measured).await {
        Ok(samples) => wait_for_all(&scratch, &p, total).await.map(|()| samples),
        Err(err) => Err(err),
    };
    let _ = stop.send(true);
    produced
}

/// Waits until the events table's offsets cover `total` events (at most a minute).
pub(super) async fn wait_for_all(
    scratch: &Config,
    p: &PipelineConfig,
    total: usize,
) -> anyhow::Result<()> {
    let catalog = open_catalog(scratch, &p.sink).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let offsets = events_offsets(catalog.as_ref(), p).await?;
        let committed: i64 = offsets.iter().map(|(_, _, next)| next).sum();
        if committed >= total as i64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "a minute after producing, the events table's offsets cover {committed} of the {total} events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces `total` generated events at `rate` per second; after the warm-up, one event in
/// `rate / SAMPLES_PER_SECOND` is a sample.
pub(super) async fn produce(
    p: &PipelineConfig,
    rate: u64,
    total: usize,
    measured: Duration,
) -> anyhow::Result<Vec<Sample>> {
    let client = client_config(&p.source.brokers, &p.source.properties);
    let producer = EventProducer::new(&client, &p.source.topic)?;
    let spacing = chrono::TimeDelta::microseconds((1_000_000 / rate.max(1)) as i64);
    let mut events = generator(total, spacing);
    let every = (rate / SAMPLES_PER_SECOND).max(1) as usize;
    let started = Instant::now();
    // Every delivery is awaited (a failed one would look like a lost event); the samples'
    // also say where their event landed.
    let mut deliveries = FuturesUnordered::new();
    let mut samples = Vec::new();
    let mut failed = Vec::new();
    let mut landed =
        |(sampled, delivered): (Option<Instant>, Result<(i32, i64), KafkaError>)| match (
            sampled, delivered,
        ) {
            (Some(sent), Ok((partition, offset))) => samples.push(Sample {
                sent,
                partition,
                offset,
            }),
            (None, Ok(_)) => {}
            (_, Err(err)) => failed.push(err),
        };
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(TICK);
    while sent < total {
        tick.tick().await;
        // Events due by now at the steady rate: a late tick sends the ones it missed.
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
        while sent < due {
            let record = events.next_record();
            let delivery = producer.queue_record(&record.key, &record.payload)?;
            let sampled = (started.elapsed() >= WARM_UP && sent % every == 0).then(Instant::now);
            deliveries.push(async move { (sampled, delivery.await) });
            sent += 1;
        }
        while let Some(Some(done)) = deliveries.next().now_or_never() {
            landed(done);
        }
    }
    let took = started.elapsed();
    while let Some(done) = deliveries.next().await {
        landed(done);
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {total} events were not delivered; the first: {}",
        failed.len(),
        failed[0]
    );
    anyhow::ensure!(
        took < WARM_UP + measured + Duration::from_secs(5),
        "producing {total} events at {rate}/s took {took:?}: the machine cannot keep the rate"
    );
    Ok(samples)
}

/// Loads the events table every [`POLL`] until told to stop, keeping each change of its
/// offsets with the time the load that saw it ended.
async fn read_offsets(
    config: Config,
    p: PipelineConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<Seen>> {
    let catalog = open_catalog(&config, &p.sink).await?;
    let mut seen: Vec<Seen> = Vec::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow_and_update() {
        tick.tick().await;
        let offsets = events_offsets(catalog.as_ref(), &p).await?;
        if seen.last().is_none_or(|s| s.offsets != offsets) {
            seen.push(Seen {
                at: Instant::now(),
                offsets,
            });
        }
    }
    Ok(seen)
}

/// The offsets the events table's current snapshot records for `p`, loaded now.
async fn events_offsets(
    catalog: &dyn iceberg::Catalog,
    p: &PipelineConfig,
) -> anyhow::Result<Offsets> {
    let state = load_state(
        catalog,
        &p.sink.namespace,
        &p.sink.events_table.name,
        &p.name,
    )
    .await?;
    Ok(state.offsets)
}

fn visible(offsets: &Offsets, topic: &str, sample: &Sample) -> bool {
    offsets
        .get(topic, sample.partition)
        .is_some_and(|next| next > sample.offset)
}

/// Data files the events table's snapshots added (compaction's own excluded).
async fn added_files(config: &Config, p: &PipelineConfig) -> anyhow::Result<u64> {
    let catalog: Arc<dyn iceberg::Catalog> = open_catalog(config, &p.sink).await?;
    let table = crate::sink::table::load_table(
        catalog.as_ref(),
        &p.sink.namespace,
        &p.sink.events_table.name,
    )
    .await?;
    Ok(table
        .metadata()
        .snapshots()
        .filter(|s| s.summary().operation == iceberg::spec::Operation::Append)
        .filter_map(|s| s.summary().additional_properties.get("added-data-files"))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
