//! The `replace` commit, written from iceberg-rust 0.10.1's public pieces because it has no
//! rewrite action (apache/iceberg-rust #3046; replace this module when that ships).
//!
//! One commit rewrites every data manifest of the snapshot it is planned on into as few as
//! possible: replaced files become DELETED entries and every other live file an EXISTING one,
//! each keeping its snapshot id and sequence numbers; the new files are ADDED. So compaction
//! and manifest merging are one kind of commit, and the rows never change (checked before it
//! is staged). The snapshot carries the pipeline's summary keys forward.
//!
//! When other writers committed in between, the commit is rebased if they only appended: the
//! new manifest list is this commit's manifests plus the manifests the appends added. Any
//! other change (another maintainer's replace, an expiry that dropped a manifest it needs)
//! abandons it, and the caller plans again from the new state.

use std::collections::{HashMap, HashSet};

use iceberg::spec::{
    DataFile, DataFileFormat, FormatVersion, ManifestContentType, ManifestEntryRef, ManifestFile,
    ManifestListWriter, ManifestWriter, ManifestWriterBuilder, Operation, Snapshot,
    SnapshotReference, SnapshotRetention, SnapshotSummaryCollector, Summary, MAIN_BRANCH,
};
use iceberg::table::Table;
use iceberg::{Error, ErrorKind, TableRequirement, TableUpdate};

use super::files::ManifestCache;
use crate::common::summary;

/// Entries per manifest written by a replace commit.
const ENTRIES_PER_MANIFEST: usize = 20_000;

/// Builds a replace commit: which alive files go, which new files hold their rows.
pub struct ReplaceCommit<'a> {
    table: &'a Table,
    removed: Vec<ManifestEntryRef>,
    added: Vec<DataFile>,
}

/// A replace commit whose manifests are written, ready to be put on a table state.
#[derive(Debug)]
pub struct StagedReplace {
    snapshot_id: i64,
    commit_id: uuid::Uuid,
    planned_on: i64,
    /// The manifests this commit wrote.
    own: Vec<ManifestFile>,
    /// The data manifests of the planned-on snapshot that `own` takes the place of.
    superseded: HashSet<String>,
    removed: Vec<DataFile>,
    added: Vec<DataFile>,
    /// Manifest lists written so far (one per attempt).
    lists: Vec<String>,
}

/// What a staged replace commit asks the catalog to do on one table state.
pub struct ReplaceUpdates {
    /// Add the snapshot, move `main` to it.
    pub updates: Vec<TableUpdate>,
    /// The table and `main` must still be the ones it was built on.
    pub requirements: Vec<TableRequirement>,
}

impl<'a> ReplaceCommit<'a> {
    /// A replace commit on `table`'s current snapshot.
    pub fn new(table: &'a Table) -> Self {
        Self {
            table,
            removed: Vec::new(),
            added: Vec::new(),
        }
    }

    /// Replaces the alive files `removed` with `added`, which must hold the same rows.
    pub fn replace(mut self, removed: Vec<ManifestEntryRef>, added: Vec<DataFile>) -> Self {
        self.removed.extend(removed);
        self.added.extend(added);
        self
    }

    /// Checks the rows, then writes the manifests: every data manifest of the current snapshot
    /// merged into as few as possible.
    pub async fn stage(self, cache: &mut ManifestCache) -> iceberg::Result<StagedReplace> {
        let table = self.table;
        let metadata = table.metadata();
        if metadata.format_version() != FormatVersion::V2 {
            return Err(Error::new(
                ErrorKind::FeatureUnsupported,
                "table maintenance rewrites format-version 2 tables only",
            ));
        }
        let current = metadata.current_snapshot().cloned().ok_or_else(|| {
            Error::new(ErrorKind::PreconditionFailed, "the table has no snapshot")
        })?;
        let removed_rows: u64 = self.removed.iter().map(|e| e.record_count()).sum();
        let added_rows: u64 = self.added.iter().map(|f| f.record_count()).sum();
        if removed_rows != added_rows {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                format!(
                    "the rewritten files hold {added_rows} rows where the replaced ones held \
                     {removed_rows}; nothing was committed"
                ),
            ));
        }
        let removed_paths: HashSet<&str> = self.removed.iter().map(|e| e.file_path()).collect();
        let snapshot_id = unique_snapshot_id(table);
        let commit_id = uuid::Uuid::now_v7();
        let mut out = ManifestOut::new(table, snapshot_id, commit_id);

        let mut superseded = HashSet::new();
        let mut found = 0;
        for manifest in cache.list(table, &current).await?.iter().cloned() {
            if manifest.content != ManifestContentType::Data {
                continue;
            }
            for entry in cache.entries(table, &manifest).await?.iter() {
                if !entry.is_alive() {
                    continue;
                }
                let (snapshot, sequence, file_sequence) = (
                    entry.snapshot_id().unwrap_or(manifest.added_snapshot_id),
                    entry.sequence_number().unwrap_or(manifest.sequence_number),
                    entry
                        .file_sequence_number
                        .or(Some(manifest.sequence_number)),
                );
                let writer = out.writer().await?;
                if removed_paths.contains(entry.file_path()) {
                    found += 1;
                    writer.add_delete_file(entry.data_file().clone(), sequence, file_sequence)?;
                } else {
                    writer.add_existing_file(
                        entry.data_file().clone(),
                        snapshot,
                        sequence,
                        file_sequence,
                    )?;
                }
            }
            superseded.insert(manifest.manifest_path);
        }
        if found != removed_paths.len() {
            out.abandon().await;
            return Err(Error::new(
                ErrorKind::DataInvalid,
                "a file to replace is not alive in the current snapshot",
            ));
        }
        for file in &self.added {
            // -1: the data sequence number is this snapshot's, assigned by the manifest list.
            out.writer().await?.add_file(file.clone(), -1)?;
        }
        let own = out.finish().await?;
        Ok(StagedReplace {
            snapshot_id,
            commit_id,
            planned_on: current.snapshot_id(),
            own,
            superseded,
            removed: self.removed.iter().map(|e| e.data_file().clone()).collect(),
            added: self.added,
            lists: Vec::new(),
        })
    }
}

