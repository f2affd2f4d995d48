//! Throughput and CPU-cost benchmarks, printed as a table (`campaign-pipeline bench`).
//!
//! Figures that matter on noisy machines are ratios against a baseline measured in the same
//! run: decoding the same payloads with serde_json, and a plain rdkafka consumer reading the
//! same topic.

mod collector;
mod contention;
mod dashboard;
mod day;
mod dlq;
mod freshness;
mod idle;
mod memory;
mod replay;
mod sql_endpoint;
mod storage;
mod threads;
mod window;

use campaign_collect as collect;
use campaign_core::{catalog, common, config, engine, pipeline, sink, source};
use campaign_generator as generator;
use campaign_kafka as kafka;
use campaign_serve::{query, sql_server};
use campaign_tables::{maintain, setup};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::catalog::open_catalog;
use crate::common::{Offsets, Selection};
use crate::config::{Config, PipelineConfig};
use crate::engine::{new_session, SqlStage};
use crate::generator::event::CampaignEvent;
use crate::generator::{EventGenerator, GeneratedRecord, GeneratorOptions};
use crate::kafka::admin::{TopicAdmin, TopicSpec};
use crate::kafka::client_config;
use crate::kafka::producer::EventProducer;
use crate::pipeline::plan::{plan_pipeline, PlannedSql};
use crate::pipeline::{RunOptions, RunSummary};
use crate::sink::iceberg::{SnapshotContent, TableWriter};
use crate::source::batch::BatchBuilder;
pub use collector::CollectorOptions;
pub use contention::ContentionOptions;
pub use freshness::FreshnessOptions;
pub use memory::SteadyOptions;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events for the in-memory benchmark.
    pub memory_events: usize,
    /// Events for the end-to-end benchmark (0 skips it).
    pub kafka_events: usize,
    /// Alternating pairs of the plain consumer and one runner whose CPU ratios give the
    /// end-to-end ratio's median and spread (the first pair is the end-to-end run itself).
    pub kafka_pairs: usize,
    /// Rows per micro-batch.
    pub batch_rows: usize,
    /// Events for the window-state memory measure (fed once, then nine more times).
    pub window_events: usize,
    /// Dead letters for the DLQ tools measure (0 skips it).
    pub dlq_events: usize,
    /// Events for the configured catalog and warehouse against the embedded default (0 skips
    /// it).
    pub storage_events: usize,
    /// Commits of the simulated day with table maintenance on and off (0 skips it).
    pub day_commits: usize,
    /// Wall clock after which the simulated day without maintenance stops.
    pub day_off_budget: Duration,
    /// Event to queryable at steady rates (no rates or no seconds skips it).
    pub freshness: FreshnessOptions,
    /// The runner process's resident memory over a steady run (no seconds skips it).
    pub steady: SteadyOptions,
    /// The HTTP collector under load (no seconds skips it).
    pub collector: CollectorOptions,
    /// Writers committing to one table at the commit interval (no seconds skips it).
    pub contention: ContentionOptions,
    /// Seconds an idle producer's delivery thread is watched (0 skips it).
    pub idle_seconds: u64,
}

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct Measure {
    /// What was measured.
    pub name: String,
    /// The figure.
    pub value: String,
}

/// CPU time of this process so far (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Timed {
    wall: Duration,
    cpu: Duration,
}

async fn timed<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    f: F,
) -> anyhow::Result<(T, Timed)> {
    let (wall, cpu) = (Instant::now(), cpu_time());
    let value = f.await?;
    Ok((
        value,
        Timed {
            wall: wall.elapsed(),
            cpu: cpu_time() - cpu,
        },
    ))
}

/// The valid rows of one output of the parsing SQL, routed as `run` routes them (the benches
/// replay a fixed history: no event time is out of the clock's bounds).
fn valid_rows(
    output: &arrow::record_batch::RecordBatch,
    planned: &PlannedSql,
) -> anyhow::Result<Selection> {
    let routed = pipeline::route(
        output,
        campaign_core::window::TimeLimits::UNBOUNDED,
        &planned.window.time_column,
    )?;
    Ok(routed.valid)
}

