//! `Offsets`: the next Kafka offset to read per topic partition, as stored in snapshot summaries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Next offset to read per (topic, partition): everything below it has been absorbed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offsets(BTreeMap<String, BTreeMap<i32, i64>>);

impl Offsets {
    /// No partition known.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next offset of a partition, if known.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(topic)?.get(&partition).copied()
    }

    /// Whether the message at `offset` lies behind its partition's next offset here (a table
    /// that records these offsets holds what it made of it); a partition not listed holds none.
    pub fn passed(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.get(topic, partition).is_some_and(|next| offset < next)
    }

    /// Sets the next offset of a partition.
    pub fn set(&mut self, topic: &str, partition: i32, next: i64) {
        match self.0.get_mut(topic) {
            Some(partitions) => {
                partitions.insert(partition, next);
            }
            None => {
                self.0
                    .insert(topic.to_string(), BTreeMap::from([(partition, next)]));
            }
        }
    }

    /// Raises a partition's next offset to `next` (never lowers it).
    pub fn advance(&mut self, topic: &str, partition: i32, next: i64) {
        // One lookup of the topic: the source calls this for every message.
        match self.0.get_mut(topic) {
            Some(partitions) => {
                let current = partitions.entry(partition).or_insert(next);
                *current = (*current).max(next);
            }
            None => self.set(topic, partition, next),
        }
    }

    /// Forgets a partition.
    pub fn remove(&mut self, topic: &str, partition: i32) {
        if let Some(partitions) = self.0.get_mut(topic) {
            partitions.remove(&partition);
            if partitions.is_empty() {
                self.0.remove(topic);
            }
        }
    }

    /// Every (topic, partition, next offset).
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0.iter().flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |(partition, next)| (topic.as_str(), *partition, *next))
        })
    }

    /// Whether no partition is known.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }

    /// Compact JSON, as stored in a snapshot summary: `{"topic":{"0":12,"1":7}}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    /// Parses the snapshot summary form.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text).map(Self)
    }
}

/// Why a commit must not land: the table it would land on holds other offsets for partitions
/// this runner writes than the ones its batch starts at (another runner moved them on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.partitions))]
pub struct Fenced {
    /// Each partition that moved, with where this runner's batch starts and where the table is.
    pub partitions: Vec<MovedPartition>,
}

/// A partition another runner moved on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedPartition {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Where this runner's batch starts (`None`: the table held nothing from it).
    pub batch_starts: Option<i64>,
    /// Where the table stands.
    pub table_stands: Option<i64>,
}

fn describe(partitions: &[MovedPartition]) -> String {
    let at = |o: Option<i64>| o.map_or_else(|| "nothing".to_string(), |o| o.to_string());
    let moved = partitions
        .iter()
        .map(|m| {
            format!(
                "{}[{}] batch starts at {}, table stands at {}",
                m.topic,
                m.partition,
                at(m.batch_starts),
                at(m.table_stands)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!("another runner moved partitions on: {moved}")
}

/// A partition's range as the broker last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// The first offset the partition holds (-1 when the broker did not say).
    pub low: i64,
    /// The partition's end: the offset its next message will get.
    pub high: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_and_only_advances() {
        let mut offsets = Offsets::new();
        offsets.set("events", 0, 10);
        offsets.advance("events", 0, 5);
        offsets.advance("events", 2, 7);
        assert_eq!(offsets.to_json(), r#"{"events":{"0":10,"2":7}}"#);
        assert_eq!(Offsets::from_json(&offsets.to_json()).unwrap(), offsets);
    }
}