impl StagedReplace {
    /// The snapshot this commit adds.
    pub fn snapshot_id(&self) -> i64 {
        self.snapshot_id
    }

    /// Writes the manifest list for `base` (the state planned on, or a newer one that only
    /// appended to it) and returns the catalog updates; `None` when `base` changed in a way the
    /// commit cannot be rebased over.
    pub async fn on(
        &mut self,
        base: &Table,
        cache: &mut ManifestCache,
    ) -> iceberg::Result<Option<ReplaceUpdates>> {
        let metadata = base.metadata();
        let Some(head) = metadata.current_snapshot().cloned() else {
            return Ok(None);
        };
        if !only_appends_since(base, self.planned_on) {
            return Ok(None);
        }
        let base_manifests = cache.list(base, &head).await?;
        let paths: HashSet<&str> = base_manifests
            .iter()
            .map(|m| m.manifest_path.as_str())
            .collect();
        if self.superseded.iter().any(|p| !paths.contains(p.as_str())) {
            return Ok(None);
        }
        let carried: Vec<ManifestFile> = base_manifests
            .iter()
            .filter(|m| !self.superseded.contains(&m.manifest_path))
            .cloned()
            .collect();

        let sequence = metadata.next_sequence_number();
        let list_path = format!(
            "{}/metadata/snap-{}-{}-{}.avro",
            metadata.location().trim_end_matches('/'),
            self.snapshot_id,
            self.lists.len(),
            self.commit_id
        );
        let output = base.file_io().new_output(&list_path)?;
        self.lists.push(list_path.clone());
        let mut list = ManifestListWriter::v2(
            output.writer().await?,
            self.snapshot_id,
            Some(head.snapshot_id()),
            sequence,
        );
        list.add_manifests(self.own.iter().cloned().chain(carried))?;
        list.close().await?;

        let snapshot = Snapshot::builder()
            .with_snapshot_id(self.snapshot_id)
            .with_parent_snapshot_id(Some(head.snapshot_id()))
            .with_sequence_number(sequence)
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
            .with_manifest_list(list_path)
            .with_summary(self.summary(base, head.summary()))
            .with_schema_id(metadata.current_schema_id())
            .build();
        Ok(Some(ReplaceUpdates {
            updates: vec![
                TableUpdate::AddSnapshot { snapshot },
                TableUpdate::SetSnapshotRef {
                    ref_name: MAIN_BRANCH.to_string(),
                    reference: SnapshotReference::new(
                        self.snapshot_id,
                        SnapshotRetention::branch(None, None, None),
                    ),
                },
            ],
            requirements: vec![
                TableRequirement::UuidMatch {
                    uuid: metadata.uuid(),
                },
                TableRequirement::RefSnapshotIdMatch {
                    r#ref: MAIN_BRANCH.to_string(),
                    snapshot_id: Some(head.snapshot_id()),
                },
            ],
        }))
    }

    /// Deletes everything this commit wrote (it never landed): its manifests, manifest lists
    /// and the new data files.
    pub async fn abandon(self, table: &Table) {
        let paths = self
            .own
            .iter()
            .map(|m| m.manifest_path.clone())
            .chain(self.lists)
            .chain(self.added.iter().map(|f| f.file_path().to_string()));
        for path in paths {
            if let Err(err) = table.file_io().delete(&path).await {
                tracing::warn!(file = %path, "deleting a file of an abandoned rewrite: {err}");
            }
        }
    }

