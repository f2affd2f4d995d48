//! What a snapshot references: its manifest list, its manifests and their entries.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::spec::{ManifestContentType, ManifestEntryRef, ManifestFile, SnapshotRef};
use iceberg::table::Table;

/// Manifest lists and manifests by path: they never change once written, and the snapshots
/// of a table share most of theirs, so a maintainer reads each once, not once per snapshot and
/// pass. [`Self::prune`] forgets what the last pass did not use.
///
/// Whole manifest entries (their column statistics make them ~3 KB each) are kept only for
/// what the passes rewrite, the current snapshot's manifests; for the retained older
/// snapshots, which the cleanup only needs the paths of, the cache keeps [`FilePaths`]. A
/// runner's memory then no longer grows with the snapshots `snapshot_max_age` retains.
#[derive(Default)]
pub struct ManifestCache {
    lists: HashMap<String, Cached<Vec<ManifestFile>>>,
    entries: HashMap<String, Cached<Vec<ManifestEntryRef>>>,
    paths: HashMap<String, Cached<FilePaths>>,
}

/// A cached value and whether a pass used it since the last prune.
type Cached<T> = (Arc<T>, bool);

/// The data files a manifest lists, by whether its entry is alive (added or existing) or
/// records a deletion.
#[derive(Debug, Default)]
pub struct FilePaths {
    /// Files the manifest's snapshot holds.
    pub alive: Vec<String>,
    /// Files the manifest records as deleted.
    pub deleted: Vec<String>,
}

impl FilePaths {
    fn of(entries: &[ManifestEntryRef]) -> Self {
        let mut paths = Self::default();
        for entry in entries {
            let path = entry.file_path().to_string();
            if entry.is_alive() {
                paths.alive.push(path);
            } else {
                paths.deleted.push(path);
            }
        }
        paths
    }

    /// Every file the manifest names.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.alive.iter().chain(&self.deleted)
    }
}

impl ManifestCache {
    /// The manifests `snapshot`'s manifest list names.
    pub async fn list(
        &mut self,
        table: &Table,
        snapshot: &SnapshotRef,
    ) -> iceberg::Result<Arc<Vec<ManifestFile>>> {
        if let Some(list) = used(&mut self.lists, snapshot.manifest_list()) {
            return Ok(list);
        }
        let list = Arc::new(manifests(table, snapshot).await?);
        self.lists
            .insert(snapshot.manifest_list().to_string(), (list.clone(), true));
        Ok(list)
    }

    /// The entries of `manifest` (every status), with inherited sequence numbers filled in.
    pub async fn entries(
        &mut self,
        table: &Table,
        manifest: &ManifestFile,
    ) -> iceberg::Result<Arc<Vec<ManifestEntryRef>>> {
        if let Some(entries) = used(&mut self.entries, &manifest.manifest_path) {
            return Ok(entries);
        }
        let entries = Arc::new(load_entries(table, manifest).await?);
        self.entries
            .insert(manifest.manifest_path.clone(), (entries.clone(), true));
        Ok(entries)
    }

    /// The paths of the data files `manifest` lists.
    pub async fn paths(
        &mut self,
        table: &Table,
        manifest: &ManifestFile,
    ) -> iceberg::Result<Arc<FilePaths>> {
        if let Some(paths) = used(&mut self.paths, &manifest.manifest_path) {
            return Ok(paths);
        }
        let paths = match self.entries.get(&manifest.manifest_path) {
            Some((entries, _)) => FilePaths::of(entries),
            None => FilePaths::of(&load_entries(table, manifest).await?),
        };
        let paths = Arc::new(paths);
        self.paths
            .insert(manifest.manifest_path.clone(), (paths.clone(), true));
        Ok(paths)
    }

    /// Forgets what was not used since the last prune (files of expired snapshots, entries of
    /// manifests no longer current).
    pub fn prune(&mut self) {
        self.lists.retain(|_, (_, used)| std::mem::take(used));
        self.entries.retain(|_, (_, used)| std::mem::take(used));
        self.paths.retain(|_, (_, used)| std::mem::take(used));
    }
}

/// The value cached under `key`, marked used.
fn used<T>(cache: &mut HashMap<String, Cached<T>>, key: &str) -> Option<Arc<T>> {
    let (value, used) = cache.get_mut(key)?;
    *used = true;
    Some(value.clone())
}

/// Reads `manifest`'s entries (not cached).
async fn load_entries(
    table: &Table,
    manifest: &ManifestFile,
) -> iceberg::Result<Vec<ManifestEntryRef>> {
    let loaded = manifest.load_manifest(table.file_io()).await?;
    Ok(loaded.into_parts().0)
}

/// The manifests a snapshot's manifest list names (read now, not cached).
pub async fn manifests(
    table: &Table,
    snapshot: &SnapshotRef,
) -> iceberg::Result<Vec<ManifestFile>> {
    let list = table.manifest_list_reader(snapshot).load().await?;
    Ok(list.consume_entries().into_iter().collect())
}

/// A data file alive in a snapshot.
#[derive(Debug, Clone)]
pub struct LiveEntry {
    /// Its manifest entry, sequence numbers filled in.
    pub entry: ManifestEntryRef,
    /// The partition spec of the manifest listing it.
    pub spec_id: i32,
}

/// The data files alive in the table's current snapshot, and how many manifests hold them.
pub struct LiveFiles {
    /// Alive entries of the data manifests.
    pub entries: Vec<LiveEntry>,
    /// Manifests of the current snapshot (data and delete).
    pub manifests: Vec<ManifestFile>,
}

impl LiveFiles {
    /// Reads the current snapshot's manifests; `None` for a table without snapshots.
    pub async fn read(table: &Table) -> iceberg::Result<Option<Self>> {
        Self::read_with(table, &mut ManifestCache::default()).await
    }

    /// Same, through `cache`.
    pub async fn read_with(
        table: &Table,
        cache: &mut ManifestCache,
    ) -> iceberg::Result<Option<Self>> {
        let Some(current) = table.metadata().current_snapshot() else {
            return Ok(None);
        };
        let manifests = cache.list(table, current).await?.to_vec();
        let mut entries = Vec::new();
        for manifest in manifests
            .iter()
            .filter(|m| m.content == ManifestContentType::Data)
        {
            entries.extend(
                cache
                    .entries(table, manifest)
                    .await?
                    .iter()
                    .filter(|e| e.is_alive())
                    .map(|entry| LiveEntry {
                        entry: entry.clone(),
                        spec_id: manifest.partition_spec_id,
                    }),
            );
        }
        Ok(Some(Self { entries, manifests }))
    }

    /// Data manifests of the current snapshot.
    pub fn data_manifests(&self) -> usize {
        self.manifests
            .iter()
            .filter(|m| m.content == ManifestContentType::Data)
            .count()
    }
}
