//! What a runner's peak resident memory is bounded by: its configuration, not the data.
//!
//! The terms and their coefficients were measured catching up backlogs of generated events
//! (about 200 bytes each) under several `batch.max_rows` and `commit.max_rows`; `bench`'s
//! peak-RSS rows repeat the check on every run, and docs/performance.md keeps the runs.

use crate::config::PipelineConfig;

/// librdkafka's default for `queued.max.messages.kbytes`.
const DEFAULT_QUEUE_KBYTES: u64 = 65_536;

/// A runner at work without rows in hand: code (about 100 MB of it resident), runtimes, the SQL
/// engine, catalog, allocator slack and the metrics and window state of a few dozen campaigns.
/// jemalloc keeps freed pages a few seconds before returning them, so the term is larger
/// than glibc's allocator needed.
pub const FIXED_BYTES: u64 = 185 << 20;
/// Per row of the micro-batch in hand: the Kafka records, the parsed columns and their copies.
pub const BATCH_ROW_BYTES: u64 = 600;
/// Per row buffered for the next commit: the events table's columns, held as Arrow until the
/// commit encodes them one partition at a time.
pub const COMMIT_ROW_BYTES: u64 = 150;
/// Bytes of librdkafka's prefetch queue per configured kilobyte.
const QUEUE_BYTES_PER_KBYTE: u64 = 1024;

/// A pipeline's peak resident memory, term by term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBound {
    /// [`FIXED_BYTES`].
    pub fixed: u64,
    /// librdkafka's prefetched messages (`queued.max.messages.kbytes`, source.properties).
    pub prefetch: u64,
    /// The micro-batch in hand (`batch.max_rows`).
    pub batch: u64,
    /// Rows waiting for the commit (`commit.max_rows`; fewer when `commit.interval` comes first).
    pub commit: u64,
}

impl MemoryBound {
    /// The bound for `pipeline`'s configuration, for events of about 200 bytes (the per-row
    /// terms grow with the event size).
    pub fn of(pipeline: &PipelineConfig) -> Self {
        let queue_kbytes = pipeline
            .source
            .properties
            .get("queued.max.messages.kbytes")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_QUEUE_KBYTES);
        Self {
            fixed: FIXED_BYTES,
            prefetch: queue_kbytes * QUEUE_BYTES_PER_KBYTE,
            batch: pipeline.batch.max_rows as u64 * BATCH_ROW_BYTES,
            commit: pipeline.commit.max_rows as u64 * COMMIT_ROW_BYTES,
        }
    }

    /// The sum of the terms.
    pub fn total(&self) -> u64 {
        self.fixed + self.prefetch + self.batch + self.commit
    }
}

impl std::fmt::Display for MemoryBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        write!(
            f,
            "{:.0} MB = {:.0} fixed + {:.0} Kafka prefetch + {:.0} batch + {:.0} commit buffer",
            mb(self.total()),
            mb(self.fixed),
            mb(self.prefetch),
            mb(self.batch),
            mb(self.commit)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_the_configuration() {
        let yaml = r#"pipelines:
  - name: p
    source: { brokers: "b:9092", topic: t, group_id: g, properties: { queued.max.messages.kbytes: "16384" } }
    sql: { parse: sql/campaign_events.sql, metrics: sql/campaign_metrics.sql }
    batch: { max_rows: 10000 }
    commit: { max_rows: 100000 }
    sink:
      catalog: { type: sqlite, path: c.db, warehouse: w }
      namespace: n
      events_table: { name: e, partition_by: [campaign_id] }
      metrics_table: { name: m, partition_by: [campaign_id] }
    dead_letter: { topic: d }
"#;
        // The SQL files are the repository's, beside its pipelines.yaml.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines.yaml");
        let config = crate::config::Config::parse(yaml, std::path::Path::new(path))
            .expect("valid configuration");
        let bound = MemoryBound::of(&config.pipelines[0]);
        assert_eq!(bound.prefetch, 16 << 20);
        assert_eq!(bound.batch, 10_000 * BATCH_ROW_BYTES);
        assert_eq!(bound.commit, 100_000 * COMMIT_ROW_BYTES);
        assert_eq!(
            bound.total(),
            FIXED_BYTES + (16 << 20) + 10_000 * BATCH_ROW_BYTES + 100_000 * COMMIT_ROW_BYTES
        );
    }
}
