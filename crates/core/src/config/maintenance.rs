//! The `maintenance:` block: how the tables are kept healthy (compaction, manifest merging,
//! snapshot expiry and file cleanup), by `maintain` and in the background of `run`.

use std::time::Duration;

use serde::Deserialize;

/// Table maintenance settings; on by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Whether `run` maintains the tables in the background (`maintain` always does).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// How often `run` maintains each table.
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
    /// Size compaction aims at for a data file, in MiB; a file under three quarters of it is small.
    #[serde(default = "default_target_file_mb")]
    pub target_file_mb: u64,
    /// Small files a partition must have before they are rewritten into one.
    #[serde(default = "default_min_input_files")]
    pub min_input_files: usize,
    /// Manifests the current snapshot may list before they are merged into few.
    #[serde(default = "default_max_manifests")]
    pub max_manifests: usize,
    /// Snapshots older than this are expired (time travel reaches this far back)...
    #[serde(with = "humantime_serde", default = "default_snapshot_age")]
    pub snapshot_max_age: Duration,
    /// ...except the newest this many, which are always kept...
    #[serde(default = "default_keep_snapshots")]
    pub keep_snapshots: usize,
    /// ...and no more than this many are kept, however young: each commit adds one, and every
    /// commit and every query reads the metadata that lists them all.
    #[serde(default = "default_max_snapshots")]
    pub max_snapshots: usize,
    /// Superseded metadata files kept beside the current one.
    #[serde(default = "default_keep_metadata_files")]
    pub keep_metadata_files: usize,
    /// A file no snapshot references is deleted once it is this old (a younger one may belong to
    /// a commit in flight); it must be longer than `commit.retry_for`.
    #[serde(with = "humantime_serde", default = "default_orphan_grace")]
    pub orphan_grace: Duration,
}

fn default_enabled() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_target_file_mb() -> u64 {
    128
}
fn default_min_input_files() -> usize {
    10
}
fn default_max_manifests() -> usize {
    20
}
fn default_snapshot_age() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_keep_snapshots() -> usize {
    20
}
fn default_max_snapshots() -> usize {
    100
}
fn default_keep_metadata_files() -> usize {
    20
}
fn default_orphan_grace() -> Duration {
    Duration::from_secs(3600)
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            interval: default_interval(),
            target_file_mb: default_target_file_mb(),
            min_input_files: default_min_input_files(),
            max_manifests: default_max_manifests(),
            snapshot_max_age: default_snapshot_age(),
            keep_snapshots: default_keep_snapshots(),
            max_snapshots: default_max_snapshots(),
            keep_metadata_files: default_keep_metadata_files(),
            orphan_grace: default_orphan_grace(),
        }
    }
}

impl MaintenanceConfig {
    /// Target data file size in bytes.
    pub fn target_file_size(&self) -> u64 {
        self.target_file_mb.saturating_mul(1024 * 1024)
    }

    /// The first rule the settings break, as `(key, message)`.
    pub fn problem(&self, retry_for: Duration) -> Option<(&'static str, String)> {
        if self.target_file_mb == 0 {
            return Some(("target_file_mb", "must be at least 1".into()));
        }
        if self.min_input_files < 2 {
            return Some((
                "min_input_files",
                "must be at least 2 (one file is not rewritten into one)".into(),
            ));
        }
        if self.max_manifests == 0 {
            return Some(("max_manifests", "must be at least 1".into()));
        }
        if self.keep_snapshots == 0 {
            return Some(("keep_snapshots", "must be at least 1".into()));
        }
        if self.max_snapshots < self.keep_snapshots {
            return Some((
                "max_snapshots",
                format!("must be at least keep_snapshots ({})", self.keep_snapshots),
            ));
        }
        if self.interval.is_zero() {
            return Some(("interval", "must be longer than 0s".into()));
        }
        if self.orphan_grace <= retry_for {
            return Some((
                "orphan_grace",
                format!(
                    "must be longer than commit.retry_for ({}): a commit that is still being \
                     retried owns files no snapshot references yet",
                    humantime::format_duration(retry_for)
                ),
            ));
        }
        None
    }
}
