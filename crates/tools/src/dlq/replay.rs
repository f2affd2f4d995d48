//! Replay: sends chosen dead letters' raw payloads back to their source topic (same key, headers
//! naming the original coordinates) exactly once per source coordinate.
//!
//! The replay keeps a ledger topic (`<dead letter topic>.replayed`, one partition, kept forever).
//! Each chunk is announced there (`intent`) before it is sent and closed (`done`) after every
//! message of it is acknowledged. A replay killed in between leaves an intent without its done:
//! the next replay looks for that chunk's messages in the source topic by their replay-id header
//! and counts as done exactly those it finds, so nothing is sent twice and nothing is skipped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};
use serde::{Deserialize, Serialize};

use super::entry::{Filter, Letter};
use super::record::in_events_table;
use crate::kafka::header_text;
use crate::kafka::reader::TopicReader;
use crate::kafka::KafkaError;

pub use crate::common::REPLAY_OF_HEADER;
/// Header of a replayed message: the id of the replay chunk that sent it.
pub const REPLAY_ID_HEADER: &str = "campaign-pipeline.replay-id";
/// Records per ledger chunk.
const CHUNK: usize = 500;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The ledger topic holds a record the replay cannot read.
    #[error("replay ledger {topic} offset {offset}: unreadable entry: {message}")]
    Ledger {
        topic: String,
        offset: i64,
        message: String,
    },
}

pub use crate::kafka::topics::ledger_topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    Intent,
    Done,
}

/// One ledger record: a chunk announced, or a chunk finished with the coordinates it delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LedgerEntry {
    replay_id: String,
    stage: Stage,
    coordinates: Vec<String>,
    at: String,
}

/// What the ledger says: coordinates replayed, and chunks announced but never finished.
#[derive(Debug, Default)]
pub struct Ledger {
    done: HashSet<String>,
    unfinished: HashMap<String, Vec<String>>,
}

impl Ledger {
    /// Reads the whole ledger; a ledger topic that does not exist yet is an empty ledger.
    pub fn load(client: &ClientConfig, group: &str, topic: &str) -> Result<Self, ReplayError> {
        let mut ledger = Ledger::default();
        let Some(mut reader) = TopicReader::open(client, group, topic)? else {
            return Ok(ledger);
        };
        let mut bad = None;
        reader.read_to_end(|message| {
            let value = message.payload().unwrap_or_default();
            match serde_json::from_slice::<LedgerEntry>(value) {
                Ok(entry) => ledger.apply(entry),
                Err(err) => {
                    bad.get_or_insert((message.offset(), err.to_string()));
                }
            }
            Ok(())
        })?;
        if let Some((offset, message)) = bad {
            return Err(ReplayError::Ledger {
                topic: topic.to_string(),
                offset,
                message,
            });
        }
        Ok(ledger)
    }

    fn apply(&mut self, entry: LedgerEntry) {
        match entry.stage {
            Stage::Intent => {
                self.unfinished.insert(entry.replay_id, entry.coordinates);
            }
            Stage::Done => {
                self.unfinished.remove(&entry.replay_id);
                self.done.extend(entry.coordinates);
            }
        }
    }

    /// Whether the source coordinate has been replayed.
    pub fn is_done(&self, coordinate: &str) -> bool {
        self.done.contains(coordinate)
    }

    /// Coordinates announced by an interrupted replay, not known to be sent or not.
    pub fn unsettled(&self) -> usize {
        self.unfinished.values().map(Vec::len).sum()
    }

    /// Coordinates replayed so far.
    pub fn done_count(&self) -> usize {
        self.done.len()
    }
}

/// One payload to send back.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// `topic/partition/offset` of the original message.
    pub coordinate: String,
    /// The topic to send it to (the source topic it came from).
    pub topic: String,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original payload.
    pub payload: Vec<u8>,
    /// Its category, for the report.
    pub category: String,
}

/// What a replay will do, before it does it.
#[derive(Debug, Default)]
pub struct Plan {
    /// Payloads to send, in dead letter order.
    pub to_send: Vec<Candidate>,
    /// Dead letters the filter picked (repeats included).
    pub picked: usize,
    /// Repeats of a source coordinate already picked.
    pub repeats: usize,
    /// Picked, but replayed by an earlier replay.
    pub already_replayed: usize,
    /// Late and untimed events: the metrics stage rejected them after they were written to the
    /// events table, so replaying them would count them twice.
    pub in_events_table: usize,
    /// Coordinates whose payload or key could not be decoded, with why.
    pub undecodable: Vec<(String, String)>,
    seen: HashSet<String>,
}

