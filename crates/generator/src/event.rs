//! The campaign event as apps send it: the JSON payload of a `campaign_events` message.

use serde::{Deserialize, Serialize};

/// Kinds of campaign event the pipeline accepts.
pub const EVENT_TYPES: [&str; 3] = ["impression", "click", "conversion"];

/// One campaign event, serialized as the message value (JSON) and keyed by `campaign_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignEvent {
    /// Unique id of the event (a UUID).
    pub event_id: String,
    /// User who saw or acted on the ad.
    pub user_id: String,
    /// Campaign the event belongs to; also the Kafka message key.
    pub campaign_id: String,
    /// `impression`, `click` or `conversion`.
    pub event_type: String,
    /// `ios`, `android`, `web`...
    pub platform: String,
    /// Event time, RFC 3339 in UTC with milliseconds.
    pub timestamp: String,
    /// Revenue in the campaign's currency; non-zero only on conversions.
    pub revenue: f64,
    /// ISO 3166 country code.
    pub country: String,
    /// `mobile`, `tablet`, `desktop`...
    pub device_type: String,
}

impl CampaignEvent {
    /// The JSON payload sent as the message value.
    pub fn to_payload(&self) -> Vec<u8> {
        // Serializing a struct of strings and a finite f64 cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