fn per_second(events: usize, d: Duration) -> String {
    format!("{:.0} events/s", events as f64 / d.as_secs_f64().max(1e-9))
}

/// CPU-seconds per million events.
fn per_million(events: usize, d: Duration) -> f64 {
    d.as_secs_f64() * 1e6 / events.max(1) as f64
}

fn cpu_per_million(events: usize, d: Duration) -> String {
    format!("{:.2} CPU-s per 1M events", per_million(events, d))
}

/// One alternating pair of the end-to-end row: each side's CPU-s per 1M events.
struct PairCpu {
    run: f64,
    plain: f64,
}

impl PairCpu {
    fn new(run: Duration, run_events: usize, plain: Duration, plain_events: usize) -> Self {
        Self {
            run: per_million(run_events, run),
            plain: per_million(plain_events, plain),
        }
    }

    /// The run's CPU per event set against the plain consumer's.
    fn ratio(&self) -> f64 {
        self.run / self.plain.max(1e-12)
    }
}

fn records(count: usize) -> Vec<GeneratedRecord> {
    records_spaced(count, chrono::TimeDelta::milliseconds(10))
}

/// Generated records whose event times advance by `spacing`.
fn records_spaced(count: usize, spacing: chrono::TimeDelta) -> Vec<GeneratedRecord> {
    let mut generator = generator(count, spacing);
    (0..count).map(|_| generator.next_record()).collect()
}

/// The benchmarks' generator: `count` events `spacing` apart ending now, 10 campaigns, 2%
/// invalid.
fn generator(count: usize, spacing: chrono::TimeDelta) -> EventGenerator {
    EventGenerator::new(GeneratorOptions {
        campaigns: 10,
        invalid_ratio: 0.02,
        out_of_order_ratio: 0.0,
        late_ratio: 0.0,
        seed: 42,
        start_time: crate::generator::start_ending_now(count as u64, spacing),
        spacing,
        window: chrono::TimeDelta::minutes(1),
        allowed_lateness: chrono::TimeDelta::seconds(10),
    })
}

/// A copy of `pipeline` writing to a fresh catalog and warehouse under `dir`, reading `topic`.
fn scratch_config(
    config: &Config,
    pipeline: &PipelineConfig,
    dir: &std::path::Path,
    topic: &str,
) -> anyhow::Result<Config> {
    scratch_config_in_group(config, pipeline, dir, topic, &format!("{topic}-group"))
}

/// [`scratch_config`] with a consumer group of its own.
fn scratch_config_in_group(
    config: &Config,
    pipeline: &PipelineConfig,
    dir: &std::path::Path,
    topic: &str,
    group: &str,
) -> anyhow::Result<Config> {
    let shape = ScratchShape {
        batch_rows: pipeline.batch.max_rows,
        commit_rows: 1_000_000,
        commit_interval: Duration::from_secs(5),
    };
    scratch_config_shaped(config, pipeline, dir, topic, group, &shape)
}

/// The batch and commit settings of a scratch pipeline.
struct ScratchShape {
    batch_rows: usize,
    commit_rows: usize,
    commit_interval: Duration,
}

/// [`scratch_config_in_group`] with the batch and commit settings of `shape`, written to
/// `dir/pipelines.yaml` (which a runner process can read).
fn scratch_config_shaped(
    config: &Config,
    pipeline: &PipelineConfig,
    dir: &std::path::Path,
    topic: &str,
    group: &str,
    shape: &ScratchShape,
) -> anyhow::Result<Config> {
    let yaml = format!(
        r#"pipelines:
  - name: bench
    source: {{ brokers: "{brokers}", topic: {topic}, group_id: {group} }}
    sql: {{ parse: "{parse}", metrics: "{metrics}" }}
    batch: {{ max_rows: {rows}, max_wait: 200ms }}
    commit: {{ interval: {interval}, max_rows: {commit_rows} }}
    sink:
      catalog: {{ type: sqlite, path: catalog.db, warehouse: warehouse }}
      namespace: bench
      events_table: {{ name: campaign_events, partition_by: [{events_parts}] }}
      metrics_table: {{ name: campaign_metrics, partition_by: [{metrics_parts}] }}
    dead_letter: {{ topic: {dead_letters} }}
"#,
        brokers = pipeline.source.brokers,
        dead_letters = dead_letter_topic(topic),
        parse = config
            .resolve(&pipeline.sql.parse)
            .canonicalize()?
            .display(),
        metrics = config
            .resolve(&pipeline.sql.metrics)
            .canonicalize()?
            .display(),
        rows = shape.batch_rows,
        interval = humantime::format_duration(shape.commit_interval),
        commit_rows = shape.commit_rows,
        events_parts = pipeline.sink.events_table.partition_by.join(", "),
        metrics_parts = pipeline.sink.metrics_table.partition_by.join(", "),
    );
    let path = dir.join("pipelines.yaml");
    std::fs::write(&path, yaml)?;
    Ok(Config::load(&path)?)
}

