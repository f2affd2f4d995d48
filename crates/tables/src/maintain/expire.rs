//! Snapshot expiry (iceberg-rust's `expire_snapshots`, which changes metadata only) and the
//! deletion of what only the expired snapshots referenced: manifest lists, manifests, data
//! files and window-state checkpoints.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iceberg::spec::{ManifestContentType, TableMetadata};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::Catalog;

use super::files::ManifestCache;
use crate::common::summary::{self, Checkpoints};

/// What expiry did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Snapshots removed from the metadata.
    pub snapshots: usize,
    /// Data files, manifests, manifest lists and checkpoints deleted.
    pub files: usize,
}

/// How many of the newest snapshots of `table`'s main branch must stay, at least `keep`: the
/// newest snapshot of every pipeline that wrote the table must remain reachable from the head,
/// because a runner finds its offsets by walking back from there.
pub fn snapshots_to_keep(table: &Table, keep: usize) -> usize {
    let metadata = table.metadata();
    let mut seen = HashSet::new();
    let mut depth_needed = keep;
    let mut next = metadata.current_snapshot().cloned();
    let mut depth = 0;
    while let Some(snapshot) = next {
        depth += 1;
        if let Some(pipeline) = snapshot
            .summary()
            .additional_properties
            .get(summary::PIPELINE)
        {
            if seen.insert(pipeline.clone()) {
                depth_needed = depth_needed.max(depth);
            }
        }
        next = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id).cloned());
    }
    depth_needed
}

/// Snapshots that the retention rules would expire (older than `cutoff`, beyond the newest
/// `keep` of main).
fn expirable(table: &Table, cutoff: i64, keep: usize) -> usize {
    let metadata = table.metadata();
    let mut kept = HashSet::new();
    let mut next = metadata.current_snapshot().cloned();
    while let Some(snapshot) = next {
        if kept.len() < keep || snapshot.timestamp_ms() >= cutoff {
            kept.insert(snapshot.snapshot_id());
        }
        next = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id).cloned());
    }
    metadata
        .snapshots()
        .filter(|s| !kept.contains(&s.snapshot_id()) && s.timestamp_ms() < cutoff)
        .count()
}

fn cutoff_ms(max_age: Duration, now: SystemTime) -> i64 {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    now.saturating_sub(max_age.as_millis() as i64)
}

/// Which snapshots expiry keeps: the newest `keep` of main always, and beyond them those younger
/// than `max_age`, up to `max_count` in all (a cap that holds the metadata's size when commits
/// come often, whatever their age).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Snapshots older than this expire...
    pub max_age: Duration,
    /// ...except the newest this many of main...
    pub keep: usize,
    /// ...and main keeps no more than this many, however young.
    pub max_count: usize,
}

impl Retention {
    /// The retention the maintenance settings ask for.
    pub fn of(settings: &crate::config::MaintenanceConfig) -> Self {
        Self {
            max_age: settings.snapshot_max_age,
            keep: settings.keep_snapshots,
            max_count: settings.max_snapshots,
        }
    }
}

/// Expires `table`'s snapshots that `retention` lets go, then deletes the files only they
/// referenced. Returns the table as the expiry left it.
pub async fn expire(
    catalog: &Arc<dyn Catalog>,
    table: Table,
    retention: Retention,
    now: SystemTime,
    cache: &mut ManifestCache,
) -> iceberg::Result<(Table, Expired)> {
    let keep = snapshots_to_keep(&table, retention.keep);
    let cutoff = cutoff_ms(retention.max_age, now)
        .max(capped_cutoff_ms(&table, retention.max_count.max(keep)));
    if expirable(&table, cutoff, keep) == 0 {
        return Ok((table, Expired::default()));
    }
    let before = table.metadata().clone();
    let tx = Transaction::new(&table);
    let tx = tx
        .expire_snapshots()
        .expire_older_than_ms(cutoff)
        .retain_last(keep)
        .apply(tx)?;
    let after = tx.commit(catalog.as_ref()).await?;
    let files = delete_unreferenced(&after, &before, cache).await?;
    let snapshots = before
        .snapshots()
        .filter(|s| after.metadata().snapshot_by_id(s.snapshot_id()).is_none())
        .count();
    Ok((after, Expired { snapshots, files }))
}

/// The age cutoff that keeps no more than the newest `count` snapshots of `table`'s main branch:
/// the timestamp of the oldest of them (older ones expire), or none when main is not that long.
/// A cutoff rather than named snapshots, so that a branch or tag another engine made keeps the
/// snapshots it points at.
fn capped_cutoff_ms(table: &Table, count: usize) -> i64 {
    let metadata = table.metadata();
    let mut next = metadata.current_snapshot().cloned();
    let mut depth = 0;
    while let Some(snapshot) = next {
        depth += 1;
        if depth == count {
            return snapshot.timestamp_ms();
        }
        next = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id).cloned());
    }
    i64::MIN
}

/// Deletes the files of snapshots in `before` that `after` no longer has, unless a snapshot of
/// `after` still references them (a data file counts while alive in a retained manifest).
async fn delete_unreferenced(
    after: &Table,
    before: &TableMetadata,
    cache: &mut ManifestCache,
) -> iceberg::Result<usize> {
    let kept = after.metadata();
    let expired: Vec<_> = before
        .snapshots()
        .filter(|s| kept.snapshot_by_id(s.snapshot_id()).is_none())
        .cloned()
        .collect();
    let mut kept_lists = HashSet::new();
    let mut kept_manifests = HashSet::new();
    let mut kept_files = HashSet::new();
    let mut kept_checkpoints = HashSet::new();
    for snapshot in kept.snapshots() {
        kept_lists.insert(snapshot.manifest_list().to_string());
        kept_checkpoints.extend(checkpoint_files(snapshot.summary()));
        for manifest in cache.list(after, snapshot).await?.iter() {
            if kept_manifests.insert(manifest.manifest_path.clone()) {
                kept_files.extend(cache.paths(after, manifest).await?.alive.iter().cloned());
            }
        }
    }
    let mut doomed = HashSet::new();
    for snapshot in &expired {
        if !kept_lists.contains(snapshot.manifest_list()) {
            doomed.insert(snapshot.manifest_list().to_string());
        }
        doomed.extend(
            checkpoint_files(snapshot.summary())
                .into_iter()
                .filter(|c| !kept_checkpoints.contains(c)),
        );
        let Ok(listed) = cache.list(after, snapshot).await else {
            // A manifest list already gone (an earlier cleanup was cut short): its files are
            // left to the orphan sweep.
            continue;
        };
        for manifest in listed.iter().cloned() {
            if kept_manifests.contains(&manifest.manifest_path) {
                continue;
            }
            if manifest.content == ManifestContentType::Data {
                if let Ok(paths) = cache.paths(after, &manifest).await {
                    doomed.extend(paths.all().filter(|p| !kept_files.contains(*p)).cloned());
                }
            }
            doomed.insert(manifest.manifest_path);
        }
    }
    let mut deleted = 0;
    for path in doomed {
        match after.file_io().delete(&path).await {
            Ok(()) => deleted += 1,
            Err(err) => {
                tracing::warn!(file = %path, "deleting a file of an expired snapshot: {err}")
            }
        }
    }
    Ok(deleted)
}

/// The window-state checkpoint files a snapshot summary points to.
pub fn checkpoint_files(summary: &iceberg::spec::Summary) -> Vec<String> {
    summary
        .additional_properties
        .get(summary::CHECKPOINT)
        .and_then(|text| Checkpoints::from_json(text).ok())
        .map(|c| c.0.into_values().map(|p| p.file).collect())
        .unwrap_or_default()
}
