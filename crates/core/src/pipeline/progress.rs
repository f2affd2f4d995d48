//! `Progress`: the one owner of the Kafka offsets of a runner. It answers three questions, each
//! by one rule:
//! - where a partition resumes: the lower of the two tables' offsets ([`resume_point`]);
//! - what a table has absorbed: its offsets as this runner last loaded or committed them, so
//!   rows below them are skipped ([`Progress::absorbed_ahead`]);
//! - what a commit may record: the table's map as loaded for that commit, with the partitions
//!   this runner holds raised to where the source has handed on, and only if the loaded map
//!   still stands where this runner's batch starts ([`Progress::decide`]);
//! - and where a held partition's offsets jumped (`run --accept-offset-jumps`), the commit sets
//!   them where reading went on, lower too, and says so ([`Progress::jumped`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::common::summary::{OffsetJump, OffsetJumps};
use crate::common::{Fenced, Offsets};
use crate::sink::claim::{Claim, PartitionClaim};

/// One of the pipeline's two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableRole {
    /// The parsed events.
    Events,
    /// The closed windows.
    Metrics,
}

/// Where a partition resumes given what the two tables hold: the lower of their offsets, or
/// `None` (start at `source.start_from`) when either holds nothing from it, so that the other
/// drops what it already holds.
pub fn resume_point(
    events: &Offsets,
    metrics: &Offsets,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    Some(
        events
            .get(topic, partition)?
            .min(metrics.get(topic, partition)?),
    )
}

/// The offsets of the partitions a runner holds.
#[derive(Debug, Clone)]
pub struct Progress {
    topic: String,
    /// Partitions the consumer group gave this runner.
    owned: BTreeSet<i32>,
    /// Where the events table stands for each held partition, as last loaded or committed.
    events: Offsets,
    /// Where the metrics table stands for each held partition, as last loaded or committed.
    metrics: Offsets,
    /// Next offset the source has handed on per held partition since they were loaded.
    handed_on: Offsets,
    /// Held partitions whose offsets jumped and that the events table has not recorded yet.
    events_jumps: BTreeMap<i32, OffsetJump>,
    /// The same for the metrics table.
    metrics_jumps: BTreeMap<i32, OffsetJump>,
}