/// `kafka_records` batches of the records, spread over three partitions by key (as a producer
/// keyed by campaign does) as the source builds them.
fn kafka_batches(
    generated: &[GeneratedRecord],
    batch_rows: usize,
) -> anyhow::Result<Vec<arrow::record_batch::RecordBatch>> {
    Ok(micro_batches(generated, batch_rows)?
        .into_iter()
        .map(|batch| batch.records)
        .collect())
}

/// Topic the generated records come from (3 partitions, keyed by campaign).
const RECORDS_TOPIC: &str = "campaign_events";

/// `generated` as the source hands it on: micro-batches of `batch_rows` with their offsets.
fn micro_batches(
    generated: &[GeneratedRecord],
    batch_rows: usize,
) -> anyhow::Result<Vec<crate::source::MicroBatch>> {
    let mut batches = Vec::new();
    let mut next = [0_i64; 3];
    for chunk in generated.chunks(batch_rows) {
        let mut builder = BatchBuilder::new(RECORDS_TOPIC, chunk.len());
        for r in chunk {
            // Any stable hash of the key keeps each campaign in one partition.
            let hash = r
                .key
                .iter()
                .fold(0_u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(*b)));
            let partition = (hash % 3) as usize;
            builder.push(
                partition as i32,
                next[partition],
                Some(0),
                Some(&r.key),
                Some(&r.payload),
            );
            next[partition] += 1;
        }
        batches.push(builder.finish(false, Default::default(), 0)?);
    }
    Ok(batches)
}

/// Runs the benchmarks and returns the table rows.
pub async fn run(
    config: &Config,
    pipeline: &PipelineConfig,
    options: &BenchOptions,
) -> anyhow::Result<Vec<Measure>> {
    let measured = measure(config, pipeline, options).await;
    delete_scratch_topics(pipeline).await;
    measured
}

