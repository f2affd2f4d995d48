//! Where the runners of one pipeline hand their rows to the tables' committer and hear how they
//! fared (`commit.mode: one_committer`, DESIGN.md's scale model). Every runner reads every
//! message: the committer lands the shares, each runner waits for the outcome of its own.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::sink::iceberg::SharedFiles;

/// One message of the control topic. Externally tagged, as `Verdict` is: serde reads an
/// internally tagged enum through a buffer that refuses the claims' integer map keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlMessage {
    /// A runner's rows of both tables, for the committer to land.
    Share(Box<ShareMessage>),
    /// How the shares of one landing fared.
    Outcomes {
        /// One per share.
        outcomes: Vec<Outcome>,
    },
}

/// A runner's part of both tables' next snapshots: the events part lands first, the metrics
/// part only once the events part did (the order of a runner's own commit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareMessage {
    /// Unique per share: its outcome names it.
    pub id: String,
    /// The sending runner, for the committer's log.
    pub sender: String,
    /// Its data files of the events table, with its claim.
    pub events: SharedFiles,
    /// Its data files of the metrics table, with its claim and window checkpoints.
    pub metrics: SharedFiles,
}

/// How one share fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The share's id.
    pub id: String,
    /// Its events part.
    pub events: Verdict,
    /// Its metrics part.
    pub metrics: Verdict,
}

/// How one table's part of a share fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It is in this snapshot of the table.
    Landed {
        /// The snapshot.
        snapshot_id: Option<i64>,
    },
    /// No snapshot took it, and none will: its claim did not hold (another writer moved these
    /// partitions on), or its events part was refused. Its runner deletes its files.
    Refused {
        /// The partitions that had moved (none when the events part was refused).
        partitions: Vec<i32>,
    },
    /// The committer cannot tell (its commit failed, maybe after landing; it could not read
    /// the share): its runner lands it itself, which its claim refuses if it did land.
    Unknown,
}

/// A failure of the control topic.
#[derive(Debug, thiserror::Error)]
#[error("control topic {topic}: {action}")]
pub struct ControlError {
    /// The topic.
    pub topic: String,
    /// What failed.
    pub action: String,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The channel every runner of a pipeline reads and writes: a Kafka topic in production, a
/// queue in memory in the simulation.
#[async_trait]
pub trait Control: Send {
    /// Sends `message` to every runner (this one included); returns once it is delivered.
    async fn send(&mut self, message: &ControlMessage) -> Result<(), ControlError>;

    /// The next message sent since this runner started; `None` once the channel is closed.
    async fn next(&mut self) -> Option<ControlMessage>;

    /// The next message, waiting at most `patience` for it; `None` when none came.
    async fn next_within(&mut self, patience: Duration) -> Option<ControlMessage>;

    /// The next message when one is already there, without waiting.
    fn try_next(&mut self) -> Option<ControlMessage>;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::common::summary::PartitionCheckpoint;
    use crate::sink::claim::{Claim, PartitionClaim};

    fn shared(checkpoints: bool) -> SharedFiles {
        let claimed = PartitionClaim {
            starts: Some(10),
            records: Some(25),
            jump: None,
        };
        SharedFiles {
            files: vec![r#"{"file-path":"s3://b/t/data/f.parquet"}"#.into()],
            claim: Claim {
                topic: "campaign_events".into(),
                partitions: BTreeMap::from([(1, claimed), (2, claimed)]),
                checkpoints: checkpoints.then(|| {
                    BTreeMap::from([(
                        1,
                        PartitionCheckpoint {
                            file: "c1".into(),
                            max_event: Some(7),
                            watermark: None,
                        },
                    )])
                }),
            },
        }
    }

    #[test]
    fn shares_and_outcomes_travel_as_json() {
        let messages = [
            ControlMessage::Share(Box::new(ShareMessage {
                id: "a".into(),
                sender: "pid 1".into(),
                events: shared(false),
                metrics: shared(true),
            })),
            ControlMessage::Outcomes {
                outcomes: vec![Outcome {
                    id: "a".into(),
                    events: Verdict::Landed {
                        snapshot_id: Some(3),
                    },
                    metrics: Verdict::Refused {
                        partitions: vec![2],
                    },
                }],
            },
        ];
        for message in messages {
            let text = serde_json::to_vec(&message).expect("encodes");
            let read: ControlMessage = serde_json::from_slice(&text).expect("decodes");
            assert_eq!(read, message);
        }
    }
}