    /// The operation's counts, the totals moved on from `parent`, and the pipeline's keys
    /// carried forward so that a runner resumes from this snapshot as from its parent.
    fn summary(&self, table: &Table, parent: &Summary) -> Summary {
        let metadata = table.metadata();
        let (schema, spec) = (
            metadata.current_schema().clone(),
            metadata.default_partition_spec().clone(),
        );
        let mut collector = SnapshotSummaryCollector::default();
        for file in &self.added {
            collector.add_file(file, schema.clone(), spec.clone());
        }
        for file in &self.removed {
            collector.remove_file(file, schema.clone(), spec.clone());
        }
        let mut properties: HashMap<String, String> = parent
            .additional_properties
            .iter()
            // The jump belongs to the snapshot that made it; the state keys carry on.
            .filter(|(key, _)| key.starts_with(summary::PREFIX) && *key != summary::OFFSET_JUMPS)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        properties.extend(collector.build());
        let total = |key: &str| {
            parent
                .additional_properties
                .get(key)
                .and_then(|v| v.parse::<i64>().ok())
        };
        let sizes = |files: &[DataFile]| -> i64 {
            files.iter().map(|f| f.file_size_in_bytes() as i64).sum()
        };
        let moved = [
            (
                "total-data-files",
                self.added.len() as i64 - self.removed.len() as i64,
            ),
            (
                "total-files-size",
                sizes(&self.added) - sizes(&self.removed),
            ),
            ("total-records", 0),
            ("total-delete-files", 0),
            ("total-position-deletes", 0),
            ("total-equality-deletes", 0),
        ];
        for (key, change) in moved {
            if let Some(value) = total(key) {
                properties.insert(key.to_string(), (value + change).max(0).to_string());
            }
        }
        Summary {
            operation: Operation::Replace,
            additional_properties: properties,
        }
    }
}

/// Whether every snapshot from `table`'s head back to `planned_on` (excluded) only appended.
fn only_appends_since(table: &Table, planned_on: i64) -> bool {
    let metadata = table.metadata();
    let mut next = metadata.current_snapshot_id();
    while let Some(id) = next {
        if id == planned_on {
            return true;
        }
        let Some(snapshot) = metadata.snapshot_by_id(id) else {
            return false;
        };
        if snapshot.summary().operation != Operation::Append {
            return false;
        }
        next = snapshot.parent_snapshot_id();
    }
    false
}

/// A positive snapshot id no snapshot of `table` has.
fn unique_snapshot_id(table: &Table) -> i64 {
    loop {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((high ^ low) >> 1) as i64;
        if id != 0 && table.metadata().snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// The manifests a replace commit writes, rolled over every [`ENTRIES_PER_MANIFEST`] entries.
struct ManifestOut<'a> {
    table: &'a Table,
    snapshot_id: i64,
    commit_id: uuid::Uuid,
    open: Option<(ManifestWriter, usize)>,
    written: Vec<ManifestFile>,
}

impl<'a> ManifestOut<'a> {
    fn new(table: &'a Table, snapshot_id: i64, commit_id: uuid::Uuid) -> Self {
        Self {
            table,
            snapshot_id,
            commit_id,
            open: None,
            written: Vec::new(),
        }
    }

    /// The writer the next entry goes to.
    async fn writer(&mut self) -> iceberg::Result<&mut ManifestWriter> {
        if self
            .open
            .as_ref()
            .is_some_and(|(_, n)| *n >= ENTRIES_PER_MANIFEST)
        {
            self.close_open().await?;
        }
        if self.open.is_none() {
            let metadata = self.table.metadata();
            let path = format!(
                "{}/metadata/{}-m{}.{}",
                metadata.location().trim_end_matches('/'),
                self.commit_id,
                self.written.len(),
                DataFileFormat::Avro
            );
            let writer = ManifestWriterBuilder::new(
                self.table.file_io().new_output(path)?,
                Some(self.snapshot_id),
                metadata.current_schema().clone(),
                metadata.default_partition_spec().as_ref().clone(),
            )
            .build_v2_data();
            self.open = Some((writer, 0));
        }
        let (writer, count) = self
            .open
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "no manifest writer is open"))?;
        *count += 1;
        Ok(writer)
    }

    async fn close_open(&mut self) -> iceberg::Result<()> {
        if let Some((writer, _)) = self.open.take() {
            self.written.push(writer.write_manifest_file().await?);
        }
        Ok(())
    }

    async fn finish(mut self) -> iceberg::Result<Vec<ManifestFile>> {
        self.close_open().await?;
        Ok(self.written)
    }

    async fn abandon(mut self) {
        self.open = None;
        for manifest in &self.written {
            let _ = self.table.file_io().delete(&manifest.manifest_path).await;
        }
    }
}