impl Plan {
    /// Adds `letter` if `filter` passes it and the ledger has not replayed it. Only what will
    /// be sent is kept, so a large dead letter topic is streamed, not held in memory.
    pub fn add(&mut self, letter: &Letter, filter: &Filter, ledger: &Ledger) {
        if !filter.matches(letter) {
            return;
        }
        self.picked += 1;
        let coordinate = letter.coordinate();
        if self.seen.contains(&coordinate) {
            self.repeats += 1;
            return;
        }
        self.seen.insert(coordinate.clone());
        if ledger.is_done(&coordinate) {
            self.already_replayed += 1;
        } else if in_events_table(&letter.record.category) {
            self.in_events_table += 1;
        } else {
            match (letter.record.payload_bytes(), letter.key_bytes()) {
                (Ok(payload), Ok(key)) => self.to_send.push(Candidate {
                    coordinate,
                    topic: letter.record.source.topic.clone(),
                    key,
                    payload,
                    category: letter.record.category.clone(),
                }),
                (Err(e), _) | (_, Err(e)) => self
                    .undecodable
                    .push((coordinate, format!("bad base64: {e}"))),
            }
        }
    }
}

/// Sends replays and keeps the ledger.
pub struct Replayer {
    producer: crate::kafka::polled_producer::PolledProducer<crate::kafka::client_log::ClientLog>,
    client: ClientConfig,
    group: String,
    ledger_topic: String,
}

