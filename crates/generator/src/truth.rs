//! The truth file: what the tables must hold after the pipeline has processed generated records.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{GeneratedRecord, RecordKind};
use crate::event::CampaignEvent;

/// Counts and revenue of one campaign, or of one campaign in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Impression events.
    pub impressions: u64,
    /// Click events.
    pub clicks: u64,
    /// Conversion events.
    pub conversions: u64,
    /// Revenue in cents, summed exactly.
    pub revenue_cents: i64,
}

impl Counts {
    fn add(&mut self, event: &CampaignEvent) {
        match event.event_type.as_str() {
            "impression" => self.impressions += 1,
            "click" => self.clicks += 1,
            _ => {
                self.conversions += 1;
                self.revenue_cents += (event.revenue * 100.0).round() as i64;
            }
        }
    }
}

/// Expected metrics of one campaign in one tumbling window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowTruth {
    /// Campaign.
    pub campaign_id: String,
    /// Inclusive window start.
    pub window_start: DateTime<Utc>,
    /// Exclusive window end.
    pub window_end: DateTime<Utc>,
    /// Counts in the window.
    #[serde(flatten)]
    pub counts: Counts,
    /// Revenue as the table stores it.
    pub revenue: f64,
    /// clicks / impressions × 100, or null when there are no impressions.
    pub ctr_percent: Option<f64>,
    /// conversions / clicks × 100, or null when there are no clicks.
    pub cvr_percent: Option<f64>,
}

/// Everything the tables and the dead letter queue must show for one generator run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    /// Seed of the run.
    pub seed: u64,
    /// Records sent in all.
    pub records: u64,
    /// Valid events (on time, out of order and late): the events table holds exactly these.
    pub valid_events: u64,
    /// Valid events shifted back within the allowed lateness (counted in their windows).
    pub out_of_order_events: u64,
    /// Valid events too late for their window (dead-lettered as `late` by the metrics stage).
    pub late_events: u64,
    /// Malformed records: the dead letter queue holds exactly these (plus the late events).
    pub invalid_events: u64,
    /// Malformed records by kind.
    pub invalid_by_kind: BTreeMap<String, u64>,
    /// Window size in seconds used for `windows`.
    pub window_seconds: i64,
    /// Valid events per campaign (late ones included, as in the events table).
    pub campaigns: BTreeMap<String, Counts>,
    /// Per campaign and window: on-time and out-of-order events only.
    pub windows: Vec<WindowTruth>,
    #[serde(skip)]
    window_counts: BTreeMap<(String, i64), Counts>,
}

impl Truth {
    /// An empty truth for a run with this seed and window size.
    pub fn new(seed: u64, window_seconds: i64) -> Self {
        Self {
            seed,
            window_seconds: window_seconds.max(1),
            ..Self::default()
        }
    }

    /// Accounts for one sent record.
    pub fn record(&mut self, record: &GeneratedRecord) {
        self.records += 1;
        let (event, in_window) = match &record.kind {
            RecordKind::Invalid(kind) => {
                self.invalid_events += 1;
                *self
                    .invalid_by_kind
                    .entry(kind.name().to_string())
                    .or_default() += 1;
                return;
            }
            RecordKind::OnTime(e) => (e, true),
            RecordKind::OutOfOrder(e) => {
                self.out_of_order_events += 1;
                (e, true)
            }
            RecordKind::Late(e) => {
                self.late_events += 1;
                (e, false)
            }
        };
        self.valid_events += 1;
        self.campaigns
            .entry(event.campaign_id.clone())
            .or_default()
            .add(event);
        if in_window {
            if let Ok(time) = DateTime::parse_from_rfc3339(&event.timestamp) {
                let window_ms = self.window_seconds * 1000;
                let start = time.timestamp_millis().div_euclid(window_ms) * window_ms;
                self.window_counts
                    .entry((event.campaign_id.clone(), start))
                    .or_default()
                    .add(event);
            }
        }
    }

    /// Fills `windows` from the accumulated counts; call once all records are accounted for.
    pub fn finish(&mut self) {
        let window_ms = self.window_seconds * 1000;
        self.windows = self
            .window_counts
            .iter()
            .map(|((campaign, start), counts)| {
                let rate = |num: u64, den: u64| (den > 0).then(|| num as f64 * 100.0 / den as f64);
                WindowTruth {
                    campaign_id: campaign.clone(),
                    window_start: DateTime::from_timestamp_millis(*start).unwrap_or_default(),
                    window_end: DateTime::from_timestamp_millis(start + window_ms)
                        .unwrap_or_default(),
                    revenue: counts.revenue_cents as f64 / 100.0,
                    ctr_percent: rate(counts.clicks, counts.impressions),
                    cvr_percent: rate(counts.conversions, counts.clicks),
                    counts: counts.clone(),
                }
            })
            .collect();
    }
}
