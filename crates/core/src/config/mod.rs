//! `pipelines.yaml`: the typed configuration and its one loader.

mod collector;
pub mod env;
mod maintenance;
mod size;
mod sql_endpoint;

pub use collector::CollectorConfig;
pub use maintenance::MaintenanceConfig;
pub use size::ByteSize;
pub use sql_endpoint::{SqlEndpointConfig, TlsConfig};

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything that can be wrong with a configuration file, each naming where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key, a wrong type or an unset variable.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The file parsed but a value breaks a rule (names the key path).
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A SQL file named by the configuration does not exist.
    #[error("{path}: {key}: SQL file {file} does not exist")]
    MissingSqlFile {
        path: PathBuf,
        key: String,
        file: PathBuf,
    },
    /// `--pipeline NAME` names no pipeline of the file.
    #[error("{path}: no pipeline named `{name}` (pipelines: {known})")]
    UnknownPipeline {
        path: PathBuf,
        name: String,
        known: String,
    },
}

/// The whole `pipelines.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One or more pipelines, each with a unique name.
    pub pipelines: Vec<PipelineConfig>,
    /// The PostgreSQL-wire endpoint `serve` offers BI tools.
    #[serde(default)]
    pub sql_endpoint: SqlEndpointConfig,
    /// The HTTP endpoint apps send events to (`collect`).
    #[serde(default)]
    pub collector: CollectorConfig,
    /// Directory of the configuration file; relative paths inside it resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Path of the configuration file, for messages.
    #[serde(skip)]
    pub file: PathBuf,
}

/// One Kafka-topic-to-Iceberg pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique name; recorded in every snapshot summary and dead letter record.
    #[serde(deserialize_with = "env::string")]
    pub name: String,
    /// Where events come from.
    pub source: SourceConfig,
    /// The parsing and metrics SQL files.
    pub sql: SqlConfig,
    /// Event-time window settings (the window size itself lives in the metrics SQL).
    #[serde(default)]
    pub window: WindowConfig,
    /// Micro-batch bounds.
    #[serde(default)]
    pub batch: BatchConfig,
    /// How often the sinks commit to Iceberg.
    #[serde(default)]
    pub commit: CommitConfig,
    /// Iceberg catalog and tables.
    pub sink: SinkConfig,
    /// Topic for rows that fail parsing or validation.
    pub dead_letter: DeadLetterConfig,
    /// Compaction, manifest merging, snapshot expiry and file cleanup of both tables.
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
}

/// Kafka source settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    #[serde(deserialize_with = "env::string")]
    pub brokers: String,
    /// Topic holding the raw campaign events.
    #[serde(deserialize_with = "env::string")]
    pub topic: String,
    /// Partition count used by `setup` when it creates the topic.
    #[serde(default = "default_source_partitions")]
    pub partitions: i32,
    /// Replication factor used by `setup` when it creates topics.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Consumer group; several runners in one group share the partitions.
    #[serde(deserialize_with = "env::string")]
    pub group_id: String,
    /// Where to begin on partitions the tables have never seen.
    #[serde(default)]
    pub start_from: StartFrom,
    /// librdkafka properties passed through verbatim (SASL, TLS, timeouts...).
    #[serde(default, deserialize_with = "env::string_map")]
    pub properties: BTreeMap<String, String>,
}

/// Start position for partitions without committed progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest retained offset.
    #[default]
    Earliest,
    /// Only events produced after the first start.
    Latest,
}

/// The two SQL files of a pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// Parsing SQL: `kafka_records` to typed event columns plus `_error`.
    pub parse: PathBuf,
    /// Metrics SQL: parsed events to tumbling-window aggregates.
    pub metrics: PathBuf,
}

/// Watermark settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// How far behind the highest event time an event may arrive and still count.
    #[serde(with = "humantime_serde", default = "default_lateness")]
    pub allowed_lateness: Duration,
    /// A partition silent for this long stops holding back the watermark.
    #[serde(with = "humantime_serde", default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// An event stamped further than this ahead of the runner's clock is dead-lettered
    /// (`future timestamp: ...`) and never moves the watermark.
    #[serde(with = "humantime_serde", default = "default_max_future")]
    pub max_future: Duration,
    /// An event stamped further than this behind the runner's clock is late for the windows
    /// (it is still written to the events table) and never opens a window.
    #[serde(with = "humantime_serde", default = "default_max_past")]
    pub max_past: Duration,
}

