//! `collector:` in `pipelines.yaml`: the HTTP endpoint apps send events to (`collect`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::ByteSize;

/// Settings of `campaign-pipeline collect`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Where it listens; loopback by default, so exposing it is a deliberate choice.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The pipeline whose source topic receives the events (default: the only one).
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Environment variable holding the accepted tokens, comma-separated (required to collect).
    #[serde(default = "default_tokens_env")]
    pub tokens_env: String,
    /// Origins of the browser apps allowed to post (CORS); none by default.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Largest request body, after gzip is undone; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Most events in one request; more get 413.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Bytes of request bodies read and not yet acknowledged by Kafka, all requests together;
    /// a request that would pass it gets 503 at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: ByteSize,
    /// How long a request's events may wait for Kafka's acknowledgement before it gets 503.
    #[serde(with = "humantime_serde", default = "default_produce_timeout")]
    pub produce_timeout: Duration,
    /// How long a client may take to send a request's headers, and its body.
    #[serde(with = "humantime_serde", default = "default_read_timeout")]
    pub read_timeout: Duration,
    /// Connections served at once; more get 503 and are closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}
fn default_tokens_env() -> String {
    "CAMPAIGN_COLLECTOR_TOKENS".into()
}
fn default_max_body() -> ByteSize {
    ByteSize::mib(1)
}
fn default_max_events() -> usize {
    10_000
}
fn default_max_in_flight() -> ByteSize {
    ByteSize::mib(64)
}
fn default_produce_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    1024
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            pipeline: None,
            tokens_env: default_tokens_env(),
            cors_origins: Vec::new(),
            max_body: default_max_body(),
            max_events: default_max_events(),
            max_in_flight: default_max_in_flight(),
            produce_timeout: default_produce_timeout(),
            read_timeout: default_read_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

impl CollectorConfig {
    /// The first rule the settings break, as `(key, message)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.tokens_env.trim().is_empty() {
            return Some(("tokens_env", "must name an environment variable".into()));
        }
        if self.max_body.0 == 0 {
            return Some(("max_body", "must be more than 0 bytes".into()));
        }
        if self.max_events == 0 {
            return Some(("max_events", "must be at least 1".into()));
        }
        if self.max_in_flight < self.max_body {
            return Some((
                "max_in_flight",
                format!(
                    "{} is less than max_body ({}): a request of the largest size could never be taken",
                    self.max_in_flight, self.max_body
                ),
            ));
        }
        if self.produce_timeout < Duration::from_millis(100) {
            return Some((
                "produce_timeout",
                "must be at least 100ms (Kafka needs a round trip to acknowledge)".into(),
            ));
        }
        if self.read_timeout.is_zero() {
            return Some(("read_timeout", "must be longer than 0s".into()));
        }
        if self.max_connections == 0 {
            return Some(("max_connections", "must be at least 1".into()));
        }
        if let Some(origin) = self.cors_origins.iter().find(|o| !is_origin(o)) {
            return Some((
                "cors_origins",
                format!(
                    "`{origin}` is not an origin (write it like https://app.example.com, no path)"
                ),
            ));
        }
        None
    }
}

/// Whether `text` is an origin as browsers send it: scheme, host and optional port, no path.
fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains(['/', '?', '#', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_as_browsers_send_them() {
        assert!(is_origin("https://app.example.com"));
        assert!(is_origin("http://localhost:3000"));
        assert!(!is_origin("app.example.com"));
        assert!(!is_origin("https://app.example.com/"));
        assert!(!is_origin("ftp://x"));
    }

    #[test]
    fn in_flight_must_hold_one_largest_request() {
        let config = CollectorConfig {
            max_in_flight: ByteSize::mib(1),
            max_body: ByteSize::mib(2),
            ..CollectorConfig::default()
        };
        assert_eq!(config.problem().map(|p| p.0), Some("max_in_flight"));
        assert_eq!(CollectorConfig::default().problem(), None);
    }
}