/// Every measurement `options` asks for, in order.
async fn measure(
    config: &Config,
    pipeline: &PipelineConfig,
    options: &BenchOptions,
) -> anyhow::Result<Vec<Measure>> {
    let mut table = Vec::new();
    let mut row = |name: &str, value: String| {
        table.push(Measure {
            name: name.into(),
            value,
        })
    };

    // In memory, one core: pre-built kafka_records batches -> parse SQL -> Parquet/Iceberg.
    let dir = tempfile::tempdir()?;
    let scratch = scratch_config(config, pipeline, dir.path(), "bench_memory")?;
    let p = &scratch.pipelines[0];
    let generated = records(options.memory_events);
    let batches = kafka_batches(&generated, options.batch_rows)?;

    let ctx = new_session();
    let planned = plan_pipeline(&scratch, p, &ctx)
        .await
        .map_err(|problems| anyhow::anyhow!("SQL problems: {problems:?}"))?;
    let stage = SqlStage::new(&ctx, &planned.parse).await?;
    if options.memory_events > 0 {
        let (_, baseline) = timed(async {
            let mut valid = 0usize;
            for r in &generated {
                if serde_json::from_slice::<CampaignEvent>(&r.payload).is_ok() {
                    valid += 1;
                }
            }
            Ok(valid)
        })
        .await?;
        row(
            "baseline: serde_json decode into structs",
            per_second(generated.len(), baseline.wall),
        );

        // One untimed pass first, so that the first timed measure does not pay for warming up.
        for batch in &batches {
            stage.run(vec![batch.clone()]).await?;
        }
        let (_, parse_only) = timed(async {
            for batch in &batches {
                for out in stage.run(vec![batch.clone()]).await? {
                    valid_rows(&out, &planned)?;
                }
            }
            Ok(())
        })
        .await?;
        row(
            "parse SQL only (in memory)",
            per_second(generated.len(), parse_only.wall),
        );
        row(
            "parse SQL only, CPU",
            cpu_per_million(generated.len(), parse_only.cpu),
        );
        row(
            "parse SQL vs serde_json baseline (time ratio)",
            format!(
                "{:.1}x",
                parse_only.wall.as_secs_f64() / baseline.wall.as_secs_f64().max(1e-9)
            ),
        );

        crate::setup::ensure_tables(&scratch, p, &planned).await?;
        let catalog = open_catalog(&scratch, &p.sink).await?;
        let mut writer = TableWriter::open(
            catalog,
            &p.sink.namespace,
            &p.sink.events_table.name,
            &p.name,
            &planned.parse_output,
        )
        .await?
        .with_file_codec(p.sink.file_codec);
        let mut offsets = Offsets::new();
        offsets.set("campaign_events", 0, generated.len() as i64);
        let content = SnapshotContent {
            offsets,
            checkpoints: None,
            jumps: Default::default(),
        };
        let (rows, full) = timed(async {
            for batch in &batches {
                for out in stage.run(vec![batch.clone()]).await? {
                    writer.write_selected(&valid_rows(&out, &planned)?).await?;
                }
            }
            Ok(writer.commit(|_| Ok(content.clone())).await?.rows)
        })
        .await?;
        row(
            "parse SQL + Parquet/Iceberg commit (in memory)",
            per_second(generated.len(), full.wall),
        );
        row(
            "parse SQL + Parquet/Iceberg commit, CPU",
            cpu_per_million(generated.len(), full.cpu),
        );
        row("  rows committed", rows.to_string());
        // The write path alone (partition split, Parquet encoding, Iceberg commit), on the rows
        // the parsing SQL produced beforehand: its share, measured rather than subtracted.
        let mut parsed = Vec::new();
        for batch in &batches {
            for out in stage.run(vec![batch.clone()]).await? {
                parsed.push(valid_rows(&out, &planned)?);
            }
        }
        let (rows, write_only) = timed(async {
            for valid in &parsed {
                writer.write_selected(valid).await?;
            }
            Ok(writer.commit(|_| Ok(content.clone())).await?.rows)
        })
        .await?;
        drop(parsed);
        row(
            "Parquet/Iceberg write only, on parsed rows (in memory), CPU",
            format!(
                "{:.2} CPU-s per 1M rows",
                write_only.cpu.as_secs_f64() * 1e6 / (rows as f64).max(1.0)
            ),
        );
    }

    if options.memory_events > 0 && options.window_events > 0 {
        window::measure(
            &ctx,
            &planned,
            &stage,
            p,
            &batches,
            options.window_events,
            &mut row,
        )
        .await?;
    }

    if options.kafka_events > 0 {
        end_to_end(config, pipeline, options, &mut row).await?;
    }
    if options.freshness.seconds > 0 {
        freshness::measure(config, pipeline, &options.freshness, &mut row).await?;
    }
    if options.steady.seconds > 0 {
        memory::steady(config, pipeline, &options.steady, &mut row).await?;
    }
    if options.storage_events > 0 {
        storage::measure(config, pipeline, options.storage_events, &mut row).await?;
    }
    if options.contention.seconds > 0 {
        contention::measure(config, pipeline, &options.contention, &mut row).await?;
    }
    if options.day_commits > 0 {
        day::measure(
            config,
            pipeline,
            options.day_commits,
            options.day_off_budget,
            &mut row,
        )
        .await?;
    }
    if options.collector.seconds > 0 {
        collector::measure(config, pipeline, options.collector, &mut row).await?;
    }
    if options.dlq_events > 0 {
        let client = client_config(&pipeline.source.brokers, &pipeline.source.properties);
        dlq::measure(&client, options.dlq_events, &mut row).await?;
    }
    if options.idle_seconds > 0 {
        let client = client_config(&pipeline.source.brokers, &pipeline.source.properties);
        idle::measure(&client, options.idle_seconds, &mut row).await?;
    }
    Ok(table)
}