/// Micro-batch bounds: a batch closes at whichever comes first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most rows in one micro-batch.
    #[serde(default = "default_batch_rows")]
    pub max_rows: usize,
    /// Longest time a micro-batch stays open.
    #[serde(with = "humantime_serde", default = "default_batch_wait")]
    pub max_wait: Duration,
}

/// Iceberg commit cadence: a commit happens at whichever comes first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitConfig {
    /// Longest time between commits while data flows.
    #[serde(with = "humantime_serde", default = "default_commit_interval")]
    pub interval: Duration,
    /// Most buffered rows before a commit.
    #[serde(default = "default_commit_rows")]
    pub max_rows: usize,
    /// How long the runner rides out an object store or catalog that fails (dropping what it
    /// has not committed and trying again with backoff) before it stops with the error.
    #[serde(with = "humantime_serde", default = "default_retry_for")]
    pub retry_for: Duration,
    /// Who lands the runners' rows in the tables.
    #[serde(default)]
    pub mode: CommitMode,
    /// The topic where runners hand their data files to the committer (`one_committer`);
    /// [`PipelineConfig::control_topic`] names the default.
    #[serde(default, deserialize_with = "env::opt_string")]
    pub control_topic: Option<String>,
}

/// Who lands the runners' rows in the tables (DESIGN.md, scale model).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitMode {
    /// Every runner commits both tables for itself; competing commits are retried.
    #[default]
    EachRunner,
    /// The runner holding source partition 0 lands every runner's data files, handed to it over
    /// the control topic, each only if its writer's claim holds.
    OneCommitter,
}

/// The codec of the Parquet files each commit writes. Those files are small and short-lived:
/// compaction rewrites them within minutes with the table's own codec
/// (`write.parquet.compression-codec`), so compressing them first is work done twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileCodec {
    /// No compression: the dictionaries still shrink the columns of few values, and the
    /// identifiers, random text, compress little.
    #[default]
    Uncompressed,
    /// Snappy.
    Snappy,
    /// The table's `write.parquet.compression-codec` and level, as compaction writes.
    Table,
    /// Zstandard at its default level, whatever the table says.
    Zstd,
    /// LZ4 without Hadoop's framing (Parquet's `LZ4_RAW`).
    Lz4,
}

/// Iceberg catalog and the pipeline's two tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Which catalog holds the tables.
    pub catalog: CatalogConfig,
    /// Iceberg namespace of both tables.
    #[serde(deserialize_with = "env::string")]
    pub namespace: String,
    /// Table of parsed events (output of the parsing SQL).
    pub events_table: TableConfig,
    /// Table of window metrics (output of the metrics SQL).
    pub metrics_table: TableConfig,
    /// Object storage settings for an `s3://` warehouse (data, metadata, checkpoints).
    #[serde(default)]
    pub storage: StorageConfig,
    /// Codec of the data files each commit writes (compaction writes the table's own).
    #[serde(default)]
    pub file_codec: FileCodec,
    /// Where window-state checkpoints go (default: the metrics table's `checkpoints/` folder).
    /// Stores that accept only Iceberg's own files in a table's folder (S3 table buckets) need a
    /// location of a plain bucket here, e.g. `s3://warehouse/checkpoints`.
    #[serde(default, deserialize_with = "env::opt_string")]
    pub checkpoints: Option<String>,
}

/// A secret from the configuration (written as `${VAR}`): never shown in logs or messages.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(#[serde(deserialize_with = "env::string")] String);

