//! Event-time watermarks, one per source partition (the Kafka Streams model): a partition's
//! watermark is the highest event time it has delivered minus the allowed lateness, and its
//! windows close when its own watermark passes them. So whichever runner holds a partition,
//! and however the others progress, the same events are late and the same windows close.
//!
//! A partition that is read to its end and has delivered nothing for the idle timeout would
//! keep its last windows open forever; it follows the runner's watermark instead (the minimum
//! over its partitions that are not idle), so its windows close as the others move on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Event time in microseconds since the epoch.
pub type Micros = i64;

/// Event-time progress of one source partition, as kept beside its state checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionTime {
    /// Highest event time the partition has delivered.
    pub max_event: Option<Micros>,
    /// The partition's watermark: its windows ending at or before it are closed.
    pub watermark: Option<Micros>,
}

impl PartitionTime {
    /// This progress with its event time and watermark no later than `latest`.
    pub fn capped_at(self, latest: Micros) -> Self {
        Self {
            max_event: self.max_event.map(|t| t.min(latest)),
            watermark: self.watermark.map(|t| t.min(latest)),
        }
    }

    /// The watermark its highest event time implies under `lateness`, never below the one it
    /// has (a flush or an idle spell may have raised it further).
    pub fn watermark_under(&self, lateness: Micros) -> Option<Micros> {
        let implied = self.max_event.map(|max| max - lateness);
        match (self.watermark, implied) {
            (Some(w), Some(i)) => Some(w.max(i)),
            (w, i) => w.or(i),
        }
    }
}

/// One partition's clock while it is held.
#[derive(Debug, Clone, Copy)]
struct Clock {
    time: PartitionTime,
    /// When the partition last delivered an event (or was restored).
    last_seen: Instant,
}

/// Tracks event time per held partition and derives each partition's watermark.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    lateness: Micros,
    idle_timeout: Duration,
    partitions: BTreeMap<i32, Clock>,
}

impl WatermarkTracker {
    /// A tracker with the pipeline's allowed lateness and idle timeout.
    pub fn new(allowed_lateness: Duration, idle_timeout: Duration) -> Self {
        Self {
            lateness: allowed_lateness.as_micros() as Micros,
            idle_timeout,
            partitions: BTreeMap::new(),
        }
    }

    /// Records the highest event time of a partition's rows in a micro-batch.
    pub fn observe(&mut self, partition: i32, max_event: Micros, now: Instant) {
        let clock = self.partitions.entry(partition).or_insert(Clock {
            time: PartitionTime::default(),
            last_seen: now,
        });
        clock.time.max_event = Some(clock.time.max_event.map_or(max_event, |m| m.max(max_event)));
        clock.last_seen = now;
    }

    /// Restores a partition's progress (from its checkpoint), as seen `now`.
    pub fn restore(&mut self, partition: i32, time: PartitionTime, now: Instant) {
        self.partitions.insert(
            partition,
            Clock {
                time,
                last_seen: now,
            },
        );
    }

    /// Forgets a partition (it moved to another runner).
    pub fn release(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// A partition's progress, for its checkpoint.
    pub fn time(&self, partition: i32) -> PartitionTime {
        self.partitions
            .get(&partition)
            .map(|c| c.time)
            .unwrap_or_default()
    }

    /// A partition's watermark as last advanced.
    pub fn partition_watermark(&self, partition: i32) -> Option<Micros> {
        self.partitions.get(&partition)?.time.watermark
    }

    /// Moves each held partition's watermark as of `now`; `at_end` says which partitions are
    /// read to their end. A partition is idle only when it is at its end and has delivered
    /// nothing for the idle timeout (one with a backlog never is). Watermarks never move back.
    pub fn advance(&mut self, at_end: impl Fn(i32) -> bool, now: Instant) {
        let mut runner: Option<Micros> = None;
        let mut idle = Vec::new();
        for (partition, clock) in &mut self.partitions {
            if at_end(*partition) && now.duration_since(clock.last_seen) > self.idle_timeout {
                idle.push(*partition);
                continue;
            }
            clock.time.watermark = clock.time.watermark_under(self.lateness);
            if let Some(mark) = clock.time.watermark {
                runner = Some(runner.map_or(mark, |r| r.min(mark)));
            }
        }
        let Some(runner) = runner else { return };
        for partition in idle {
            if let Some(clock) = self.partitions.get_mut(&partition) {
                clock.time.watermark = Some(clock.time.watermark.map_or(runner, |w| w.max(runner)));
            }
        }
    }

    /// The runner's watermark: the lowest watermark of the held partitions.
    pub fn current(&self) -> Option<Micros> {
        self.partitions
            .values()
            .filter_map(|c| c.time.watermark)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    fn none_at_end(_: i32) -> bool {
        false
    }

    #[test]
    fn each_partition_has_its_own_watermark() {
        let now = Instant::now();
        let mut w = WatermarkTracker::new(Duration::from_secs(10), Duration::from_secs(30));
        w.advance(none_at_end, now);
        assert_eq!(w.current(), None);
        w.observe(0, 100 * S, now);
        w.observe(1, 50 * S, now);
        w.advance(none_at_end, now);
        assert_eq!(w.partition_watermark(0), Some(90 * S));
        assert_eq!(w.partition_watermark(1), Some(40 * S));
        assert_eq!(w.current(), Some(40 * S), "the runner's is the lowest");
        // An event behind the high mark does not move a watermark back.
        w.observe(0, 20 * S, now);
        w.advance(none_at_end, now);
        assert_eq!(w.partition_watermark(0), Some(90 * S));
    }

    #[test]
    fn an_idle_partition_follows_the_runner_watermark() {
        let start = Instant::now();
        let mut w = WatermarkTracker::new(Duration::from_secs(10), Duration::from_secs(30));
        w.observe(0, 100 * S, start);
        w.observe(1, 20 * S, start);
        w.advance(|p| p == 1, start);
        assert_eq!(w.partition_watermark(1), Some(10 * S), "not idle yet");
        let later = start + Duration::from_secs(31);
        w.observe(0, 500 * S, later);
        w.advance(none_at_end, later);
        assert_eq!(
            w.partition_watermark(1),
            Some(10 * S),
            "a partition with a backlog is never idle"
        );
        w.advance(|p| p == 1, later);
        assert_eq!(w.partition_watermark(1), Some(490 * S), "idle at its end");
        // It wakes up behind: its watermark does not move back.
        w.observe(1, 30 * S, later);
        w.advance(none_at_end, later);
        assert_eq!(w.partition_watermark(1), Some(490 * S));
    }

    #[test]
    fn a_released_partition_is_restored_where_its_checkpoint_says() {
        let now = Instant::now();
        let mut w = WatermarkTracker::new(Duration::from_secs(10), Duration::from_secs(30));
        w.observe(2, 100 * S, now);
        w.advance(none_at_end, now);
        let saved = w.time(2);
        w.release(2);
        assert_eq!(w.current(), None);
        w.restore(2, saved, now);
        assert_eq!(w.partition_watermark(2), Some(90 * S));
        assert_eq!(w.time(2).max_event, Some(100 * S));
    }

    #[test]
    fn progress_is_capped_at_a_bound() {
        let time = PartitionTime {
            max_event: Some(500 * S),
            watermark: Some(490 * S),
        };
        assert_eq!(time.capped_at(1000 * S), time);
        assert_eq!(
            time.capped_at(100 * S),
            PartitionTime {
                max_event: Some(100 * S),
                watermark: Some(100 * S)
            }
        );
        assert_eq!(
            PartitionTime::default().capped_at(0),
            PartitionTime::default()
        );
    }
}