async fn end_to_end(
    config: &Config,
    pipeline: &PipelineConfig,
    options: &BenchOptions,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let topic = scratch_topic("bench_events");
    let dir = tempfile::tempdir()?;
    let scratch = scratch_config(config, pipeline, dir.path(), &topic)?;
    let p = &scratch.pipelines[0];
    let client = client_config(&p.source.brokers, &p.source.properties);
    let produced = fill_topic(p, options.kafka_events).await?;
    row(
        "events produced to the local broker",
        format!("{} in {:.1}s", produced.count, produced.seconds),
    );
    let events = produced.count;

    let (count, plain) = timed(async { plain_consume(&client, &topic, 3, events) }).await?;
    row(
        "baseline: plain rdkafka consumer",
        per_second(count, plain.wall),
    );
    row(
        "baseline: plain rdkafka consumer, CPU",
        cpu_per_million(count, plain.cpu),
    );

    let sampler = threads::Sampler::start()?;
    let (summaries, run) = run_runners(&scratch, 1).await?;
    let threads = sampler.stop();
    let summary = summaries.into_iter().next().unwrap_or_default();
    row(
        "run --until-caught-up (end to end)",
        per_second(summary.messages as usize, run.wall),
    );
    let first = PairCpu::new(run.cpu, summary.messages as usize, plain.cpu, count);
    let first_ratio = first.ratio();
    row(
        "run --until-caught-up, CPU",
        format!(
            "{}, {first_ratio:.2}x the plain consumer's",
            cpu_per_million(summary.messages as usize, run.cpu),
        ),
    );
    stage_rows(&summary, &threads, run.cpu, row);
    row(
        "run vs plain consumer (wall-clock ratio)",
        format!(
            "{:.2}x",
            run.wall.as_secs_f64() / plain.wall.as_secs_f64().max(1e-9)
        ),
    );
    // This machine's CPU figures wander by a third from one run to the next, the baseline's
    // too: more pairs, alternating, give the ratio's median and how far it strays.
    let mut pairs = vec![first];
    for pair in 1..options.kafka_pairs {
        let (count, plain) = timed(async { plain_consume(&client, &topic, 3, events) }).await?;
        let dir = tempfile::tempdir()?;
        let group = format!("{topic}-pair-{pair}");
        let fresh = scratch_config_in_group(config, pipeline, dir.path(), &topic, &group)?;
        let (summaries, run) = run_runners(&fresh, 1).await?;
        let messages = summaries.first().map_or(0, |s| s.messages as usize);
        pairs.push(PairCpu::new(run.cpu, messages, plain.cpu, count));
    }
    if pairs.len() > 1 {
        // Which side of a pair strayed: the ratio alone cannot tell the runner's noise from
        // the baseline's.
        row(
            "  each pair, in order: run / plain consumer, CPU-s per 1M events",
            pairs
                .iter()
                .map(|p| format!("{:.2}/{:.2}", p.run, p.plain))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let mut ratios: Vec<f64> = pairs.iter().map(PairCpu::ratio).collect();
    ratios.sort_by(f64::total_cmp);
    if let (Some(low), Some(high)) = (ratios.first(), ratios.last()) {
        row(
            &format!(
                "run vs plain consumer, CPU, {} alternating pairs: median (range)",
                ratios.len()
            ),
            format!("{:.2}x ({low:.2}x-{high:.2}x)", ratios[ratios.len() / 2]),
        );
    }
    row(
        "  rows committed / dead letters",
        format!(
            "{} / {}",
            summary.rows,
            summary.dead_letters.values().sum::<u64>()
        ),
    );
    row(
        "  commit conflicts / commits",
        conflict_rate(std::slice::from_ref(&summary)),
    );
    dashboard::measure(&scratch, p, summary.messages, row).await?;
    sql_endpoint::measure(&scratch, p, summary.messages, row).await?;

    // Scale-out: the same topic read by 2 and 3 runners of one fresh consumer group each, into
    // tables of their own. On a 2-core machine the broker bounds the wall clock: the ratios
    // against one runner show what each added runner costs.
    for runners in [2, 3] {
        let dir = tempfile::tempdir()?;
        let group = format!("{topic}-group-{runners}");
        let scaled = scratch_config_in_group(config, pipeline, dir.path(), &topic, &group)?;
        let (summaries, timed) = run_runners(&scaled, runners).await?;
        let rows: u64 = summaries.iter().map(|s| s.rows).sum();
        row(
            &format!("{runners} runners in one group (end to end)"),
            format!(
                "{}, {:.2}x the wall clock of one",
                per_second(events, timed.wall),
                timed.wall.as_secs_f64() / run.wall.as_secs_f64().max(1e-9)
            ),
        );
        row(
            &format!("{runners} runners, CPU"),
            format!(
                "{}, {:.2}x one runner's",
                cpu_per_million(events, timed.cpu),
                timed.cpu.as_secs_f64() / run.cpu.as_secs_f64().max(1e-9)
            ),
        );
        row(
            &format!("  {runners} runners: commit conflicts / commits, fenced"),
            format!(
                "{}, {} fenced",
                conflict_rate(&summaries),
                summaries.iter().map(|s| s.fenced).sum::<u64>()
            ),
        );
        anyhow::ensure!(
            rows == summary.rows,
            "{runners} runners wrote {rows} rows, one runner {}",
            summary.rows
        );
    }
    memory::catch_up(config, pipeline, &topic, events, row).await?;
    Ok(())
}

/// Where one runner's CPU went: its threads (the source's, librdkafka's) and, on the others,
/// its stages as the runner accounts them; the rows add up to the sampled threads' CPU, set
/// against the whole run's.
fn stage_rows(
    summary: &RunSummary,
    threads: &threads::ThreadCpu,
    whole: Duration,
    row: &mut impl FnMut(&str, String),
) {
    let stages = &summary.cpu;
    let events = summary.messages.max(1) as f64;
    let share = |spent: Duration| {
        format!(
            "{:.2} CPU-s per 1M events, {:.0}% of the run",
            spent.as_secs_f64() * 1e6 / events,
            spent.as_secs_f64() * 100.0 / whole.as_secs_f64().max(1e-9)
        )
    };
    let outside = threads.rest.saturating_sub(stages.total());
    let rows = [
        ("source thread: messages into Arrow batches", threads.source),
        ("Kafka client's threads (librdkafka)", threads.kafka),
        ("parsing SQL and routing its output", stages.parse),
        ("events buffer: rows split by partition", stages.buffer),
        ("window operator and its checkpoints", stages.window),
        ("Parquet data files, both tables", stages.data_files),
        ("landing snapshots: manifests, catalog", stages.landing),
        ("dead letters", stages.dead_letters),
        ("async threads outside those stages", outside),
    ];
    let mut sum = Duration::ZERO;
    for (stage, spent) in rows {
        sum += spent;
        row(&format!("  stage: {stage}"), share(spent));
    }
    row(
        "  stages' sum vs run --until-caught-up, CPU",
        format!("{:.2}x", sum.as_secs_f64() / whole.as_secs_f64().max(1e-9)),
    );
}

/// A topic name no earlier bench run used: `prefix`, this process and the second.
fn scratch_topic(prefix: &str) -> String {
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp()
    );
    SCRATCH_TOPICS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend([name.clone(), dead_letter_topic(&name)]);
    name
}

/// The dead letter topic of a scratch pipeline reading `topic`.
fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}-dlq")
}