impl Secret {
    /// The secret itself, for the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// S3-compatible object storage. Without credentials, the standard AWS environment variables
/// and credential chain apply.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Endpoint of an S3-compatible store, e.g. `http://127.0.0.1:8333` (default: AWS).
    #[serde(default, deserialize_with = "env::opt_string")]
    pub endpoint: Option<String>,
    /// Region (default: from the AWS environment, else `us-east-1`).
    #[serde(default, deserialize_with = "env::opt_string")]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which most S3-compatible stores need.
    #[serde(default)]
    pub path_style_access: bool,
    /// Access key id.
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary credentials.
    #[serde(default)]
    pub session_token: Option<Secret>,
}

/// An Iceberg catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CatalogConfig {
    /// Embedded SQLite catalog file (the laptop default).
    Sqlite {
        /// Catalog database file; created when missing.
        #[serde(deserialize_with = "env::string")]
        path: String,
        /// Warehouse root: a local folder or an `s3://` URL.
        #[serde(deserialize_with = "env::string")]
        warehouse: String,
        /// Extra catalog and FileIO properties (for example S3 credentials).
        #[serde(default, deserialize_with = "env::string_map")]
        properties: BTreeMap<String, String>,
    },
    /// PostgreSQL-backed SQL catalog.
    Postgres {
        /// `postgres://user:password@host/db`.
        #[serde(deserialize_with = "env::string")]
        uri: String,
        /// Warehouse root: a local folder or an `s3://` URL.
        #[serde(deserialize_with = "env::string")]
        warehouse: String,
        /// Extra catalog and FileIO properties (for example S3 credentials).
        #[serde(default, deserialize_with = "env::string_map")]
        properties: BTreeMap<String, String>,
    },
    /// Iceberg REST catalog.
    Rest {
        /// Catalog endpoint, `http(s)://host:port`.
        #[serde(deserialize_with = "env::string")]
        uri: String,
        /// Warehouse identifier passed to the REST catalog.
        #[serde(default, deserialize_with = "env::opt_string")]
        warehouse: Option<String>,
        /// Path segment after `/v1/` in the catalog's URLs; most servers send their own.
        #[serde(default, deserialize_with = "env::opt_string")]
        prefix: Option<String>,
        /// OAuth2 client credentials, `client_id:client_secret` (write it as `${VAR}`).
        #[serde(default)]
        credential: Option<Secret>,
        /// A bearer token, instead of client credentials (write it as `${VAR}`).
        #[serde(default)]
        token: Option<Secret>,
        /// Extra catalog and FileIO properties (credentials, S3 endpoint...).
        #[serde(default, deserialize_with = "env::string_map")]
        properties: BTreeMap<String, String>,
    },
}

/// One Iceberg table written by a pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Table name inside the namespace.
    #[serde(deserialize_with = "env::string")]
    pub name: String,
    /// Columns of the identity partition spec, in order.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Iceberg table properties `setup` sets when it creates the table, over its own defaults
    /// (a table that exists keeps its own: change those with any engine's `ALTER TABLE`).
    #[serde(default, deserialize_with = "env::string_map")]
    pub properties: BTreeMap<String, String>,
}

/// Dead letter topic settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Topic receiving rejected rows.
    #[serde(deserialize_with = "env::string")]
    pub topic: String,
    /// Partition count used by `setup`.
    #[serde(default = "default_dlq_partitions")]
    pub partitions: i32,
    /// `retention.ms` set by `setup`.
    #[serde(with = "humantime_serde", default = "default_dlq_retention")]
    pub retention: Duration,
}

fn default_source_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_dlq_partitions() -> i32 {
    1
}
fn default_dlq_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_lateness() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_future() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_max_past() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_batch_rows() -> usize {
    10_000
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(200)
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_for() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_commit_rows() -> usize {
    500_000
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            allowed_lateness: default_lateness(),
            idle_timeout: default_idle_timeout(),
            max_future: default_max_future(),
            max_past: default_max_past(),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: default_batch_rows(),
            max_wait: default_batch_wait(),
        }
    }
}

