//! Files no snapshot references: superseded metadata files beyond the ones kept, and orphans
//! (files of commits that never landed, checkpoints a crash left behind) once older than the
//! grace period, because a younger one may belong to a commit still in flight.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use iceberg::table::Table;

use super::expire::checkpoint_files;
use super::files::ManifestCache;
use super::listing::{list, Listed};

/// What a sweep deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Metadata files older than the kept ones.
    pub metadata_files: usize,
    /// Unreferenced files past the grace period.
    pub orphans: usize,
}

/// Where a sweep looks and what it keeps.
pub struct SweepRules<'a> {
    /// Folder of the window-state checkpoints, when the table keeps them.
    pub checkpoints: Option<&'a str>,
    /// The pipeline whose checkpoint files may be swept (a shared folder holds others' too).
    pub pipeline: &'a str,
    /// Superseded metadata files kept.
    pub keep_metadata_files: usize,
    /// Age below which an unreferenced file is left alone.
    pub grace: Duration,
    /// The time the ages are measured at.
    pub now: SystemTime,
}

/// Deletes what `table` (freshly loaded) no longer references under its folder and the
/// checkpoint folder.
pub async fn sweep(
    table: &Table,
    rules: &SweepRules<'_>,
    cache: &mut ManifestCache,
) -> Result<Swept, SweepError> {
    let metadata = table.metadata();
    let location = metadata.location().trim_end_matches('/');
    let mut referenced: HashSet<String> = HashSet::new();
    for snapshot in metadata.snapshots() {
        referenced.insert(snapshot.manifest_list().to_string());
        referenced.extend(checkpoint_files(snapshot.summary()));
        for manifest in cache.list(table, snapshot).await?.iter() {
            if referenced.insert(manifest.manifest_path.clone()) {
                referenced.extend(cache.paths(table, manifest).await?.all().cloned());
            }
        }
    }
    for statistics in metadata.statistics_iter() {
        referenced.insert(statistics.statistics_path.clone());
    }
    for statistics in metadata.partition_statistics_iter() {
        referenced.insert(statistics.statistics_path.clone());
    }
    let current = table.metadata_location().unwrap_or_default().to_string();
    let current_version = metadata_version(&current);
    referenced.insert(current.clone());
    let log: Vec<&str> = metadata
        .metadata_log()
        .iter()
        .map(|m| m.metadata_file.as_str())
        .collect();
    let kept_log = &log[log.len().saturating_sub(rules.keep_metadata_files)..];
    referenced.extend(kept_log.iter().map(|s| s.to_string()));

    let mut listed =
        list(table.file_io(), location)
            .await
            .map_err(|source| SweepError::Listing {
                folder: location.to_string(),
                source,
            })?;
    if let Some(folder) = rules.checkpoints {
        let folder = folder.trim_end_matches('/');
        if !folder.starts_with(&format!("{location}/")) {
            listed.extend(list(table.file_io(), folder).await.map_err(|source| {
                SweepError::Listing {
                    folder: folder.to_string(),
                    source,
                }
            })?);
        }
    }
    if !listed.iter().any(|file| file.path == current) {
        // The listing spells locations differently from the table (or sees another store):
        // every file would look unreferenced, so nothing is deleted.
        return Err(SweepError::Unrecognised {
            folder: location.to_string(),
            current,
        });
    }
    let checkpoint_folder = rules.checkpoints.map(|f| f.trim_end_matches('/'));
    let mut swept = Swept::default();
    for Listed { path, modified } in listed {
        if referenced.contains(&path) {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or_default();
        if let Some(folder) = checkpoint_folder {
            if path.starts_with(&format!("{folder}/"))
                && !crate::sink::checkpoint::is_file_of(name, rules.pipeline)
            {
                continue;
            }
        }
        let superseded = name.ends_with(".metadata.json")
            && matches!((metadata_version(&path), current_version), (Some(v), Some(c)) if v < c);
        let old = modified.is_some_and(|m| {
            rules
                .now
                .duration_since(m)
                .is_ok_and(|age| age >= rules.grace)
        });
        if !superseded && !old {
            continue;
        }
        match table.file_io().delete(&path).await {
            Ok(()) if superseded => swept.metadata_files += 1,
            Ok(()) => swept.orphans += 1,
            Err(err) => tracing::warn!(file = %path, "deleting an unreferenced file: {err}"),
        }
    }
    Ok(swept)
}

/// The version number of a metadata file named `NNNNN-<uuid>.metadata.json`.
fn metadata_version(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.split_once('-')?.0.parse().ok()
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A manifest or manifest list could not be read.
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    /// The listing does not show the table's current metadata file.
    #[error(
        "listing {folder} does not show the current metadata file {current}; nothing was deleted"
    )]
    Unrecognised { folder: String, current: String },
    /// A folder could not be listed.
    #[error("listing {folder}")]
    Listing {
        folder: String,
        #[source]
        source: std::io::Error,
    },
}
