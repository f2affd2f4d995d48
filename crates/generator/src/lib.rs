//! Synthetic campaign traffic: realistic valid events, malformed records of every kind, out-of-order
//! and late timestamps, all reproducible from a seed, plus the truth the tables must match.

pub mod event;
pub mod invalid;
pub mod truth;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::event::CampaignEvent;
pub use invalid::InvalidKind;
pub use truth::Truth;

/// Records before this index are never made late, so every partition has data before the first
/// late event arrives and the watermark has somewhere to stand.
const LATE_WARM_UP: u64 = 1_000;

const PLATFORMS: [&str; 3] = ["ios", "android", "web"];
const COUNTRIES: [&str; 10] = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA", "ES", "MX"];

/// What the generator produces and how.
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    /// Number of campaigns (`campaign_001` ...).
    pub campaigns: u32,
    /// Fraction of records that are malformed, 0..=1.
    pub invalid_ratio: f64,
    /// Fraction of valid events shifted back within the allowed lateness, 0..=1.
    pub out_of_order_ratio: f64,
    /// Fraction of valid events shifted back past the lateness and their window, 0..=1.
    pub late_ratio: f64,
    /// RNG seed: the same seed and options give the same records.
    pub seed: u64,
    /// Event time of the first event.
    pub start_time: DateTime<Utc>,
    /// Event-time distance between consecutive events.
    pub spacing: TimeDelta,
    /// Tumbling window size of the metrics SQL (for the truth and the late shifts).
    pub window: TimeDelta,
    /// Allowed lateness of the pipeline (out-of-order shifts stay within half of it).
    pub allowed_lateness: TimeDelta,
}

/// How a generated record relates to the pipeline's rules.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordKind {
    /// A valid event with an in-order timestamp.
    OnTime(CampaignEvent),
    /// A valid event shifted back, but within the allowed lateness.
    OutOfOrder(CampaignEvent),
    /// A valid event shifted back past the lateness and its window: the pipeline must reject it.
    Late(CampaignEvent),
    /// A malformed record of the given kind.
    Invalid(InvalidKind),
}

/// One record to produce: key, payload bytes, and what it is.
#[derive(Debug, Clone)]
pub struct GeneratedRecord {
    /// Message key (the campaign_id).
    pub key: Vec<u8>,
    /// Message value.
    pub payload: Vec<u8>,
    /// What the record is, for the truth.
    pub kind: RecordKind,
}

/// Deterministic generator of campaign records.
pub struct EventGenerator {
    options: GeneratorOptions,
    rng: ChaCha8Rng,
    index: u64,
    campaign_ids: Vec<String>,
    campaign_weights: Vec<f64>,
    weight_total: f64,
}

impl EventGenerator {
    /// A generator for the given options.
    pub fn new(options: GeneratorOptions) -> Self {
        let campaigns = options.campaigns.max(1);
        let campaign_ids = (1..=campaigns)
            .map(|c| format!("campaign_{c:03}"))
            .collect();
        // Campaign sizes follow a gentle power law: a few big campaigns, a long tail.
        let campaign_weights: Vec<f64> =
            (1..=campaigns).map(|c| 1.0 / f64::from(c).sqrt()).collect();
        let weight_total = campaign_weights.iter().sum();
        Self {
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            options,
            index: 0,
            campaign_ids,
            campaign_weights,
            weight_total,
        }
    }

    /// The options this generator runs with.
    pub fn options(&self) -> &GeneratorOptions {
        &self.options
    }

    /// The next record.
    pub fn next_record(&mut self) -> GeneratedRecord {
        let index = self.index;
        self.index += 1;
        let event_time = self.options.start_time + self.options.spacing * index as i32;
        let mut event = self.event_at(event_time);
        let key = event.campaign_id.clone().into_bytes();

        if self
            .rng
            .random_bool(self.options.invalid_ratio.clamp(0.0, 1.0))
        {
            let kind = InvalidKind::ALL[self.rng.random_range(0..InvalidKind::ALL.len())];
            let payload = kind.corrupt(&event, &mut self.rng);
            return GeneratedRecord {
                key,
                payload,
                kind: RecordKind::Invalid(kind),
            };
        }

        let late = self.options.late_ratio.clamp(0.0, 1.0);
        let shifted = (late + self.options.out_of_order_ratio.clamp(0.0, 1.0)).min(1.0);
        let roll: f64 = if shifted > 0.0 {
            self.rng.random()
        } else {
            1.0
        };
        let make: fn(CampaignEvent) -> RecordKind = if roll < late && index >= LATE_WARM_UP {
            event.timestamp = format_time(event_time - self.late_shift());
            RecordKind::Late
        } else if roll < shifted {
            event.timestamp = format_time(event_time - self.out_of_order_shift());
            RecordKind::OutOfOrder
        } else {
            RecordKind::OnTime
        };
        GeneratedRecord {
            key,
            payload: event.to_payload(),
            kind: make(event),
        }
    }

    fn event_at(&mut self, time: DateTime<Utc>) -> CampaignEvent {
        let rng = &mut self.rng;
        let mut pick = rng.random_range(0.0..self.weight_total);
        let mut campaign = self.campaign_ids.len() - 1;
        for (i, weight) in self.campaign_weights.iter().enumerate() {
            if pick < *weight {
                campaign = i;
                break;
            }
            pick -= weight;
        }
        // Impressions far outnumber clicks, which far outnumber conversions.
        let roll: f64 = rng.random();
        let (event_type, revenue) = if roll < 0.88 {
            ("impression", 0.0)
        } else if roll < 0.98 {
            ("click", 0.0)
        } else {
            (
                "conversion",
                f64::from(rng.random_range(199u32..=24_999)) / 100.0,
            )
        };
        let platform = PLATFORMS[rng.random_range(0..PLATFORMS.len())];
        let device_type = match platform {
            "web" if rng.random_bool(0.8) => "desktop",
            "web" => "mobile",
            _ if rng.random_bool(0.85) => "mobile",
            _ => "tablet",
        };
        CampaignEvent {
            event_id: uuid::Builder::from_random_bytes(rng.random())
                .into_uuid()
                .to_string(),
            user_id: format!("user_{:06}", rng.random_range(1..=200_000u32)),
            campaign_id: self.campaign_ids[campaign].clone(),
            event_type: event_type.to_string(),
            platform: platform.to_string(),
            timestamp: format_time(time),
            revenue,
            country: COUNTRIES[rng.random_range(0..COUNTRIES.len())].to_string(),
            device_type: device_type.to_string(),
        }
    }

    /// Back far enough that the event's window closed long ago, however the partitions interleave.
    fn late_shift(&mut self) -> TimeDelta {
        let window_ms = self.options.window.num_milliseconds().max(1);
        self.options.allowed_lateness
            + self.options.window * 5
            + TimeDelta::milliseconds(self.rng.random_range(0..window_ms * 5))
    }

    /// Back by at most half the allowed lateness: such an event still counts in its window.
    fn out_of_order_shift(&mut self) -> TimeDelta {
        let half = (self.options.allowed_lateness.num_milliseconds() / 2).max(1);
        TimeDelta::milliseconds(self.rng.random_range(1..=half))
    }
}

/// Event times as the apps send them: RFC 3339, UTC, milliseconds.
/// The first event time of `count` events `spacing` apart whose last event is stamped now, so
/// that no generated event is ahead of the runner's clock (`window.max_future`).
pub fn start_ending_now(count: u64, spacing: TimeDelta) -> DateTime<Utc> {
    let span = spacing * i32::try_from(count.saturating_sub(1)).unwrap_or(i32::MAX);
    Utc::now() - span
}

pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}
