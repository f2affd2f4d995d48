//! What a snapshot references: its manifest list, its manifests and their entries.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::spec::{ManifestContentType, ManifestEntryRef, ManifestFile, SnapshotRef};
use iceberg::table::Table;

/// Manifests read once per maintenance pass, by path (snapshots share most of theirs).
#[derive(Default)]
pub struct ManifestCache {
    entries: HashMap<String, Arc<Vec<ManifestEntryRef>>>,
}

impl ManifestCache {
    /// The entries of `manifest` (every status), with inherited sequence numbers filled in.
    pub async fn entries(
        &mut self,
        table: &Table,
        manifest: &ManifestFile,
    ) -> iceberg::Result<Arc<Vec<ManifestEntryRef>>> {
        if let Some(entries) = self.entries.get(&manifest.manifest_path) {
            return Ok(entries.clone());
        }
        let loaded = manifest.load_manifest(table.file_io()).await?;
        let entries = Arc::new(loaded.into_parts().0);
        self.entries
            .insert(manifest.manifest_path.clone(), entries.clone());
        Ok(entries)
    }
}

/// The manifests a snapshot's manifest list names.
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
        let Some(current) = table.metadata().current_snapshot() else {
            return Ok(None);
        };
        let manifests = manifests(table, current).await?;
        let mut cache = ManifestCache::default();
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