impl PipelineConfig {
    /// The control topic of `commit.mode: one_committer`: `commit.control_topic`, or the source
    /// topic's name with `_commits` after it.
    pub fn control_topic(&self) -> String {
        self.commit
            .control_topic
            .clone()
            .unwrap_or_else(|| format!("{}_commits", self.source.topic))
    }
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            interval: default_commit_interval(),
            max_rows: default_commit_rows(),
            retry_for: default_retry_for(),
            mode: CommitMode::default(),
            control_topic: None,
        }
    }
}

impl Config {
    /// Reads, expands and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text that was read from `path` (used for messages and relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = serde_yaml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        config.file = path.to_path_buf();
        config.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.validate()?;
        Ok(config)
    }

    /// Resolves a path from the file against the file's directory.
    pub fn resolve(&self, relative: impl AsRef<Path>) -> PathBuf {
        let relative = relative.as_ref();
        if relative.is_absolute() {
            relative.to_path_buf()
        } else {
            self.base_dir.join(relative)
        }
    }

    /// The pipeline called `name`, or the only one when `name` is `None`.
    pub fn pipeline(&self, name: Option<&str>) -> Result<&PipelineConfig, ConfigError> {
        let names = || {
            self.pipelines
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(name) => self
                .pipelines
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| ConfigError::UnknownPipeline {
                    path: self.file.clone(),
                    name: name.to_string(),
                    known: names(),
                }),
            None if self.pipelines.len() == 1 => Ok(&self.pipelines[0]),
            None => Err(self.invalid(
                "pipelines",
                format!(
                    "several pipelines are defined ({}); choose one with --pipeline",
                    names()
                ),
            )),
        }
    }

    /// Pipelines selected by an optional `--pipeline` flag: one, or all of them.
    pub fn selected(&self, name: Option<&str>) -> Result<Vec<&PipelineConfig>, ConfigError> {
        match name {
            Some(_) => Ok(vec![self.pipeline(name)?]),
            None => Ok(self.pipelines.iter().collect()),
        }
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.pipelines.is_empty() {
            return Err(self.invalid("pipelines", "at least one pipeline is required"));
        }
        let mut names = HashSet::new();
        if let Some((field, message)) = self.sql_endpoint.problem() {
            return Err(self.invalid(format!("sql_endpoint.{field}"), message));
        }
        if let Some((field, message)) = self.collector.problem() {
            return Err(self.invalid(format!("collector.{field}"), message));
        }
        for (i, p) in self.pipelines.iter().enumerate() {
            let key = |field: &str| format!("pipelines[{i}].{field}");
            if p.name.trim().is_empty() {
                return Err(self.invalid(key("name"), "must not be empty"));
            }
            if !names.insert(p.name.as_str()) {
                return Err(self.invalid(key("name"), format!("`{}` is used twice", p.name)));
            }
            let positive = [
                ("source.partitions", p.source.partitions),
                ("source.replication_factor", p.source.replication_factor),
                ("dead_letter.partitions", p.dead_letter.partitions),
            ];
            for (field, value) in positive {
                if value < 1 {
                    return Err(
                        self.invalid(key(field), format!("must be at least 1, not {value}"))
                    );
                }
            }
            if p.batch.max_rows == 0 {
                return Err(self.invalid(key("batch.max_rows"), "must be at least 1"));
            }
            if p.source
                .properties
                .get("partition.assignment.strategy")
                .is_some_and(|s| s.contains("cooperative"))
            {
                // A revoke drops everything a runner read and has not committed, which is only
                // right when it revokes every partition, as the eager protocol does.
                return Err(self.invalid(
                    key("source.properties.partition.assignment.strategy"),
                    "cooperative rebalancing is not supported: runners drop what they hold at \
                     every revoke, so the group must use an eager assignor (range, roundrobin)",
                ));
            }
            if p.window.max_past <= p.window.allowed_lateness {
                return Err(self.invalid(
                    key("window.max_past"),
                    format!(
                        "must be longer than window.allowed_lateness ({}), or every event is late",
                        humantime::format_duration(p.window.allowed_lateness)
                    ),
                ));
            }
            if let Some((field, message)) = p.maintenance.problem(p.commit.retry_for) {
                return Err(self.invalid(key(&format!("maintenance.{field}")), message));
            }
            if p.commit.max_rows == 0 {
                return Err(self.invalid(key("commit.max_rows"), "must be at least 1"));
            }
            if p.source.brokers.trim().is_empty() {
                return Err(self.invalid(key("source.brokers"), "must not be empty"));
            }
            let control_topic = p.control_topic();
            for (field, topic) in [
                ("source.topic", &p.source.topic),
                ("dead_letter.topic", &p.dead_letter.topic),
                ("commit.control_topic", &control_topic),
            ] {
                if let Some(problem) = topic_name_problem(topic) {
                    return Err(self.invalid(key(field), problem));
                }
            }
            if control_topic == p.source.topic || control_topic == p.dead_letter.topic {
                return Err(self.invalid(
                    key("commit.control_topic"),
                    "must differ from source.topic and dead_letter.topic",
                ));
            }
            if p.source.topic == p.dead_letter.topic {
                return Err(self.invalid(
                    key("dead_letter.topic"),
                    "must differ from source.topic, or rejected rows would be read again",
                ));
            }
            for (field, table) in [
                ("sink.events_table", &p.sink.events_table),
                ("sink.metrics_table", &p.sink.metrics_table),
            ] {
                if let Err(problem) =
                    crate::sink::iceberg::check_table_properties(&table.properties)
                {
                    return Err(self.invalid(
                        key(&format!("{field}.properties.{}", problem.key)),
                        format!("{:?}: {}", problem.value, problem.reason),
                    ));
                }
            }
            if p.sink.events_table.name == p.sink.metrics_table.name {
                return Err(self.invalid(
                    key("sink.metrics_table.name"),
                    "must differ from sink.events_table.name",
                ));
            }
            if let Some((property, message)) = p.sink.catalog.pool_problem() {
                return Err(
                    self.invalid(key(&format!("sink.catalog.properties.{property}")), message)
                );
            }
            for (field, file) in [("sql.parse", &p.sql.parse), ("sql.metrics", &p.sql.metrics)] {
                let resolved = self.resolve(file);
                if !resolved.is_file() {
                    return Err(ConfigError::MissingSqlFile {
                        path: self.file.clone(),
                        key: key(field),
                        file: resolved,
                    });
                }
            }
        }
        Ok(())
    }
}