impl Progress {
    /// Nothing held yet.
    pub fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_string(),
            owned: BTreeSet::new(),
            events: Offsets::new(),
            metrics: Offsets::new(),
            handed_on: Offsets::new(),
            events_jumps: BTreeMap::new(),
            metrics_jumps: BTreeMap::new(),
        }
    }

    /// Holds `partitions` from where the tables, as just loaded, stand; forgets every other.
    pub fn hold(&mut self, partitions: &BTreeSet<i32>, events: &Offsets, metrics: &Offsets) {
        self.owned = partitions.clone();
        self.events = self.only_owned(events);
        self.metrics = self.only_owned(metrics);
        self.handed_on = Offsets::new();
        self.events_jumps.clear();
        self.metrics_jumps.clear();
    }

    /// The source went on reading a held partition at `jump.to` instead of where the tables
    /// stand: each table's next commit records the partition there (lower too) and the jump.
    pub fn jumped(&mut self, partition: i32, jump: OffsetJump) {
        if !self.owned.contains(&partition) {
            return;
        }
        self.handed_on.remove(&self.topic, partition);
        self.events_jumps.insert(partition, jump);
        self.metrics_jumps.insert(partition, jump);
    }

    /// The jumps a commit of `table` records.
    pub fn jumps(&self, table: TableRole) -> OffsetJumps {
        let jumps = self.jumps_of(table);
        if jumps.is_empty() {
            return OffsetJumps::default();
        }
        OffsetJumps(BTreeMap::from([(self.topic.clone(), jumps.clone())]))
    }

    fn jumps_of(&self, table: TableRole) -> &BTreeMap<i32, OffsetJump> {
        match table {
            TableRole::Events => &self.events_jumps,
            TableRole::Metrics => &self.metrics_jumps,
        }
    }

    /// The partitions held.
    pub fn owned(&self) -> &BTreeSet<i32> {
        &self.owned
    }

    /// Where each held partition resumes (partitions that start at `start_from` are absent).
    pub fn resume(&self) -> Offsets {
        let mut resume = Offsets::new();
        for partition in &self.owned {
            if let Some(next) = resume_point(&self.events, &self.metrics, &self.topic, *partition) {
                resume.set(&self.topic, *partition, next);
            }
        }
        resume
    }

    /// The source handed on messages up to `next` (per partition, exclusive). Partitions not
    /// held are ignored: their rows are never handed to a table.
    pub fn handed_on(&mut self, next: &Offsets) {
        for (topic, partition, offset) in next.iter() {
            if topic == self.topic && self.owned.contains(&partition) {
                self.handed_on.advance(topic, partition, offset);
            }
        }
    }

    /// Whether `partition` of `topic` is held.
    pub fn holds(&self, topic: &str, partition: i32) -> bool {
        topic == self.topic && self.owned.contains(&partition)
    }

    /// Where the table holds rows of a held partition that the source may still hand on: the
    /// table's offset wherever the source has not handed on past it yet (before the first
    /// message after an assignment it may start below: it was positioned from an earlier look
    /// at the tables, or from the lower of the two). Rows below these offsets are skipped. In
    /// steady state this is empty.
    pub fn absorbed_ahead(&self, table: TableRole) -> Offsets {
        let mut ahead = Offsets::new();
        for (topic, partition, next) in self.table(table).iter() {
            // A partition that jumped is read from where it jumped to, below the table too.
            let next = self.jumps_of(table).get(&partition).map_or(next, |j| j.to);
            let reached = self.handed_on.get(topic, partition);
            if reached.is_none_or(|r| r < next) {
                ahead.set(topic, partition, next);
            }
        }
        ahead
    }

    /// Whether a commit would move a table forward (or record a jump).
    pub fn progressed(&self) -> bool {
        if !self.events_jumps.is_empty() || !self.metrics_jumps.is_empty() {
            return true;
        }
        self.handed_on.iter().any(|(topic, partition, next)| {
            [&self.events, &self.metrics]
                .iter()
                .any(|table| table.get(topic, partition).is_none_or(|t| t < next))
        })
    }

    /// What a commit of `table` records on a table state holding `loaded`: that map with each
    /// held partition raised to where the source has handed on. Refused when `loaded` does not
    /// stand where this runner's batch of a held partition starts: another runner moved it on.
    pub fn decide(&self, table: TableRole, loaded: &Offsets) -> Result<Offsets, Fenced> {
        self.claim(table).decide(loaded)
    }

    /// What this runner's rows make a commit of `table` record, as a [`Claim`]: every held
    /// partition starts where the table stood for this runner, and is recorded where the source
    /// has handed on (or where reading jumped to, lower too).
    pub fn claim(&self, table: TableRole) -> Claim {
        let base = self.table(table);
        let jumps = self.jumps_of(table);
        let partitions = self
            .owned
            .iter()
            .map(|partition| {
                let starts = base.get(&self.topic, *partition);
                let jump = jumps.get(partition).copied();
                let from = jump.map(|j| j.to).or(starts);
                let records = match (from, self.handed_on.get(&self.topic, *partition)) {
                    (Some(from), Some(next)) => Some(from.max(next)),
                    (from, next) => from.or(next),
                };
                (
                    *partition,
                    PartitionClaim {
                        starts,
                        records,
                        jump,
                    },
                )
            })
            .collect();
        Claim {
            topic: self.topic.clone(),
            partitions,
            checkpoints: None,
        }
    }

    /// A commit of `table` recorded `recorded` (and the jumps decided with it): the held
    /// partitions now stand there.
    pub fn committed(&mut self, table: TableRole, recorded: &Offsets) {
        let owned = self.only_owned(recorded);
        match table {
            TableRole::Events => {
                self.events = owned;
                self.events_jumps.clear();
            }
            TableRole::Metrics => {
                self.metrics = owned;
                self.metrics_jumps.clear();
            }
        }
    }

    /// Offsets the events table holds for the held partitions (as last loaded or committed).
    pub fn table(&self, table: TableRole) -> &Offsets {
        match table {
            TableRole::Events => &self.events,
            TableRole::Metrics => &self.metrics,
        }
    }

    fn only_owned(&self, offsets: &Offsets) -> Offsets {
        let mut owned = Offsets::new();
        for (topic, partition, next) in offsets.iter() {
            if self.holds(topic, partition) {
                owned.set(topic, partition, next);
            }
        }
        owned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(pairs: &[(i32, i64)]) -> Offsets {
        let mut offsets = Offsets::new();
        for (partition, next) in pairs {
            offsets.set("t", *partition, *next);
        }
        offsets
    }

    #[test]
    fn resumes_at_the_table_furthest_behind_and_skips_what_the_other_holds() {
        let mut progress = Progress::new("t");
        let events = offsets(&[(0, 100), (1, 50), (2, 70)]);
        let metrics = offsets(&[(0, 80), (1, 50)]);
        progress.hold(&BTreeSet::from([0, 1, 2]), &events, &metrics);
        assert_eq!(progress.resume(), offsets(&[(0, 80), (1, 50)]));
        // Until the source hands on past a table's offset, rows below it are skipped: the
        // source may have been positioned from an earlier, lower look at the tables.
        assert_eq!(progress.absorbed_ahead(TableRole::Events), events);
        assert_eq!(progress.absorbed_ahead(TableRole::Metrics), metrics);
        progress.handed_on(&offsets(&[(0, 100), (1, 60), (2, 60)]));
        assert_eq!(
            progress.absorbed_ahead(TableRole::Events),
            offsets(&[(2, 70)])
        );
        assert!(progress.absorbed_ahead(TableRole::Metrics).is_empty());
    }

    #[test]
    fn a_commit_raises_only_held_partitions_of_the_loaded_map() {
        let mut progress = Progress::new("t");
        let table = offsets(&[(0, 10), (1, 20), (2, 30)]);
        progress.hold(&BTreeSet::from([1]), &table, &table);
        progress.handed_on(&offsets(&[(1, 25), (2, 99)]));
        assert!(progress.progressed());
        // Another runner moved partition 2 on: its value is carried, never overwritten.
        let loaded = offsets(&[(0, 10), (1, 20), (2, 40)]);
        let recorded = progress.decide(TableRole::Events, &loaded).unwrap();
        assert_eq!(recorded, offsets(&[(0, 10), (1, 25), (2, 40)]));
        progress.committed(TableRole::Events, &recorded);
        assert_eq!(progress.table(TableRole::Events), &offsets(&[(1, 25)]));
    }

    #[test]
    fn a_jump_back_to_a_new_topic_start_is_recorded_once_by_each_table_below_its_offset() {
        let mut progress = Progress::new("t");
        let table = offsets(&[(0, 1000), (1, 900)]);
        progress.hold(&BTreeSet::from([0, 1]), &table, &table);
        assert!(!progress.progressed());
        progress.jumped(0, OffsetJump::back_to_start(1000, 0));
        progress.jumped(7, OffsetJump::back_to_start(5, 0));
        assert!(progress.progressed(), "a jump alone is worth a commit");
        // The new topic's rows are not taken for absorbed ones.
        assert_eq!(
            progress.absorbed_ahead(TableRole::Events),
            offsets(&[(0, 0), (1, 900)])
        );
        progress.handed_on(&offsets(&[(0, 40), (1, 950)]));
        assert_eq!(progress.absorbed_ahead(TableRole::Events), Offsets::new());
        let recorded = progress.decide(TableRole::Events, &table).unwrap();
        assert_eq!(
            recorded,
            offsets(&[(0, 40), (1, 950)]),
            "lower where it jumped"
        );
        let jumps = progress.jumps(TableRole::Events);
        assert_eq!(
            jumps.0["t"],
            BTreeMap::from([(0, OffsetJump::back_to_start(1000, 0))]),
            "held partitions only"
        );
        progress.committed(TableRole::Events, &recorded);
        assert!(
            progress.jumps(TableRole::Events).is_empty(),
            "recorded once"
        );
        assert!(!progress.jumps(TableRole::Metrics).is_empty());
        // The metrics table still stands at the old offset, which fencing checks as usual.
        assert!(progress
            .decide(TableRole::Metrics, &offsets(&[(0, 1001), (1, 900)]))
            .is_err());
        let metrics = progress.decide(TableRole::Metrics, &table).unwrap();
        assert_eq!(metrics, offsets(&[(0, 40), (1, 950)]));
    }

    #[test]
    fn a_jump_past_deleted_offsets_raises_the_partition_and_counts_them() {
        let mut progress = Progress::new("t");
        let table = offsets(&[(0, 100)]);
        progress.hold(&BTreeSet::from([0]), &table, &table);
        progress.jumped(0, OffsetJump::past_deleted(100, 250));
        progress.handed_on(&offsets(&[(0, 260)]));
        let recorded = progress.decide(TableRole::Metrics, &table).unwrap();
        assert_eq!(recorded, offsets(&[(0, 260)]));
        assert_eq!(progress.jumps(TableRole::Metrics).0["t"][&0].skipped, 150);
        // Nothing handed on yet from the new position: the commit still records the jump.
        let mut idle = Progress::new("t");
        idle.hold(&BTreeSet::from([0]), &table, &table);
        idle.jumped(0, OffsetJump::past_deleted(100, 250));
        assert!(idle.progressed());
        assert_eq!(
            idle.decide(TableRole::Events, &table).unwrap(),
            offsets(&[(0, 250)])
        );
    }

    #[test]
    fn a_commit_on_a_table_another_runner_moved_on_is_fenced() {
        let mut progress = Progress::new("t");
        let table = offsets(&[(0, 10), (1, 20)]);
        progress.hold(&BTreeSet::from([0, 1]), &table, &table);
        progress.handed_on(&offsets(&[(0, 15)]));
        let fenced = progress
            .decide(TableRole::Metrics, &offsets(&[(0, 12), (1, 20)]))
            .unwrap_err();
        assert_eq!(fenced.partitions.len(), 1);
        assert_eq!(fenced.partitions[0].partition, 0);
        assert_eq!(fenced.partitions[0].batch_starts, Some(10));
        assert_eq!(fenced.partitions[0].table_stands, Some(12));
        // A partition the table held nothing from must still hold nothing.
        let mut fresh = Progress::new("t");
        fresh.hold(&BTreeSet::from([2]), &Offsets::new(), &Offsets::new());
        assert!(fresh
            .decide(TableRole::Events, &offsets(&[(2, 5)]))
            .is_err());
        assert!(fresh.decide(TableRole::Events, &offsets(&[(0, 5)])).is_ok());
    }
}
