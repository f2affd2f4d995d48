//! What a snapshot references: its manifest list, its manifests and their entries.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::spec::{ManifestContentType, ManifestEntryRef, ManifestFile, SnapshotRef};
use iceberg::table::Table;

/// Manifest lists and manifests by path: they never change once written, and the snapshots
/// of a table share most of theirs, so a maintainer reads each once, not once per snapshot and
/// pass. [`Self::prune`] forgets what the last pass did not use.
#[derive(Default)]
pub struct ManifestCache {
    lists: HashMap<String, (Arc<Vec<ManifestFile>>, bool)>,
    entries: HashMap<String, (Arc<Vec<ManifestEntryRef>>, bool)>,
}

impl ManifestCache {
    /// The manifests `snapshot`'s manifest list names.
    pub async fn list(
        &mut self,
        table: &Table,
        snapshot: &SnapshotRef,
    ) -> iceberg::Result<Arc<Vec<ManifestFile>>> {
        if let Some((list, used)) = self.lists.get_mut(snapshot.manifest_list()) {
            *used = true;
            return Ok(list.clone());
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
        if let Some((entries, used)) = self.entries.get_mut(&manifest.manifest_path) {
            *used = true;
            return Ok(entries.clone());
        }
        let loaded = manifest.load_manifest(table.file_io()).await?;
        let entries = Arc::new(loaded.into_parts().0);
        self.entries
            .insert(manifest.manifest_path.clone(), (entries.clone(), true));
        Ok(entries)
    }

    /// Forgets what was not used since the last prune (files of expired snapshots).
    pub fn prune(&mut self) {
        self.lists.retain(|_, (_, used)| std::mem::take(used));
        self.entries.retain(|_, (_, used)| std::mem::take(used));
    }
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
