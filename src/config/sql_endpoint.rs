//! The `sql_endpoint:` block: the read-only PostgreSQL-wire endpoint `serve` offers BI tools.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// Settings of the PostgreSQL-wire SQL endpoint; the credentials come from the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlEndpointConfig {
    /// Whether `serve` (and `run --serve`) offers the endpoint.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Where it listens; loopback by default, so exposing it is a deliberate choice.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Environment variable holding the user name clients log in with (`campaign` if unset).
    #[serde(default = "default_user_env")]
    pub user_env: String,
    /// Environment variable holding the password (required to serve).
    #[serde(default = "default_password_env")]
    pub password_env: String,
    /// A statement still running after this is cancelled with an error.
    #[serde(with = "humantime_serde", default = "default_statement_timeout")]
    pub statement_timeout: Duration,
    /// A statement returning more rows than this fails instead (aggregate, or add a LIMIT).
    #[serde(default = "default_max_result_rows")]
    pub max_result_rows: usize,
    /// Connections served at once; more are refused until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_enabled() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5433))
}
fn default_user_env() -> String {
    "CAMPAIGN_SQL_USER".into()
}
fn default_password_env() -> String {
    "CAMPAIGN_SQL_PASSWORD".into()
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_result_rows() -> usize {
    1_000_000
}
fn default_max_connections() -> usize {
    64
}

impl Default for SqlEndpointConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            listen: default_listen(),
            user_env: default_user_env(),
            password_env: default_password_env(),
            statement_timeout: default_statement_timeout(),
            max_result_rows: default_max_result_rows(),
            max_connections: default_max_connections(),
        }
    }
}

impl SqlEndpointConfig {
    /// The first rule the settings break, as `(key, message)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.statement_timeout.is_zero() {
            return Some(("statement_timeout", "must be longer than 0s".into()));
        }
        if self.max_result_rows == 0 {
            return Some(("max_result_rows", "must be at least 1".into()));
        }
        if self.max_connections == 0 {
            return Some(("max_connections", "must be at least 1".into()));
        }
        if self.password_env.trim().is_empty() {
            return Some(("password_env", "must name an environment variable".into()));
        }
        None
    }
}
