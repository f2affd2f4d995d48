//! A claim: what one writer's rows make a snapshot record for the source partitions the writer
//! holds, valid only on a table that stands exactly where those rows start. It is the one rule
//! of validated commits ([`Claim::decide`]), as data: a runner checks its own claim on the
//! table state its snapshot lands on, and a committer landing several writers' shares in one
//! snapshot checks each claim on the state the claims before it leave ([`Claim::apply`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::iceberg::SnapshotContent;
use crate::common::offsets::MovedPartition;
use crate::common::summary::{Checkpoints, OffsetJump, PartitionCheckpoint};
use crate::common::{Fenced, Offsets};

/// What a writer's rows of its held partitions make a snapshot record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The source topic.
    pub topic: String,
    /// Each held partition (every one, also those with no new rows: they must not have moved).
    pub partitions: BTreeMap<i32, PartitionClaim>,
    /// The held partitions' new window-state checkpoints, when the table keeps them (metrics).
    pub checkpoints: Option<BTreeMap<i32, PartitionCheckpoint>>,
}

/// One held partition in a [`Claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClaim {
    /// Where the writer's rows start: the table must stand exactly here (`None`: the table
    /// must hold nothing of the partition).
    pub starts: Option<i64>,
    /// Where the snapshot records the partition (`None`: it stays unrecorded).
    pub records: Option<i64>,
    /// The jump reading took to get there, recorded beside it (`run --accept-offset-jumps`).
    pub jump: Option<OffsetJump>,
}

impl Claim {
    /// The offsets a snapshot on a table holding `loaded` records: that map with each claimed
    /// partition set where the claim says. Refused when `loaded` does not stand where the
    /// writer's rows of a claimed partition start: another writer moved it on.
    pub fn decide(&self, loaded: &Offsets) -> Result<Offsets, Fenced> {
        let moved: Vec<MovedPartition> = self
            .partitions
            .iter()
            .filter_map(|(partition, claim)| {
                let found = loaded.get(&self.topic, *partition);
                (claim.starts != found).then(|| MovedPartition {
                    topic: self.topic.clone(),
                    partition: *partition,
                    batch_starts: claim.starts,
                    table_stands: found,
                })
            })
            .collect();
        if !moved.is_empty() {
            return Err(Fenced { partitions: moved });
        }
        let mut record = loaded.clone();
        for (partition, claim) in &self.partitions {
            if let Some(next) = claim.records {
                record.set(&self.topic, *partition, next);
            }
        }
        Ok(record)
    }

    /// Where a snapshot that took this claim records its partitions (those it records).
    pub fn records(&self) -> Offsets {
        let mut records = Offsets::new();
        for (partition, claim) in &self.partitions {
            if let Some(next) = claim.records {
                records.set(&self.topic, *partition, next);
            }
        }
        records
    }

    /// Adds this claim to `content`, a snapshot being built on a table whose checkpoints were
    /// `base` (the claims applied before may have changed its offsets). Returns the checkpoint
    /// files the snapshot no longer points to; refused, leaving `content` as it was, like
    /// [`Self::decide`].
    pub fn apply(
        &self,
        content: &mut SnapshotContent,
        base: &Checkpoints,
    ) -> Result<Vec<String>, Fenced> {
        content.offsets = self.decide(&content.offsets)?;
        for (partition, claim) in &self.partitions {
            if let Some(jump) = claim.jump {
                content
                    .jumps
                    .0
                    .entry(self.topic.clone())
                    .or_default()
                    .insert(*partition, jump);
            }
        }
        let mut replaced = Vec::new();
        if let Some(new) = &self.checkpoints {
            let checkpoints = content.checkpoints.get_or_insert_with(|| base.clone());
            for (partition, checkpoint) in new {
                if let Some(old) = checkpoints.0.insert(*partition, checkpoint.clone()) {
                    replaced.push(old.file);
                }
            }
        }
        Ok(replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::summary::OffsetJumps;

    fn offsets(pairs: &[(i32, i64)]) -> Offsets {
        let mut offsets = Offsets::new();
        for (partition, next) in pairs {
            offsets.set("t", *partition, *next);
        }
        offsets
    }

    fn claim(parts: &[(i32, Option<i64>, Option<i64>)]) -> Claim {
        Claim {
            topic: "t".into(),
            partitions: parts
                .iter()
                .map(|(partition, starts, records)| {
                    (
                        *partition,
                        PartitionClaim {
                            starts: *starts,
                            records: *records,
                            jump: None,
                        },
                    )
                })
                .collect(),
            checkpoints: None,
        }
    }

    fn checkpoint(file: &str) -> PartitionCheckpoint {
        PartitionCheckpoint {
            file: file.into(),
            max_event: None,
            watermark: None,
        }
    }

    #[test]
    fn claims_land_in_one_snapshot_each_on_the_state_the_ones_before_leave() {
        let loaded = offsets(&[(0, 10), (1, 20), (2, 30)]);
        let mut content = SnapshotContent {
            offsets: loaded.clone(),
            checkpoints: None,
            jumps: OffsetJumps::default(),
        };
        let base = Checkpoints(BTreeMap::from([(0, checkpoint("old-0"))]));
        let mut first = claim(&[(0, Some(10), Some(15))]);
        first.checkpoints = Some(BTreeMap::from([(0, checkpoint("new-0"))]));
        assert_eq!(first.apply(&mut content, &base), Ok(vec!["old-0".into()]));
        // The same writer's next rows of partition 0 chain on the first claim.
        let chained = claim(&[(0, Some(15), Some(18)), (1, Some(20), Some(20))]);
        assert_eq!(chained.apply(&mut content, &base), Ok(vec![]));
        // A zombie that read partition 2 from 25 is refused and changes nothing.
        let zombie = claim(&[(1, Some(20), Some(22)), (2, Some(25), Some(31))]);
        let before = content.offsets.clone();
        let fenced = zombie.apply(&mut content, &base).unwrap_err();
        assert_eq!(fenced.partitions.len(), 1);
        assert_eq!(fenced.partitions[0].partition, 2);
        assert_eq!(content.offsets, before);
        // A writer whose first claim of partition 0 came too late: 0 moved on under it.
        assert!(claim(&[(0, Some(10), Some(12))])
            .apply(&mut content, &base)
            .is_err());
        assert_eq!(content.offsets, offsets(&[(0, 18), (1, 20), (2, 30)]));
        assert_eq!(
            content.checkpoints,
            Some(Checkpoints(BTreeMap::from([(0, checkpoint("new-0"))])))
        );
    }

    #[test]
    fn a_partition_the_table_holds_nothing_of_is_claimed_as_nothing() {
        let fresh = claim(&[(3, None, Some(7))]);
        assert_eq!(fresh.decide(&Offsets::new()), Ok(offsets(&[(3, 7)])));
        assert!(fresh.decide(&offsets(&[(3, 0)])).is_err());
        // Nothing handed on and nothing held: the partition stays unrecorded.
        assert_eq!(
            claim(&[(3, None, None)]).decide(&offsets(&[(1, 4)])),
            Ok(offsets(&[(1, 4)]))
        );
    }

    #[test]
    fn a_claim_travels_as_json() {
        let mut sent = claim(&[(0, Some(1), Some(9))]);
        sent.partitions.get_mut(&0).unwrap().jump = Some(OffsetJump::past_deleted(1, 5));
        sent.checkpoints = Some(BTreeMap::from([(0, checkpoint("c"))]));
        let text = serde_json::to_string(&sent).unwrap();
        assert_eq!(serde_json::from_str::<Claim>(&text).unwrap(), sent);
    }
}
