//! Snapshot summary keys: the contracts between the runners, the readers and table maintenance.
//! Every key a runner writes is named here; maintenance must carry them forward.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What every key below starts with: table maintenance carries the keys with this prefix into
/// the snapshots it writes (all but [`OFFSET_JUMPS`]).
pub const PREFIX: &str = "campaign-pipeline.";
/// Next Kafka offset per topic partition that the table has absorbed (JSON of
/// [`crate::common::Offsets`]); each commit records the full map, and it never goes back except
/// where the same snapshot records an [`OFFSET_JUMPS`] entry for the partition.
pub const OFFSETS: &str = "campaign-pipeline.offsets";
/// The offset jumps a snapshot's offsets make, accepted with `run --accept-offset-jumps`: per
/// topic and partition, where the table stood, where reading went on and how many offsets the
/// topic no longer held (JSON of [`OffsetJumps`]). Only the snapshot that makes the jump has it.
pub const OFFSET_JUMPS: &str = "campaign-pipeline.offset-jumps";
/// The pipeline that made the snapshot; a runner only reads its own pipeline's snapshots.
pub const PIPELINE: &str = "campaign-pipeline.pipeline";
/// How many other runners' shares a committer landed in the snapshot (`commit.mode:
/// one_committer`); absent from a runner's own commits.
pub const SHARES: &str = "campaign-pipeline.shares";
/// Metrics table: the window-state checkpoint of each source partition (JSON of [`Checkpoints`]).
pub const CHECKPOINT: &str = "campaign-pipeline.checkpoint";
/// Metrics table: the watermark (lowest over partitions) and highest event time per partition,
/// for people and tools reading the table (JSON of [`WatermarkSummary`]).
pub const WATERMARK: &str = "campaign-pipeline.watermark";

/// Where one source partition's open-window state is kept, and its event-time progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    /// The Arrow IPC file, under `<metrics table>/checkpoints/`.
    pub file: String,
    /// Highest event time the partition had delivered, microseconds since the epoch.
    pub max_event: Option<i64>,
    /// The partition's watermark, microseconds since the epoch.
    pub watermark: Option<i64>,
}

/// The window-state checkpoint per source partition, as the metrics table's snapshot records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Checkpoints(pub BTreeMap<i32, PartitionCheckpoint>);

impl Checkpoints {
    /// Compact JSON, as stored in a snapshot summary.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    /// Parses the snapshot summary form.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The watermark summary these checkpoints add up to.
    pub fn watermark(&self) -> WatermarkSummary {
        WatermarkSummary {
            watermark: self.0.values().filter_map(|c| c.watermark).min(),
            partitions: self
                .0
                .iter()
                .filter_map(|(p, c)| Some((*p, c.max_event?)))
                .collect(),
        }
    }
}

/// The [`WATERMARK`] summary value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkSummary {
    /// The lowest partition watermark, microseconds since the epoch.
    pub watermark: Option<i64>,
    /// Highest event time per source partition, microseconds since the epoch.
    pub partitions: BTreeMap<i32, i64>,
}

/// One source partition's offsets jumping: the topic no longer holds what the tables expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetJump {
    /// Where the tables stood (the next offset they would have read).
    pub from: i64,
    /// Where reading went on.
    pub to: i64,
    /// Offsets between the two that the topic no longer held, never read: retention deleted
    /// them first. 0 when the topic ends below `from` (created again, or truncated) and is read
    /// from its start.
    pub skipped: i64,
}

impl OffsetJump {
    /// A jump past offsets the topic deleted before they were read.
    pub fn past_deleted(from: i64, first: i64) -> Self {
        Self {
            from,
            to: first,
            skipped: first - from,
        }
    }

    /// A jump back to the start of a topic that ends below where the tables stood.
    pub fn back_to_start(from: i64, start: i64) -> Self {
        Self {
            from,
            to: start,
            skipped: 0,
        }
    }
}

/// The [`OFFSET_JUMPS`] summary value: jumps by topic and partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OffsetJumps(pub BTreeMap<String, BTreeMap<i32, OffsetJump>>);

impl OffsetJumps {
    /// Compact JSON, as stored in a snapshot summary.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    /// Whether no partition jumped.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_sum_up_to_the_lowest_watermark() {
        let mut checkpoints = Checkpoints::default();
        for (p, w) in [(0, 50), (2, 30)] {
            checkpoints.0.insert(
                p,
                PartitionCheckpoint {
                    file: format!("p{p}.arrow"),
                    max_event: Some(w + 10),
                    watermark: Some(w),
                },
            );
        }
        let json = checkpoints.to_json();
        assert_eq!(Checkpoints::from_json(&json).unwrap(), checkpoints);
        let summary = checkpoints.watermark();
        assert_eq!(summary.watermark, Some(30));
        assert_eq!(summary.partitions, BTreeMap::from([(0, 60), (2, 40)]));
    }
}