impl CatalogConfig {
    /// The connection pool property of a SQL catalog whose value iceberg-catalog-sql cannot
    /// read (it would panic parsing it), with why.
    fn pool_problem(&self) -> Option<(&'static str, String)> {
        let (CatalogConfig::Sqlite { properties, .. } | CatalogConfig::Postgres { properties, .. }) =
            self
        else {
            return None;
        };
        let expect = |property: &'static str, kind: &str, reads: fn(&str) -> bool| {
            properties
                .get(property)
                .filter(|value| !reads(value))
                .map(|value| (property, format!("`{value}` is not {kind}")))
        };
        expect(
            "pool.max-connections",
            "a whole number of connections",
            |v| v.parse::<u32>().is_ok(),
        )
        .or_else(|| {
            expect("pool.idle-timeout", "a whole number of seconds", |v| {
                v.parse::<u64>().is_ok()
            })
        })
        .or_else(|| {
            expect("pool.test-before-acquire", "`true` or `false`", |v| {
                v.parse::<bool>().is_ok()
            })
        })
    }
}

/// Why `topic` is not a Kafka topic name (1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`),
/// if it is not. librdkafka would read a name starting with `^` as a pattern and subscribe to
/// every topic it matches, while the runner keeps offsets for the one topic it names.
fn topic_name_problem(topic: &str) -> Option<String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > 249 {
        Some(format!(
            "`{topic}` is not a Kafka topic name: it must be 1 to 249 characters long"
        ))
    } else if let Some(bad) = topic.chars().find(|c| !legal(*c)) {
        Some(format!(
            "`{topic}` is not a Kafka topic name: `{bad}` is not allowed (letters, digits, `.`, `_` and `-` are)"
        ))
    } else if topic == "." || topic == ".." {
        Some(format!("`{topic}` is not a Kafka topic name"))
    } else {
        None
    }
}
