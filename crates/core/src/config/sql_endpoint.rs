//! The `sql_endpoint:` block: the read-only PostgreSQL-wire endpoint `serve` offers BI tools.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::ByteSize;

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
    /// Memory all ad-hoc statements of the process hold at once (the endpoint's, the
    /// dashboard's and `query`'s); sorts, joins and aggregations spill to disk before they fail.
    #[serde(default = "default_max_memory")]
    pub max_memory: ByteSize,
    /// Memory one statement may hold: its share of `max_memory`.
    #[serde(default = "default_statement_memory")]
    pub statement_memory: ByteSize,
    /// Temporary disk space the statements' spill files may take together.
    #[serde(default = "default_max_spill")]
    pub max_spill: ByteSize,
    /// TLS for the endpoint (`sslmode=require`); without it the connections are plain text.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// The endpoint's certificate and private key, PEM files (relative paths: from this file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, the server's own certificate first.
    pub certificate: std::path::PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// A floor for one statement's share, so that a slip of the unit (`512KiB` for `512MiB`) is
/// refused at load rather than failing every statement.
const MIN_STATEMENT_MEMORY: ByteSize = ByteSize::mib(16);

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
fn default_max_memory() -> ByteSize {
    ByteSize::gib(2)
}
fn default_statement_memory() -> ByteSize {
    ByteSize::mib(512)
}
fn default_max_spill() -> ByteSize {
    ByteSize::gib(8)
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
            max_memory: default_max_memory(),
            statement_memory: default_statement_memory(),
            max_spill: default_max_spill(),
            tls: None,
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
        if self.statement_memory > self.max_memory {
            return Some((
                "statement_memory",
                format!(
                    "{} is more than max_memory ({}): one statement's share cannot exceed the whole",
                    self.statement_memory, self.max_memory
                ),
            ));
        }
        if self.statement_memory.0 < MIN_STATEMENT_MEMORY.0 {
            return Some((
                "statement_memory",
                format!("must be at least {MIN_STATEMENT_MEMORY}"),
            ));
        }
        if self.password_env.trim().is_empty() {
            return Some(("password_env", "must name an environment variable".into()));
        }
        None
    }
}
