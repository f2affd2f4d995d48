//! What the collector reports at `/metrics`.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Why a request got no 202.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reason {
    /// No token, or one that is not accepted (401).
    Unauthorized,
    /// Larger than `max_body`, or more events than `max_events` (413).
    TooLarge,
    /// A `Content-Encoding` other than gzip (415).
    Encoding,
    /// Not JSON, or gzip that does not decode (400).
    NotJson,
    /// The body did not arrive within `read_timeout` (408).
    SlowBody,
    /// Kafka did not acknowledge every event in time, or the in-flight budget was used (503).
    Unavailable,
}

impl Reason {
    /// The reason as the `reason` label writes it.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Unauthorized => "unauthorized",
            Reason::TooLarge => "too_large",
            Reason::Encoding => "encoding",
            Reason::NotJson => "not_json",
            Reason::SlowBody => "slow_body",
            Reason::Unavailable => "unavailable",
        }
    }
}

/// Label of the requests counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The HTTP status answered.
    pub status: u16,
}

/// Label of the rejections counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why ([`Reason::label`]).
    pub reason: &'static str,
}

/// The collector's Prometheus metrics.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Requests answered, by status.
    pub requests: Family<StatusLabel, Counter>,
    /// Requests refused, by reason.
    pub rejected: Family<ReasonLabel, Counter>,
    /// Events Kafka acknowledged (answered 202).
    pub events_accepted: Counter,
    /// Time from a request's events being queued to Kafka's last acknowledgement.
    pub produce_seconds: Histogram,
    /// Bytes of bodies read and not yet answered.
    pub in_flight_bytes: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("campaign_collector");
        let requests = Family::<StatusLabel, Counter>::default();
        registry.register("requests", "Requests answered, by status", requests.clone());
        let rejected = Family::<ReasonLabel, Counter>::default();
        registry.register("rejected", "Requests refused, by reason", rejected.clone());
        let events_accepted = Counter::default();
        registry.register(
            "events_accepted",
            "Events Kafka acknowledged",
            events_accepted.clone(),
        );
        let produce_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "produce_seconds",
            "Time from queueing a request's events to Kafka's last acknowledgement",
            produce_seconds.clone(),
        );
        let in_flight_bytes = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "in_flight_bytes",
            "Bytes of request bodies read and not yet answered",
            in_flight_bytes.clone(),
        );
        Self {
            registry,
            requests,
            rejected,
            events_accepted,
            produce_seconds,
            in_flight_bytes,
        }
    }
}