impl Replayer {
    /// A replayer writing its ledger to `ledger_topic` (which must exist).
    pub fn new(client: &ClientConfig, group: &str, ledger_topic: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: crate::kafka::idempotent_producer(client, "replay producer")?,
            client: client.clone(),
            group: group.to_string(),
            ledger_topic: ledger_topic.to_string(),
        })
    }

    /// Settles chunks a killed replay left unfinished: the coordinates whose messages reached
    /// the source topic are recorded as done. Returns how many were found sent.
    pub async fn recover(&self, ledger: &mut Ledger) -> Result<usize, ReplayError> {
        if ledger.unfinished.is_empty() {
            return Ok(0);
        }
        let unfinished = std::mem::take(&mut ledger.unfinished);
        let topics: BTreeSet<String> = unfinished
            .values()
            .flatten()
            .filter_map(|c| c.rsplitn(3, '/').nth(2).map(str::to_string))
            .collect();
        let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
        for topic in &topics {
            let Some(mut reader) = TopicReader::open(&self.client, &self.group, topic)? else {
                continue;
            };
            tokio::task::block_in_place(|| {
                reader.read_to_end(|message| {
                    let header = |name| header_text(&message, name);
                    if let (Some(id), Some(of)) =
                        (header(REPLAY_ID_HEADER), header(REPLAY_OF_HEADER))
                    {
                        if let Some((id, _)) = unfinished.get_key_value(&id) {
                            sent.entry(id.as_str()).or_default().push(of);
                        }
                    }
                    Ok(())
                })
            })?;
        }
        let mut found = 0;
        for (id, announced) in &unfinished {
            let delivered: Vec<String> = sent
                .remove(id.as_str())
                .unwrap_or_default()
                .into_iter()
                .filter(|c| announced.contains(c))
                .collect();
            found += delivered.len();
            self.write_ledger(id, Stage::Done, &delivered).await?;
            ledger.done.extend(delivered);
        }
        Ok(found)
    }

    /// Sends every candidate, chunk by chunk, calling `progress` with the count sent so far.
    pub async fn send(
        &self,
        candidates: &[Candidate],
        ledger: &mut Ledger,
        mut progress: impl FnMut(usize),
    ) -> Result<usize, ReplayError> {
        let mut sent = 0;
        for chunk in candidates.chunks(CHUNK) {
            let replay_id = uuid::Uuid::new_v4().to_string();
            let coordinates: Vec<String> = chunk.iter().map(|c| c.coordinate.clone()).collect();
            self.write_ledger(&replay_id, Stage::Intent, &coordinates)
                .await?;
            let deliveries = chunk.iter().map(|candidate| {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: REPLAY_OF_HEADER,
                        value: Some(candidate.coordinate.as_bytes()),
                    })
                    .insert(Header {
                        key: REPLAY_ID_HEADER,
                        value: Some(replay_id.as_bytes()),
                    });
                let mut record = FutureRecord::<[u8], [u8]>::to(&candidate.topic)
                    .payload(&candidate.payload)
                    .headers(headers);
                if let Some(key) = &candidate.key {
                    record = record.key(key);
                }
                let topic = candidate.topic.clone();
                let delivery = self.producer.send(record, Timeout::After(DELIVERY_TIMEOUT));
                async move {
                    delivery
                        .await
                        .map_err(|(source, _)| KafkaError::Delivery { topic, source })
                }
            });
            futures::future::try_join_all(deliveries).await?;
            self.write_ledger(&replay_id, Stage::Done, &coordinates)
                .await?;
            ledger.done.extend(coordinates);
            sent += chunk.len();
            progress(sent);
        }
        Ok(sent)
    }

    async fn write_ledger(
        &self,
        replay_id: &str,
        stage: Stage,
        coordinates: &[String],
    ) -> Result<(), KafkaError> {
        let entry = LedgerEntry {
            replay_id: replay_id.to_string(),
            stage,
            coordinates: coordinates.to_vec(),
            at: chrono::Utc::now().to_rfc3339(),
        };
        let value = serde_json::to_vec(&entry).unwrap_or_default();
        let record = FutureRecord::<str, [u8]>::to(&self.ledger_topic)
            .key(replay_id)
            .payload(&value);
        self.producer
            .send(record, Timeout::After(DELIVERY_TIMEOUT))
            .await
            .map_err(|(source, _)| KafkaError::Delivery {
                topic: self.ledger_topic.clone(),
                source,
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::{DeadLetter, PayloadEncoding, SourceCoordinates};

    fn letter(error: &str, offset: i64) -> Letter {
        let source = SourceCoordinates {
            topic: "events".into(),
            partition: 1,
            offset,
            timestamp: None,
        };
        Letter {
            record: DeadLetter::new(error, b"{\"a\":1}", source, "p", "2026-11-26T10:00:00Z"),
            key: Some("k".into()),
            key_encoding: PayloadEncoding::Text,
            dlq: None,
        }
    }

    #[test]
    fn plan_skips_repeats_replayed_late_and_undecodable_records() {
        let ledger = Ledger {
            done: HashSet::from(["events/1/2".to_string()]),
            unfinished: HashMap::new(),
        };
        let mut broken = letter("bad timestamp: x", 4);
        broken.record.payload_encoding = PayloadEncoding::Base64;
        broken.record.payload = "not base64!".into();
        let mut plan = Plan::default();
        for l in [
            letter("bad timestamp: x", 1),
            letter("bad timestamp: x", 1),
            letter("bad timestamp: y", 2),
            letter("late", 3),
            broken,
            letter("unknown event_type: view", 5),
        ] {
            plan.add(&l, &Filter::default(), &ledger);
        }
        assert_eq!(plan.picked, 6);
        assert_eq!(plan.repeats, 1);
        assert_eq!(plan.already_replayed, 1);
        assert_eq!(plan.in_events_table, 1);
        assert_eq!(plan.undecodable.len(), 1);
        let sent: Vec<&str> = plan.to_send.iter().map(|c| c.coordinate.as_str()).collect();
        assert_eq!(sent, ["events/1/1", "events/1/5"]);
        assert_eq!(plan.to_send[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(plan.to_send[0].payload, b"{\"a\":1}");
    }

    #[test]
    fn a_done_entry_closes_its_intent() {
        let mut ledger = Ledger::default();
        let entry = |id: &str, stage, coordinates: &[&str]| LedgerEntry {
            replay_id: id.into(),
            stage,
            coordinates: coordinates.iter().map(|c| c.to_string()).collect(),
            at: String::new(),
        };
        ledger.apply(entry("a", Stage::Intent, &["t/0/1", "t/0/2"]));
        ledger.apply(entry("b", Stage::Intent, &["t/0/3"]));
        ledger.apply(entry("a", Stage::Done, &["t/0/1", "t/0/2"]));
        assert!(ledger.is_done("t/0/2"));
        assert!(!ledger.is_done("t/0/3"));
        assert_eq!(ledger.unfinished.keys().collect::<Vec<_>>(), ["b"]);
    }
}