/// The topics this process's measurements created: each scratch topic and its dead letter
/// topic. Left behind, each keeps its events on the broker (tansu's memory storage grew by
/// gigabytes over a day of runs, and every later measurement slowed).
static SCRATCH_TOPICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Deletes the scratch topics, whatever the measurements came to; one that cannot be deleted
/// is named in a warning.
async fn delete_scratch_topics(pipeline: &PipelineConfig) {
    let names = std::mem::take(
        &mut *SCRATCH_TOPICS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if names.is_empty() {
        return;
    }
    let client = client_config(&pipeline.source.brokers, &pipeline.source.properties);
    let admin = match TopicAdmin::new(&client) {
        Ok(admin) => admin,
        Err(err) => {
            tracing::warn!("bench: its scratch topics {names:?} are left on the broker: {err}");
            return;
        }
    };
    for name in names {
        if let Err(err) = admin.delete_topic(&name).await {
            tracing::warn!("bench: its scratch topic {name} is left on the broker: {err}");
        }
    }
}

/// Events produced for a benchmark.
struct Filled {
    count: usize,
    seconds: f64,
}

/// Creates the source topic (3 partitions) and dead letter topic of `p`, and produces `events`
/// generated events to the source topic.
async fn fill_topic(p: &PipelineConfig, events: usize) -> anyhow::Result<Filled> {
    create_topics(p).await?;
    let client = client_config(&p.source.brokers, &p.source.properties);
    let producer = EventProducer::new(&client, &p.source.topic)?;
    let generated = records(events);
    let started = Instant::now();
    send_all(&producer, &generated, 20_000).await?;
    Ok(Filled {
        count: generated.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Produces `records` keyed as generated, `chunk` of them in flight at once.
async fn send_all(
    producer: &EventProducer,
    records: &[GeneratedRecord],
    chunk: usize,
) -> anyhow::Result<()> {
    for chunk in records.chunks(chunk) {
        producer
            .send_records(
                chunk
                    .iter()
                    .map(|r| (r.key.as_slice(), r.payload.as_slice())),
            )
            .await
            .context("producing benchmark events")?;
    }
    Ok(())
}

/// Creates the source topic (3 partitions) and the dead letter topic (1) of `p`.
async fn create_topics(p: &PipelineConfig) -> anyhow::Result<()> {
    let client = client_config(&p.source.brokers, &p.source.properties);
    let admin = TopicAdmin::new(&client)?;
    for (name, partitions) in [
        (p.source.topic.clone(), 3),
        (p.dead_letter.topic.clone(), 1),
    ] {
        admin
            .ensure_topic(&TopicSpec {
                name,
                partitions,
                replication: 1,
                configs: Default::default(),
            })
            .await?;
    }
    Ok(())
}

/// The `q` quantile (0..=1) of `sorted` durations, nearest rank; zero when there are none.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Commit conflicts (retried after validation) per table commit, over runs.
fn conflict_rate(summaries: &[RunSummary]) -> String {
    let conflicts: u64 = summaries.iter().map(|s| s.commit_conflicts).sum();
    // Each run commit writes both tables.
    let commits: u64 = summaries.iter().map(|s| s.commits * 2).sum();
    format!(
        "{conflicts} / {commits} ({:.1}%)",
        conflicts as f64 * 100.0 / commits.max(1) as f64
    )
}

/// Creates the scratch tables and runs `runners` runners of its pipeline side by side, in one
/// consumer group, until each has caught up.
async fn run_runners(scratch: &Config, runners: usize) -> anyhow::Result<(Vec<RunSummary>, Timed)> {
    let p = &scratch.pipelines[0];
    let planned = crate::setup::plan(scratch, p).await?;
    crate::setup::ensure_tables(scratch, p, &planned).await?;
    let (_stop, shutdown) = pipeline::shutdown_channel();
    timed(async {
        let runs = (0..runners).map(|_| {
            campaign_kafka::run::run(
                scratch,
                p,
                RunOptions {
                    until_caught_up: true,
                    flush_open_windows: false,
                    shutdown: shutdown.clone(),
                    telemetry: None,
                    max_unassigned: Duration::from_secs(60),
                    accept_offset_jumps: false,
                },
            )
        });
        let mut summaries = Vec::new();
        for result in futures::future::join_all(runs).await {
            summaries.push(result?);
        }
        Ok(summaries)
    })
    .await
}

/// Reads every message of `topic` with a plain consumer and returns how many it read.
fn plain_consume(
    client: &rdkafka::ClientConfig,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> anyhow::Result<usize> {
    let mut config = client.clone();
    config
        .set("group.id", format!("{topic}-plain"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut count = 0usize;
    let mut bytes = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            count += 1;
            bytes += message.payload().map_or(0, <[u8]>::len);
        }
    }
    anyhow::ensure!(
        count == expected,
        "plain consumer read {count} of {expected} messages"
    );
    let _ = bytes;
    Ok(count)
}
