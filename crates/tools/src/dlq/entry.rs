//! One message of the dead letter topic as the tools see it: a dead letter with its key and
//! position, or an unreadable message (not in the DLQ format), and the filters that pick them.

use chrono::{DateTime, Utc};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use serde::{Deserialize, Serialize};

use super::record::{DeadLetter, PayloadEncoding, SourceCoordinates};

/// Category under which messages that are not dead letter records are counted.
pub const UNREADABLE: &str = "unreadable";

/// Where a message sits in the dead letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqPosition {
    /// Dead letter topic partition.
    pub partition: i32,
    /// Dead letter topic offset.
    pub offset: i64,
}

/// A dead letter as exported: the record's own fields, then its key and its place in the topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Letter {
    /// The record as the runner wrote it.
    #[serde(flatten)]
    pub record: DeadLetter,
    /// The original message key (text, or base64 when `key_encoding` says so).
    #[serde(default)]
    pub key: Option<String>,
    /// How `key` is encoded.
    #[serde(default = "text_encoding")]
    pub key_encoding: PayloadEncoding,
    /// Where the record was read from (absent in files written by other tools).
    #[serde(default)]
    pub dlq: Option<DlqPosition>,
}

fn text_encoding() -> PayloadEncoding {
    PayloadEncoding::Text
}

/// A message of the dead letter topic that is not a dead letter record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unreadable {
    /// Where it sits.
    pub dlq: DlqPosition,
    /// Why it could not be read.
    pub reason: String,
    /// Its first bytes, lossily as text.
    pub preview: String,
    /// The Kafka message timestamp, when it has one.
    pub timestamp: Option<DateTime<Utc>>,
}

/// A message read from the dead letter topic.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A dead letter record.
    Letter(Box<Letter>),
    /// Anything else.
    Unreadable(Unreadable),
}

impl Entry {
    /// Reads one dead letter topic message; never fails, bad messages become `Unreadable`.
    pub fn from_message(message: &OwnedMessage) -> Self {
        let dlq = DlqPosition {
            partition: message.partition(),
            offset: message.offset(),
        };
        let value = message.payload().unwrap_or_default();
        match serde_json::from_slice::<DeadLetter>(value) {
            Ok(record) => {
                let (key, key_encoding) = match message.key().map(PayloadEncoding::encode) {
                    Some((key, encoding)) => (Some(key), encoding),
                    None => (None, PayloadEncoding::Text),
                };
                Entry::Letter(Box::new(Letter {
                    record,
                    key,
                    key_encoding,
                    dlq: Some(dlq),
                }))
            }
            Err(err) => Entry::Unreadable(Unreadable {
                dlq,
                reason: if value.is_empty() {
                    "empty message".to_string()
                } else {
                    format!("not a dead letter record: {err}")
                },
                preview: preview(value),
                timestamp: message
                    .timestamp()
                    .to_millis()
                    .and_then(DateTime::from_timestamp_millis),
            }),
        }
    }
}

impl Letter {
    /// The original key bytes.
    pub fn key_bytes(&self) -> Result<Option<Vec<u8>>, base64::DecodeError> {
        self.key
            .as_deref()
            .map(|key| self.key_encoding.decode(key))
            .transpose()
    }

    /// The source coordinates as `topic/partition/offset`, the identity of a rejected event.
    pub fn coordinate(&self) -> String {
        coordinate(&self.record.source)
    }

    /// When it failed, if `failed_at` is a valid RFC 3339 time.
    pub fn failed_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.record.failed_at)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// `topic/partition/offset`.
pub fn coordinate(source: &SourceCoordinates) -> String {
    format!("{}/{}/{}", source.topic, source.partition, source.offset)
}

/// The first 120 bytes, lossily as text, for showing a payload on one line.
pub fn preview(bytes: &[u8]) -> String {
    const LIMIT: usize = 120;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(LIMIT)]);
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if bytes.len() > LIMIT {
        line.push('…');
    }
    line
}

/// Which dead letters a command works on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this category.
    pub category: Option<String>,
    /// Only reasons containing this text.
    pub reason: Option<String>,
    /// Only records that failed at or after this time.
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    /// Whether `letter` passes.
    pub fn matches(&self, letter: &Letter) -> bool {
        let record = &letter.record;
        self.category.as_ref().is_none_or(|c| &record.category == c)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| record.error.contains(r.as_str()))
            && self
                .since
                .is_none_or(|since| letter.failed_at().is_some_and(|t| t >= since))
    }

    /// Whether an unreadable message passes: its category is `unreadable`, it has no reason,
    /// and its time is the Kafka message timestamp.
    pub fn matches_unreadable(&self, unreadable: &Unreadable) -> bool {
        self.reason.is_none()
            && self.category.as_ref().is_none_or(|c| c == UNREADABLE)
            && self
                .since
                .is_none_or(|since| unreadable.timestamp.is_some_and(|t| t >= since))
    }
}

/// Parses `--since`: a duration back from now (`15m`, `2h`, `7d`) or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let duration = humantime::parse_duration(text).map_err(|_| {
        format!("--since {text:?}: expected a duration such as 15m or 2h, or an RFC 3339 time such as 2026-11-26T14:00:00Z")
    })?;
    let duration = chrono::Duration::from_std(duration)
        .map_err(|_| format!("--since {text:?}: duration too long"))?;
    Ok(Utc::now() - duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let before = Utc::now();
        let since = parse_since("15m").unwrap();
        assert!(since <= before - chrono::Duration::minutes(15) + chrono::Duration::seconds(1));
        assert_eq!(
            parse_since("2026-11-26T14:00:00Z").unwrap().to_rfc3339(),
            "2026-11-26T14:00:00+00:00"
        );
        assert!(parse_since("yesterday").unwrap_err().contains("--since"));
    }

    #[test]
    fn previews_are_one_short_line() {
        assert_eq!(preview(b"a\nb"), "a b");
        assert!(preview(&[b'x'; 200]).ends_with('…'));
    }
}
