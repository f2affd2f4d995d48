//! What a running pipeline reports about itself: Prometheus metrics (`/metrics`) and the
//! health figures the dashboard shows. The pipeline updates it; the dashboard reads it.

pub mod repeated;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Label naming a table.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// Table name.
    pub table: String,
}

/// Label naming a dead letter category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    /// Category (the reason without its variable part).
    pub category: String,
}

/// Label naming a source partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// Partition number.
    pub partition: String,
}

/// Health figures for the dashboard, as of the last commit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// Pipeline name.
    pub pipeline: String,
    /// When the last commit finished (RFC 3339).
    pub last_commit: Option<String>,
    /// Messages per second over the last commit interval.
    pub events_per_second: f64,
    /// Consumer lag per partition.
    pub lag: BTreeMap<i32, i64>,
    /// Dead letters sent since the runner started, by category.
    pub dead_letters: BTreeMap<String, u64>,
    /// The watermark (RFC 3339).
    pub watermark: Option<String>,
    /// The clock minus the watermark, in seconds, as of when these figures were read: growing
    /// means a stalled watermark, negative one that runs ahead of the clock.
    pub watermark_delay_seconds: Option<f64>,
    /// The watermark in microseconds since the epoch (the delay is computed from it).
    #[serde(skip)]
    pub watermark_micros: Option<i64>,
    /// Messages consumed since start.
    pub messages: u64,
    /// The source partitions this runner holds (none when read from the tables: they do not
    /// say which runner holds what).
    pub partitions: Option<BTreeSet<i32>>,
}

/// The metrics of one running pipeline.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    /// Messages consumed.
    pub events_consumed: Counter,
    /// Rows committed, per table.
    pub rows_written: Family<TableLabel, Counter>,
    /// Dead letters sent, per category.
    pub dead_letters: Family<CategoryLabel, Counter>,
    /// Events dead-lettered as late.
    pub late_events: Counter,
    /// Seconds per commit of both tables.
    pub commit_seconds: Histogram,
    /// Messages not yet consumed, per partition.
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    /// Wall clock minus the watermark, in seconds.
    pub watermark_delay: Gauge<f64, AtomicU64>,
    /// Unix time of the last commit.
    pub last_commit: Gauge<f64, AtomicU64>,
    /// Source partitions whose offsets jumped (`run --accept-offset-jumps`), per partition.
    pub offset_jumps: Family<PartitionLabel, Counter>,
    /// Offsets skipped by those jumps (events the topic deleted before they were read).
    pub offsets_skipped: Family<PartitionLabel, Counter>,
    /// Source partitions this runner holds.
    pub partitions_held: Gauge,
    health: Mutex<Health>,
}

impl Telemetry {
    /// Fresh metrics for the pipeline named `pipeline`.
    pub fn new(pipeline: &str) -> Self {
        let mut registry = Registry::with_prefix("campaign_pipeline");
        let events_consumed = Counter::default();
        let rows_written = Family::<TableLabel, Counter>::default();
        let dead_letters = Family::<CategoryLabel, Counter>::default();
        let late_events = Counter::default();
        let commit_seconds = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let consumer_lag = Family::<PartitionLabel, Gauge>::default();
        let watermark_delay = Gauge::<f64, AtomicU64>::default();
        let last_commit = Gauge::<f64, AtomicU64>::default();
        let offset_jumps = Family::<PartitionLabel, Counter>::default();
        let offsets_skipped = Family::<PartitionLabel, Counter>::default();
        let partitions_held = Gauge::default();
        registry.register(
            "events_consumed",
            "Kafka messages consumed",
            events_consumed.clone(),
        );
        registry.register(
            "rows_written",
            "Rows committed to an Iceberg table",
            rows_written.clone(),
        );
        registry.register(
            "dead_letters",
            "Records sent to the dead letter queue",
            dead_letters.clone(),
        );
        registry.register(
            "late_events",
            "Events dead-lettered because their window was already emitted",
            late_events.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time to commit both tables",
            commit_seconds.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages behind the partition's end",
            consumer_lag.clone(),
        );
        registry.register(
            "watermark_delay_seconds",
            "Wall clock minus the event-time watermark",
            watermark_delay.clone(),
        );
        registry.register(
            "last_commit_timestamp_seconds",
            "Unix time of the last Iceberg commit",
            last_commit.clone(),
        );
        registry.register(
            "offset_jumps",
            "Source partitions read on where the topic no longer held the tables' offset",
            offset_jumps.clone(),
        );
        registry.register(
            "offsets_skipped",
            "Source offsets never read because the topic deleted them first",
            offsets_skipped.clone(),
        );
        registry.register(
            "partitions_held",
            "Source partitions the consumer group gave this runner",
            partitions_held.clone(),
        );
        Self {
            registry,
            events_consumed,
            rows_written,
            dead_letters,
            late_events,
            commit_seconds,
            consumer_lag,
            watermark_delay,
            last_commit,
            offset_jumps,
            offsets_skipped,
            partitions_held,
            health: Mutex::new(Health {
                pipeline: pipeline.to_string(),
                partitions: Some(BTreeSet::new()),
                ..Health::default()
            }),
        }
    }

    /// Records the watermark (microseconds since the epoch), from which the delay is computed
    /// whenever it is read, so that a stalled watermark shows as a growing delay.
    pub fn set_watermark(&self, micros: Option<i64>) {
        self.update_health(|h| h.watermark_micros = micros);
        self.refresh_watermark_delay();
    }

    fn refresh_watermark_delay(&self) {
        let micros = self
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watermark_micros;
        if let Some(micros) = micros {
            self.watermark_delay.set(watermark_delay(micros));
        }
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        self.refresh_watermark_delay();
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics failed: {err}");
        }
        out
    }

    /// Records the partitions the group gave this runner (after each assignment or
    /// revocation).
    pub fn hold(&self, partitions: &BTreeSet<i32>) {
        self.partitions_held.set(partitions.len() as i64);
        self.update_health(|h| h.partitions = Some(partitions.clone()));
    }

    /// Updates the health figures.
    pub fn update_health(&self, update: impl FnOnce(&mut Health)) {
        update(&mut self.health.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The health figures as of now.
    pub fn health(&self) -> Health {
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        health.watermark_delay_seconds = health.watermark_micros.map(watermark_delay);
        health
    }
}

/// Seconds from a watermark (microseconds since the epoch) to the clock now.
pub fn watermark_delay(watermark: i64) -> f64 {
    (chrono::Utc::now().timestamp_micros() - watermark) as f64 / 1e6
}
