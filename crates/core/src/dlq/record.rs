//! The dead letter record format (DESIGN.md): JSON value, original key.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Reason given to valid events whose window the watermark has already passed.
pub const LATE_REASON: &str = "late";

/// Reason given to valid events whose window time column is NULL (they fit no window).
pub const UNTIMED_REASON: &str = "no event time: the window's time column is NULL";

/// Whether dead letters of `category` are events the metrics stage rejected (late, untimed):
/// those were written to the events table as well, so replaying them would count them twice.
pub fn in_events_table(category: &str) -> bool {
    category == category_of(LATE_REASON) || category == category_of(UNTIMED_REASON)
}

/// How `payload` holds the original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadEncoding {
    /// The payload was valid UTF-8 and is stored as text.
    Text,
    /// The payload was not UTF-8 and is stored as standard base64.
    Base64,
}

impl PayloadEncoding {
    /// `bytes` as text when they are UTF-8, else as standard base64, with the encoding used.
    pub fn encode(bytes: &[u8]) -> (String, Self) {
        match std::str::from_utf8(bytes) {
            Ok(text) => (text.to_string(), PayloadEncoding::Text),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(bytes),
                PayloadEncoding::Base64,
            ),
        }
    }

    /// The original bytes of `text` encoded this way.
    pub fn decode(self, text: &str) -> Result<Vec<u8>, base64::DecodeError> {
        match self {
            PayloadEncoding::Text => Ok(text.as_bytes().to_vec()),
            PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(text),
        }
    }
}

/// Where the rejected message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCoordinates {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Message timestamp (RFC 3339), when the message had one.
    pub timestamp: Option<String>,
}

/// One dead letter record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The reason, as the parsing SQL (or the runner) gave it.
    pub error: String,
    /// The reason's kind with variable parts dropped, e.g. `unknown_event_type`.
    pub category: String,
    /// The original payload, as text or base64 (see `payload_encoding`).
    pub payload: String,
    /// How `payload` is encoded.
    pub payload_encoding: PayloadEncoding,
    /// The source message's coordinates.
    pub source: SourceCoordinates,
    /// The pipeline that rejected it.
    pub pipeline: String,
    /// When it was rejected (RFC 3339, UTC).
    pub failed_at: String,
    /// When the message was a replay (`dlq replay`) that failed again: the `topic/partition/offset`
    /// it replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
}

impl DeadLetter {
    /// A record for `payload` rejected with `error`.
    pub fn new(
        error: &str,
        payload: &[u8],
        source: SourceCoordinates,
        pipeline: &str,
        failed_at: &str,
    ) -> Self {
        let (payload, payload_encoding) = PayloadEncoding::encode(payload);
        Self {
            category: category_of(error),
            error: error.to_string(),
            payload,
            payload_encoding,
            source,
            pipeline: pipeline.to_string(),
            failed_at: failed_at.to_string(),
            replay_of: None,
        }
    }

    /// The original payload bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        self.payload_encoding.decode(&self.payload)
    }

    /// The JSON value written to the topic.
    pub fn to_json(&self) -> Vec<u8> {
        // Sized for the payload, escaped quotes included, and the other fields at once: the
        // doubling growth of an empty buffer copied each letter several times.
        let texts = self.payload.len() + self.error.len() + self.pipeline.len();
        let mut json = Vec::with_capacity(texts + texts / 4 + 256);
        match serde_json::to_writer(&mut json, self) {
            Ok(()) => json,
            Err(_) => Vec::new(),
        }
    }
}

/// The category of a reason: the part before `:` (the variable detail), lower-cased, words
/// joined by `_`. `unknown event_type: view` becomes `unknown_event_type`.
pub fn category_of(reason: &str) -> String {
    let head = reason.split(':').next().unwrap_or_default().trim();
    let category: String = head
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let category = category
        .split('_')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    if category.is_empty() {
        "unknown".to_string()
    } else {
        category
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_drop_the_variable_part() {
        assert_eq!(
            category_of("unknown event_type: view"),
            "unknown_event_type"
        );
        assert_eq!(category_of("broken json"), "broken_json");
        assert_eq!(category_of("invalid utf-8"), "invalid_utf_8");
        assert_eq!(category_of("bad timestamp: 2026-13-45"), "bad_timestamp");
        assert_eq!(category_of(""), "unknown");
        assert!(in_events_table("late") && in_events_table("no_event_time"));
        assert!(!in_events_table("bad_timestamp"));
    }

    #[test]
    fn non_utf8_payloads_round_trip_as_base64() {
        let source = SourceCoordinates {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            timestamp: None,
        };
        let bytes = vec![b'{', 0xff, 0xfe, b'}'];
        let record = DeadLetter::new("invalid utf-8", &bytes, source, "p", "now");
        assert_eq!(record.payload_encoding, PayloadEncoding::Base64);
        let parsed: DeadLetter = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(parsed.payload_bytes().unwrap(), bytes);
    }
}
