//! Event-time watermarks: per source partition, the highest event time seen minus the allowed
//! lateness; the pipeline's watermark is the minimum over partitions that are not idle.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Event time in microseconds since the epoch.
pub type Micros = i64;

/// Progress of one source partition.
#[derive(Debug, Clone, Copy)]
struct PartitionTime {
    /// Highest event time seen.
    max_event: Micros,
    /// When the partition last delivered an event.
    last_seen: Instant,
}

/// Tracks event time per partition and derives the pipeline's watermark.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    lateness: Micros,
    idle_timeout: Duration,
    partitions: BTreeMap<i32, PartitionTime>,
    /// Never moves back, even when an idle partition wakes up behind it.
    current: Option<Micros>,
}

impl WatermarkTracker {
    /// A tracker with the pipeline's allowed lateness and idle timeout.
    pub fn new(allowed_lateness: Duration, idle_timeout: Duration) -> Self {
        Self {
            lateness: allowed_lateness.as_micros() as Micros,
            idle_timeout,
            partitions: BTreeMap::new(),
            current: None,
        }
    }

    /// Records the highest event time of a partition's rows in a micro-batch.
    pub fn observe(&mut self, partition: i32, max_event: Micros, now: Instant) {
        let entry = self.partitions.entry(partition).or_insert(PartitionTime {
            max_event,
            last_seen: now,
        });
        entry.max_event = entry.max_event.max(max_event);
        entry.last_seen = now;
    }

    /// Restores a partition's highest event time (from a checkpoint), as seen `now`.
    pub fn restore(&mut self, partition: i32, max_event: Micros, now: Instant) {
        self.observe(partition, max_event, now);
    }

    /// Restores the pipeline's watermark (from a checkpoint); it never moves back from there.
    pub fn restore_watermark(&mut self, watermark: Micros) {
        self.current = Some(self.current.map_or(watermark, |c| c.max(watermark)));
    }

    /// Highest event time per partition, for checkpoints.
    pub fn max_events(&self) -> BTreeMap<i32, Micros> {
        self.partitions
            .iter()
            .map(|(p, t)| (*p, t.max_event))
            .collect()
    }

    /// The watermark as of `now` over the assigned partitions, each given with whether it is
    /// read to its end: the minimum over partitions that are not idle. A partition is idle
    /// only when it is at its end and has delivered nothing for the idle timeout; one with a
    /// backlog never is, however long since its last event (consumers read partitions
    /// unevenly, and skipping a lagging partition would make its whole backlog late). A
    /// partition that has delivered nothing yet holds the watermark unless it is at its end.
    pub fn advance(
        &mut self,
        assigned: impl IntoIterator<Item = (i32, bool)>,
        now: Instant,
    ) -> Option<Micros> {
        let mut candidate: Option<Micros> = None;
        for (partition, at_end) in assigned {
            let Some(time) = self.partitions.get(&partition) else {
                if at_end {
                    continue;
                }
                return self.current;
            };
            if at_end && now.duration_since(time.last_seen) > self.idle_timeout {
                continue;
            }
            let mark = time.max_event - self.lateness;
            candidate = Some(candidate.map_or(mark, |c| c.min(mark)));
        }
        if let Some(mark) = candidate {
            self.current = Some(self.current.map_or(mark, |c| c.max(mark)));
        }
        self.current
    }

    /// The last watermark computed.
    pub fn current(&self) -> Option<Micros> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    #[test]
    fn minimum_over_active_partitions_minus_lateness() {
        let now = Instant::now();
        let mut w = WatermarkTracker::new(Duration::from_secs(10), Duration::from_secs(30));
        assert_eq!(w.advance([(0, false), (1, false)], now), None);
        w.observe(0, 100 * S, now);
        assert_eq!(
            w.advance([(0, false), (1, false)], now),
            None,
            "partition 1 has a backlog"
        );
        w.observe(1, 50 * S, now);
        assert_eq!(w.advance([(0, false), (1, false)], now), Some(40 * S));
        w.observe(1, 200 * S, now);
        assert_eq!(w.advance([(0, false), (1, false)], now), Some(90 * S));
        assert_eq!(
            w.advance([(0, false), (1, false), (2, true)], now),
            Some(90 * S),
            "empty partition 2 is at its end"
        );
    }

    #[test]
    fn idle_partition_stops_holding_the_watermark_back() {
        let start = Instant::now();
        let mut w = WatermarkTracker::new(Duration::from_secs(10), Duration::from_secs(30));
        w.observe(0, 100 * S, start);
        w.observe(1, 20 * S, start);
        assert_eq!(w.advance([(0, false), (1, true)], start), Some(10 * S));
        let later = start + Duration::from_secs(31);
        w.observe(0, 500 * S, later);
        assert_eq!(
            w.advance([(0, false), (1, false)], later),
            Some(10 * S),
            "a lagging partition is not idle"
        );
        assert_eq!(
            w.advance([(0, false), (1, true)], later),
            Some(490 * S),
            "partition 1 is idle at its end"
        );
        // It wakes up behind: the watermark does not move back.
        w.observe(1, 30 * S, later);
        assert_eq!(w.advance([(0, false), (1, false)], later), Some(490 * S));
    }
}
