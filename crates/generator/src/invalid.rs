//! Malformed records of every kind the parsing SQL must reject.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::event::CampaignEvent;

/// A kind of malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidKind {
    /// Truncated or otherwise unparseable JSON.
    BrokenJson,
    /// event_id, user_id or campaign_id absent.
    MissingField,
    /// A field of the wrong JSON type (revenue as text, an identifier as a number, ...).
    WrongType,
    /// An event_type other than impression, click or conversion.
    UnknownEventType,
    /// A conversion with negative revenue.
    NegativeRevenue,
    /// A timestamp that does not parse.
    BadTimestamp,
    /// Bytes that are not UTF-8.
    NonUtf8,
}

impl InvalidKind {
    /// Every kind, in a fixed order (the generator draws from it).
    pub const ALL: [InvalidKind; 7] = [
        InvalidKind::BrokenJson,
        InvalidKind::MissingField,
        InvalidKind::WrongType,
        InvalidKind::UnknownEventType,
        InvalidKind::NegativeRevenue,
        InvalidKind::BadTimestamp,
        InvalidKind::NonUtf8,
    ];

    /// The payload of a record of this kind, made from a valid event.
    pub fn corrupt(self, event: &CampaignEvent, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let mut value = match serde_json::to_value(event) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        match self {
            InvalidKind::BrokenJson => {
                let text = String::from_utf8_lossy(&event.to_payload()).into_owned();
                let cut = rng.random_range(1..text.len().saturating_sub(1).max(2));
                return match rng.random_range(0..3) {
                    0 => text[..cut].to_string(),
                    1 => text.replacen(':', "", 1),
                    _ => text.replacen('"', "'", 2),
                }
                .into_bytes();
            }
            InvalidKind::MissingField => {
                let field = ["event_id", "user_id", "campaign_id"][rng.random_range(0..3)];
                value.remove(field);
            }
            InvalidKind::WrongType => {
                let (field, wrong): (&str, serde_json::Value) = match rng.random_range(0..6) {
                    0 => ("revenue", format!("{:.2} USD", event.revenue).into()),
                    1 => ("event_id", rng.random_range(1..1_000_000u32).into()),
                    2 => ("user_id", serde_json::json!([event.user_id])),
                    3 => ("campaign_id", true.into()),
                    4 => ("timestamp", 1_767_225_600.into()),
                    _ => ("platform", serde_json::json!({ "name": event.platform })),
                };
                value.insert(field.into(), wrong);
            }
            InvalidKind::UnknownEventType => {
                let kind = ["view", "purchase", "hover", "Click"][rng.random_range(0..4)];
                value.insert("event_type".into(), kind.into());
            }
            InvalidKind::NegativeRevenue => {
                value.insert("event_type".into(), "conversion".into());
                let cents = f64::from(rng.random_range(1u32..=10_000));
                value.insert("revenue".into(), (-cents / 100.0).into());
            }
            InvalidKind::BadTimestamp => {
                let bad = ["yesterday", "2026-13-45T99:00:00Z", "17000000000x", ""]
                    [rng.random_range(0..4)];
                value.insert("timestamp".into(), bad.into());
            }
            InvalidKind::NonUtf8 => {
                let mut bytes = event.to_payload();
                let at = rng.random_range(1..bytes.len());
                bytes.splice(at..at, [0xff, 0xfe, 0xc3]);
                return bytes;
            }
        }
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// The snake_case name used in the truth file and summaries.
    pub fn name(self) -> &'static str {
        match self {
            InvalidKind::BrokenJson => "broken_json",
            InvalidKind::MissingField => "missing_field",
            InvalidKind::WrongType => "wrong_type",
            InvalidKind::UnknownEventType => "unknown_event_type",
            InvalidKind::NegativeRevenue => "negative_revenue",
            InvalidKind::BadTimestamp => "bad_timestamp",
            InvalidKind::NonUtf8 => "non_utf8",
        }
    }
}
