//! Writing a SQL stage's output to an Iceberg table: rows buffered by partition value, encoded
//! into Parquet files one partition at a time at the commit, committed with `fast_append` and
//! the absorbed Kafka offsets in the snapshot summary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{new_null_array, ArrayRef};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    deserialize_data_file_from_json, serialize_data_file_to_json, DataFile, DataFileFormat,
};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, ErrorKind};
use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use tokio::task::{JoinError, JoinSet};

use super::buffer::BufferedRows;
use super::claim::Claim;
use super::commit::{is_conflict, PinnedCatalog};
use super::evolve::columns_to_add;
use super::partition::PartitionSplitter;
use super::table::{check_storage, load_table};
use super::waiting;
use super::SinkError;
use crate::common::summary::{self, Checkpoints, OffsetJumps};
use crate::common::{cpu, Fenced, Offsets, Selection};
use crate::config::FileCodec;

/// How many times a commit is decided again after other writers committed first.
const MAX_COMMIT_ATTEMPTS: u32 = 50;

/// Target size of one data file before it rolls over.
const TARGET_FILE_SIZE: usize = 128 * 1024 * 1024;

type FileWriterBuilder =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// What one commit wrote.
#[derive(Debug, Clone, Default)]
pub struct CommitStats {
    /// Rows in the new data files.
    pub rows: u64,
    /// New data files.
    pub files: usize,
    /// The new snapshot.
    pub snapshot_id: Option<i64>,
    /// Time spent closing files and committing, in milliseconds.
    pub millis: u128,
    /// Attempts that found another writer's commit first and were decided again.
    pub conflicts: u32,
    /// CPU time encoding the data files (Parquet), on every thread that did.
    pub files_cpu: Duration,
    /// CPU time landing the snapshot: manifests, the catalog commit, reloads after conflicts.
    pub landing_cpu: Duration,
}

/// What a table holds for one pipeline, read from the snapshot summaries of one table state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableState {
    /// The offsets the table has absorbed.
    pub offsets: Offsets,
    /// The window-state checkpoint per source partition (metrics table).
    pub checkpoints: Checkpoints,
}

/// What a commit records beside its files, decided against the table state it lands on.
#[derive(Debug, Clone, Default)]
pub struct SnapshotContent {
    /// The full offsets map the new snapshot records.
    pub offsets: Offsets,
    /// The checkpoints it points to, when the table keeps window state.
    pub checkpoints: Option<Checkpoints>,
    /// Where `offsets` jumps (nothing in the usual case).
    pub jumps: OffsetJumps,
}

/// Another writer's part of a snapshot: its data files, already in the table's folder, and its
/// claim on the partitions it holds. A committer lands several in one snapshot
/// ([`TableWriter::commit_with`]), each only if its claim holds.
#[derive(Debug, Clone)]
pub struct Share {
    /// The data files it adds.
    pub files: Vec<DataFile>,
    /// What its rows make the snapshot record.
    pub claim: Claim,
}

/// How a [`Share`] fared in a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum ShareOutcome {
    /// It is in the snapshot the commit landed.
    Landed {
        /// That snapshot.
        snapshot_id: Option<i64>,
    },
    /// Its claim did not hold on the table state the commit landed on; its files were left
    /// out (its writer deletes them).
    Fenced(Fenced),
}

/// The JSON form of a [`Share`], as it travels from its writer to the committer: the data
/// files in Iceberg's own JSON form (partition values and column statistics included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedFiles {
    /// The data files, one JSON document each.
    pub files: Vec<String>,
    /// The claim.
    pub claim: Claim,
}

impl SnapshotContent {
    /// What a snapshot on `state` records when it adds files and moves no partition of its
    /// own: a committer landing other writers' shares alone.
    pub fn unchanged(state: &TableState) -> Self {
        Self {
            offsets: state.offsets.clone(),
            checkpoints: None,
            jumps: OffsetJumps::default(),
        }
    }
}

/// Whose rows a landing commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lands {
    /// The writer's own rows (in its files), with other writers' shares.
    Own,
    /// Other writers' shares alone; the rows the writer took stay for its own next commit.
    Others,
    /// A share of the writer's own that no committer answered for.
    OwnShare,
}

/// An open Iceberg table being appended to by one pipeline.
pub struct TableWriter {
    catalog: Arc<dyn Catalog>,
    table: Table,
    label: String,
    pipeline: String,
    arrow_schema: SchemaRef,
    splitter: PartitionSplitter,
    buffered: BufferedRows,
    /// What `table` holds for this pipeline.
    state: TableState,
    /// Files closed for a commit that was fenced, waiting for [`Self::discard`].
    fenced_files: Vec<DataFile>,
    /// Whether other writers committed to the table since this one's previous commit. The next
    /// commit then loads the table before deciding: a base it knows is stale would fail at the
    /// catalog after its manifests were written, and cost a reload anyway.
    others_committing: bool,
    /// The codec of the files this writer writes.
    file_codec: FileCodec,
}

impl TableWriter {
    /// Opens `namespace.name` for appending SQL output of schema `sql_schema`; refuses SQL output
    /// the table cannot hold, naming the column, before anything is consumed.
    pub async fn open(
        catalog: Arc<dyn Catalog>,
        namespace: &str,
        name: &str,
        pipeline: &str,
        sql_schema: &arrow::datatypes::Schema,
    ) -> Result<Self, SinkError> {
        let label = format!("{namespace}.{name}");
        let table = load_table(catalog.as_ref(), namespace, name)
            .await
            .map_err(|err| match err {
                SinkError::Iceberg { source, .. }
                    if source.kind() == iceberg::ErrorKind::TableNotFound =>
                {
                    SinkError::Schema {
                        table: label.clone(),
                        message: "the table does not exist; run `campaign-pipeline setup` first"
                            .into(),
                    }
                }
                other => other,
            })?;
        check_storage(&table, &label).await?;
        let additions = columns_to_add(&label, table.metadata().current_schema(), sql_schema)?;
        let table = if additions.is_empty() {
            table
        } else {
            let names: Vec<String> = additions.iter().map(|(name, _)| name.clone()).collect();
            let tx = Transaction::new(&table);
            let action =
                additions
                    .into_iter()
                    .fold(tx.update_schema(), |action, (name, field_type)| {
                        action.add_column(AddColumn::optional(name, field_type))
                    });
            let tx = action
                .apply(tx)
                .map_err(|e| SinkError::iceberg(&label, e))?;
            let table = tx
                .commit(catalog.as_ref())
                .await
                .map_err(|e| SinkError::iceberg(format!("adding columns to {label}"), e))?;
            tracing::info!(table = %label, columns = ?names, "the SQL returns new columns: added them to the table");
            table
        };
        let metadata = table.metadata();
        let schema = metadata.current_schema().clone();
        let arrow_schema =
            Arc::new(schema_to_arrow_schema(&schema).map_err(|e| SinkError::iceberg(&label, e))?);
        let splitter = PartitionSplitter::new(schema, metadata.default_partition_spec().clone())
            .map_err(|e| SinkError::iceberg(&label, e))?;
        let mut writer = Self {
            catalog,
            table,
            label,
            pipeline: pipeline.to_string(),
            arrow_schema,
            splitter,
            buffered: BufferedRows::default(),
            state: TableState::default(),
            fenced_files: Vec::new(),
            others_committing: false,
            file_codec: FileCodec::default(),
        };
        writer.state = read_state(&writer.table, &writer.pipeline, &writer.label)?;
        // A codec compaction cannot follow is reported before any event is read, not at the
        // first maintenance pass.
        parquet_properties(writer.table.metadata().properties()).map_err(|source| {
            SinkError::Property {
                table: writer.label.clone(),
                source,
            }
        })?;
        Ok(writer)
    }

    /// Writes the files of every commit with `codec` (the default is [`FileCodec::Uncompressed`]).
    pub fn with_file_codec(mut self, codec: FileCodec) -> Self {
        self.file_codec = codec;
        self
    }

    /// `namespace.name`, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What the table held for this pipeline when it was last loaded or committed to.
    pub fn state(&self) -> &TableState {
        &self.state
    }

    /// Loads the table's newest state from the catalog (other runners may have committed).
    pub async fn refresh(&mut self) -> Result<&TableState, SinkError> {
        let loading = || format!("{}: loading the table", self.label);
        let table = waiting::logged(loading, self.catalog.load_table(self.table.identifier()))
            .await
            .map_err(|e| SinkError::iceberg(format!("loading {}", self.label), e))?;
        self.state = read_state(&table, &self.pipeline, &self.label)?;
        self.table = table;
        Ok(&self.state)
    }

    /// The table's current snapshot id.
    pub fn current_snapshot_id(&self) -> Option<i64> {
        self.table.metadata().current_snapshot_id()
    }

    /// The table's root location.
    pub fn location(&self) -> &str {
        self.table.metadata().location()
    }

    /// The table's file IO (for files kept beside the data, such as checkpoints).
    pub fn file_io(&self) -> &iceberg::io::FileIO {
        self.table.file_io()
    }

    /// The pipeline that owns this writer's snapshots.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Rows written since the last commit.
    pub fn buffered_rows(&self) -> u64 {
        self.buffered.rows()
    }

    /// Takes SQL output rows (columns matched by name, `_` columns ignored) for the next commit.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        self.write_selected(&Selection::all(batch.clone())).await
    }

    /// [`Self::write`] of the chosen rows, copied from their batch once, into partition order.
    pub async fn write_selected(&mut self, rows: &Selection) -> Result<(), SinkError> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let rows = rows
            .without_unchosen_nulls()
            .map_err(|source| SinkError::Arrow {
                table: self.label.clone(),
                source,
            })?;
        let batch = self.conform(rows.batch())?;
        let groups = self
            .splitter
            .groups(&batch, rows.keep())
            .map_err(|e| SinkError::iceberg(&self.label, e))?;
        self.buffered
            .push(batch, groups)
            .map_err(|source| SinkError::Arrow {
                table: self.label.clone(),
                source,
            })
    }

    /// Writes the rows taken since the last commit into data files and commits them in one
    /// snapshot whose offsets and checkpoints `decide` derives from the exact table state the
    /// snapshot lands on. When another writer committed first, the table is reloaded and
    /// `decide` asked again; when `decide` finds that partitions moved on, nothing is committed
    /// ([`SinkError::Fenced`]) and the files are kept for [`Self::discard`].
    pub async fn commit(
        &mut self,
        decide: impl FnMut(&TableState) -> Result<SnapshotContent, Fenced>,
    ) -> Result<CommitStats, SinkError> {
        self.commit_with(decide, &[]).await.map(|(stats, _)| stats)
    }

    /// [`Self::commit`], with other writers' shares landed in the same snapshot: each one whose
    /// claim holds on the state that `decide` and the shares before it leave. Their outcomes
    /// come back in their order. With no rows of its own and no share that holds, nothing is
    /// committed.
    pub async fn commit_with(
        &mut self,
        decide: impl FnMut(&TableState) -> Result<SnapshotContent, Fenced>,
        others: &[Share],
    ) -> Result<(CommitStats, Vec<ShareOutcome>), SinkError> {
        let started = Instant::now();
        let writing = || format!("{}: writing the data files", self.label);
        let (written, polls) = cpu::timed(waiting::logged(writing, self.write_files())).await;
        let (files, closes) = written?;
        let (landed, landing_cpu) = cpu::timed(self.land(files, decide, others, Lands::Own)).await;
        let (stats, outcomes) = landed?;
        Ok((
            CommitStats {
                millis: started.elapsed().as_millis(),
                files_cpu: polls + closes,
                landing_cpu,
                ..stats
            },
            outcomes,
        ))
    }

    /// Writes the rows taken since the last commit into data files for a committer to land
    /// with `claim` ([`Self::commit_with`]); the rows are then no longer held here.
    pub async fn share(&mut self, claim: Claim) -> Result<Share, SinkError> {
        let writing = || format!("{}: writing the data files", self.label);
        let (files, _) = waiting::logged(writing, self.write_files()).await?;
        self.buffered = BufferedRows::default();
        Ok(Share { files, claim })
    }

    /// Lands other writers' shares alone, in one snapshot that moves nothing of this writer's
    /// own: each lands where its claim holds on the state the ones before it leave. The rows this
    /// writer took since its last commit stay taken. With no share that holds, nothing is
    /// committed.
    pub async fn land_shares(
        &mut self,
        shares: &[Share],
    ) -> Result<(CommitStats, Vec<ShareOutcome>), SinkError> {
        self.land_alone(shares, Lands::Others).await
    }

    /// Lands a share of this writer's own that no committer answered for, as a committer would
    /// (the snapshot does not count it among other writers' shares).
    pub async fn land_own_share(&mut self, share: &Share) -> Result<ShareOutcome, SinkError> {
        let (_, outcomes) = self
            .land_alone(std::slice::from_ref(share), Lands::OwnShare)
            .await?;
        outcomes.into_iter().next().ok_or_else(|| {
            SinkError::iceberg(
                &self.label,
                iceberg::Error::new(ErrorKind::Unexpected, "a landing answered no share"),
            )
        })
    }

    async fn land_alone(
        &mut self,
        shares: &[Share],
        lands: Lands,
    ) -> Result<(CommitStats, Vec<ShareOutcome>), SinkError> {
        if shares.is_empty() {
            return Ok((CommitStats::default(), Vec::new()));
        }
        let started = Instant::now();
        let (landed, landing_cpu) = cpu::timed(self.land(
            Vec::new(),
            |state| Ok(SnapshotContent::unchanged(state)),
            shares,
            lands,
        ))
        .await;
        let (stats, outcomes) = landed?;
        Ok((
            CommitStats {
                millis: started.elapsed().as_millis(),
                landing_cpu,
                ..stats
            },
            outcomes,
        ))
    }

    /// A committer landed this writer's share: the table holds its claim (the table state is
    /// loaded again before this writer's next commit of its own).
    pub fn landed_elsewhere(&mut self, claim: &Claim) {
        for (topic, partition, next) in claim.records().iter() {
            self.state.offsets.set(topic, partition, next);
        }
        if let Some(checkpoints) = &claim.checkpoints {
            for (partition, checkpoint) in checkpoints {
                self.state
                    .checkpoints
                    .0
                    .insert(*partition, checkpoint.clone());
            }
        }
        self.others_committing = true;
    }

    /// Deletes the data files of a share that no snapshot took.
    pub async fn delete_share(&self, share: &Share) {
        for file in &share.files {
            if let Err(err) = self.table.file_io().delete(file.file_path()).await {
                tracing::warn!(table = %self.label, file = file.file_path(), "deleting a refused share's file: {err}");
            }
        }
    }

    /// `share` in the form it travels in.
    pub fn encode(&self, share: Share) -> Result<SharedFiles, SinkError> {
        let metadata = self.table.metadata();
        let partition_type = metadata.default_partition_type();
        let files = share
            .files
            .into_iter()
            .map(|file| {
                serialize_data_file_to_json(file, partition_type, metadata.format_version())
            })
            .collect::<iceberg::Result<Vec<String>>>()
            .map_err(|e| SinkError::iceberg(format!("{}: encoding data files", self.label), e))?;
        Ok(SharedFiles {
            files,
            claim: share.claim,
        })
    }

    /// A share another writer sent, read against this table's partition spec and schema.
    pub fn decode(&self, shared: SharedFiles) -> Result<Share, SinkError> {
        let metadata = self.table.metadata();
        let spec = metadata.default_partition_spec();
        let files = shared
            .files
            .iter()
            .map(|text| {
                deserialize_data_file_from_json(
                    text,
                    spec.spec_id(),
                    metadata.default_partition_type(),
                    metadata.current_schema(),
                )
            })
            .collect::<iceberg::Result<Vec<DataFile>>>()
            .map_err(|e| {
                SinkError::iceberg(format!("{}: reading shared data files", self.label), e)
            })?;
        Ok(Share {
            files,
            claim: shared.claim,
        })
    }

    /// Commits `files` and the shares whose claims hold in one snapshot, as
    /// [`Self::commit_with`] says.
    async fn land(
        &mut self,
        files: Vec<DataFile>,
        mut decide: impl FnMut(&TableState) -> Result<SnapshotContent, Fenced>,
        others: &[Share],
        lands: Lands,
    ) -> Result<(CommitStats, Vec<ShareOutcome>), SinkError> {
        let own_files = files.len();
        let mut moved = false;
        if self.others_committing {
            let known = self.table.metadata_location().map(str::to_string);
            self.refresh().await?;
            moved = self.table.metadata_location() != known.as_deref();
        }
        let mut base = self.table.clone();
        let mut state = self.state.clone();
        let mut conflicts = 0;
        let (landed, outcomes, replaced) = loop {
            let mut content = match decide(&state) {
                Ok(content) => content,
                Err(fenced) => {
                    // The rows are in these files now, which `discard` deletes.
                    self.buffered = BufferedRows::default();
                    self.fenced_files = files;
                    self.table = base;
                    self.state = state;
                    return Err(SinkError::Fenced {
                        table: self.label.clone(),
                        source: fenced,
                    });
                }
            };
            let moves_nothing_itself = content.offsets == state.offsets && content.jumps.is_empty();
            let mut added = files.clone();
            let mut outcomes = Vec::with_capacity(others.len());
            let mut replaced = Vec::new();
            for share in others {
                match share.claim.apply(&mut content, &state.checkpoints) {
                    Ok(files) => {
                        replaced.extend(files);
                        added.extend(share.files.iter().cloned());
                        outcomes.push(None);
                    }
                    Err(fenced) => outcomes.push(Some(fenced)),
                }
            }
            if !others.is_empty()
                && added.is_empty()
                && moves_nothing_itself
                && outcomes.iter().all(Option::is_some)
            {
                // Nothing of its own and no share that holds: no snapshot to make.
                break (None, outcomes, replaced);
            }
            let mut properties = HashMap::from([
                (summary::OFFSETS.to_string(), content.offsets.to_json()),
                (summary::PIPELINE.to_string(), self.pipeline.clone()),
            ]);
            if !content.jumps.is_empty() {
                properties.insert(summary::OFFSET_JUMPS.to_string(), content.jumps.to_json());
            }
            let shares = outcomes.iter().filter(|o| o.is_none()).count();
            if shares > 0 && lands != Lands::OwnShare {
                properties.insert(summary::SHARES.to_string(), shares.to_string());
            }
            if let Some(checkpoints) = &content.checkpoints {
                properties.insert(summary::CHECKPOINT.to_string(), checkpoints.to_json());
                let watermark = serde_json::to_string(&checkpoints.watermark()).unwrap_or_default();
                properties.insert(summary::WATERMARK.to_string(), watermark);
            }
            let tx = Transaction::new(&base);
            let action = tx
                .fast_append()
                // File names carry a fresh UUID, so the duplicate check (which reads every
                // manifest of the table on each commit) can only cost time.
                .with_check_duplicate(false)
                .add_data_files(added)
                .set_snapshot_properties(properties);
            let tx = action
                .apply(tx)
                .map_err(|e| SinkError::iceberg(&self.label, e))?;
            let pinned = PinnedCatalog::new(self.catalog.clone(), base.clone());
            let committing = || format!("{}: committing", self.label);
            match waiting::logged(committing, tx.commit(&pinned)).await {
                Ok(table) => {
                    self.state = TableState {
                        offsets: content.offsets,
                        checkpoints: content.checkpoints.unwrap_or(state.checkpoints),
                    };
                    self.table = table;
                    break (Some(()), outcomes, replaced);
                }
                Err(error) if is_conflict(&error) && conflicts + 1 < MAX_COMMIT_ATTEMPTS => {
                    conflicts += 1;
                    tracing::debug!(table = %self.label, conflicts, "another writer committed first: deciding again on the new table state");
                    base = self
                        .catalog
                        .load_table(base.identifier())
                        .await
                        .map_err(|e| SinkError::iceberg(format!("reloading {}", self.label), e))?;
                    state = read_state(&base, &self.pipeline, &self.label)?;
                }
                // The snapshot is built on the base's manifest list before anything is sent to
                // the catalog; maintenance may have expired the base (and deleted its files)
                // since this runner loaded it, when other writers committed many times since.
                // That is a table that moved on, as in a conflict: decide again on its state.
                Err(error)
                    if error.kind() == ErrorKind::DataInvalid
                        && conflicts + 1 < MAX_COMMIT_ATTEMPTS =>
                {
                    let current = self
                        .catalog
                        .load_table(base.identifier())
                        .await
                        .map_err(|e| SinkError::iceberg(format!("reloading {}", self.label), e))?;
                    if current.metadata_location() == base.metadata_location() {
                        return Err(SinkError::iceberg(
                            format!("committing to {}", self.label),
                            error,
                        ));
                    }
                    conflicts += 1;
                    tracing::debug!(table = %self.label, conflicts, "the table moved on and its old state was expired: deciding again on the new table state");
                    state = read_state(&current, &self.pipeline, &self.label)?;
                    base = current;
                }
                Err(error) => {
                    // The files are left where they are: when the catalog failed after taking
                    // the commit, a snapshot references them now.
                    return Err(SinkError::iceberg(
                        format!("committing to {}", self.label),
                        error,
                    ));
                }
            }
        };
        self.others_committing = moved || conflicts > 0;
        let snapshot_id = landed.and(self.table.metadata().current_snapshot_id());
        if landed.is_some() {
            // The other writers' checkpoints this snapshot replaced: no snapshot to come points
            // to them (the committer's own are its caller's to delete).
            for file in replaced {
                super::checkpoint::remove(self, &file).await;
            }
        }
        let outcomes: Vec<ShareOutcome> = outcomes
            .into_iter()
            .map(|fenced| match fenced {
                None => ShareOutcome::Landed { snapshot_id },
                Some(fenced) => ShareOutcome::Fenced(fenced),
            })
            .collect();
        let rows = match lands {
            Lands::Own => std::mem::take(&mut self.buffered).rows(),
            Lands::Others | Lands::OwnShare => others
                .iter()
                .zip(&outcomes)
                .filter(|(_, outcome)| matches!(outcome, ShareOutcome::Landed { .. }))
                .flat_map(|(share, _)| share.files.iter().map(|f| f.record_count()))
                .sum(),
        };
        Ok((
            CommitStats {
                rows,
                files: own_files,
                snapshot_id,
                conflicts,
                ..CommitStats::default()
            },
            outcomes,
        ))
    }

    /// Drops the rows written since the last commit (their partitions moved to another runner
    /// or were moved on by one), and deletes the files of a fenced commit, never committed.
    pub async fn discard(&mut self) -> u64 {
        let files = std::mem::take(&mut self.fenced_files);
        let rows = files.iter().map(|f| f.record_count()).sum::<u64>() + self.abandon();
        for file in files {
            if let Err(err) = self.table.file_io().delete(file.file_path()).await {
                tracing::warn!(table = %self.label, file = file.file_path(), "deleting a discarded file: {err}");
            }
        }
        rows
    }

    /// Forgets the rows written since the last commit without touching the object store.
    pub fn abandon(&mut self) -> u64 {
        std::mem::take(&mut self.buffered).rows()
    }

    /// Encodes the buffered rows into data files, one partition at a time, so that only one
    /// file's Parquet writer is being filled at any moment (and at most [`CLOSING_AT_ONCE`]
    /// more are closing).
    /// Returns the files with the CPU time their closing took on other tasks.
    async fn write_files(&self) -> Result<(Vec<DataFile>, Duration), SinkError> {
        let builder = self.file_writer_builder()?;
        let iceberg_err = |e| SinkError::iceberg(&self.label, e);
        let mut files = Vec::new();
        let mut closes = Duration::ZERO;
        // Closing a file writes it out and syncs it to disk: time spent waiting, not computing.
        // So the next partition is encoded while the last ones close, a few at once.
        let mut closing = JoinSet::new();
        for (value, chunks) in self.buffered.partitions() {
            let mut writer = builder
                .build(Some(self.splitter.key(value.clone())))
                .await
                .map_err(iceberg_err)?;
            for rows in chunks {
                let rows = rows.map_err(|source| SinkError::Arrow {
                    table: self.label.clone(),
                    source,
                })?;
                writer.write(rows).await.map_err(iceberg_err)?;
            }
            if closing.len() >= CLOSING_AT_ONCE {
                if let Some(ended) = closing.join_next().await {
                    files.extend(self.closed(ended, &mut closes)?);
                }
            }
            closing.spawn(cpu::timed(async move { writer.close().await }));
        }
        while let Some(ended) = closing.join_next().await {
            files.extend(self.closed(ended, &mut closes)?);
        }
        Ok((files, closes))
    }

    /// The files of a writer whose close ended.
    fn closed(
        &self,
        ended: Result<(iceberg::Result<Vec<DataFile>>, Duration), JoinError>,
        closes: &mut Duration,
    ) -> Result<Vec<DataFile>, SinkError> {
        match ended {
            Ok((closed, spent)) => {
                *closes += spent;
                closed.map_err(|e| SinkError::iceberg(&self.label, e))
            }
            Err(failed) => Err(SinkError::iceberg(
                &self.label,
                iceberg::Error::new(ErrorKind::Unexpected, "closing a data file")
                    .with_source(failed),
            )),
        }
    }

    fn file_writer_builder(&self) -> Result<FileWriterBuilder, SinkError> {
        let metadata = self.table.metadata();
        let properties =
            commit_file_properties(metadata.properties(), self.file_codec).map_err(|source| {
                SinkError::Property {
                    table: self.label.clone(),
                    source,
                }
            })?;
        let parquet = ParquetWriterBuilder::new(properties, metadata.current_schema().clone());
        let location = DefaultLocationGenerator::new(metadata)
            .map_err(|e| SinkError::iceberg(&self.label, e))?;
        // A fresh prefix per commit: a crash may leave uncommitted files behind, and a restart
        // must never overwrite them while they could still be referenced.
        let names = DefaultFileNameGenerator::new(
            uuid::Uuid::now_v7().to_string(),
            None,
            DataFileFormat::Parquet,
        );
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            TARGET_FILE_SIZE,
            self.table.file_io().clone(),
            location,
            names,
        );
        Ok(DataFileWriterBuilder::new(rolling))
    }

    /// The batch in the table's Arrow schema: columns by name, cast to the table's types, and
    /// null where the SQL does not return a table column.
    fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch, SinkError> {
        let columns = self
            .arrow_schema
            .fields()
            .iter()
            .map(|field| match batch.column_by_name(field.name()) {
                Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
                Some(column) => {
                    cast(column, field.data_type()).map_err(|source| SinkError::Conform {
                        table: self.label.clone(),
                        column: field.name().clone(),
                        data_type: field.data_type().to_string(),
                        source,
                    })
                }
                None => Ok(new_null_array(field.data_type(), batch.num_rows())),
            })
            .collect::<Result<Vec<ArrayRef>, SinkError>>()?;
        RecordBatch::try_new(self.arrow_schema.clone(), columns).map_err(|source| {
            SinkError::Arrow {
                table: self.label.clone(),
                source,
            }
        })
    }
}

/// The Parquet settings of the files compaction writes: the table's codec and metrics modes.
pub fn parquet_properties(
    table_properties: &HashMap<String, String>,
) -> Result<WriterProperties, TablePropertyError> {
    writer_properties(compression(table_properties)?, table_properties)
}

/// The Parquet settings of the files a commit writes: `codec`, or the table's for
/// [`FileCodec::Table`], and the table's metrics modes.
pub fn commit_file_properties(
    table_properties: &HashMap<String, String>,
    codec: FileCodec,
) -> Result<WriterProperties, TablePropertyError> {
    let compression = match codec {
        FileCodec::Table => compression(table_properties)?,
        FileCodec::Snappy => Compression::SNAPPY,
        FileCodec::Zstd => Compression::ZSTD(ZstdLevel::default()),
        FileCodec::Lz4 => Compression::LZ4_RAW,
        FileCodec::Uncompressed => Compression::UNCOMPRESSED,
    };
    writer_properties(compression, table_properties)
}

fn writer_properties(
    compression: Compression,
    table_properties: &HashMap<String, String>,
) -> Result<WriterProperties, TablePropertyError> {
    let mut builder = WriterProperties::builder()
        .set_compression(compression)
        // A column's dictionary grows until its page passes this size, then the column falls
        // back to plain encoding. Identifiers (a new value per event) paid for hashing every
        // value into a dictionary that could never help until it reached the default 1 MiB;
        // columns of few values (campaign, event type, country) keep theirs far below 64 KiB.
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_LIMIT);
    let metrics = MetricsModes::of(table_properties)?;
    if let Some(mode) = metrics.default {
        builder = builder.set_statistics_enabled(mode.statistics());
    }
    for (column, mode) in metrics.columns {
        builder = builder.set_column_statistics_enabled(column_path(column), mode.statistics());
    }
    Ok(builder.build())
}

/// Whether the writer can follow `properties` (the codec, its level and the metrics modes), for
/// the properties a configuration gives a table before it exists.
pub fn check_table_properties(
    properties: &std::collections::BTreeMap<String, String>,
) -> Result<(), TablePropertyError> {
    let properties: HashMap<String, String> = properties.clone().into_iter().collect();
    parquet_properties(&properties).map(|_| ())
}

/// The Parquet path of a column as Iceberg's properties name it (`a.b` for a nested field).
fn column_path(name: &str) -> ColumnPath {
    ColumnPath::new(name.split('.').map(str::to_string).collect())
}

/// The table property naming the data files' codec (Iceberg's name for it).
pub const CODEC_PROPERTY: &str = "write.parquet.compression-codec";
/// The table property setting the codec's level.
pub const LEVEL_PROPERTY: &str = "write.parquet.compression-level";
/// The table property setting what data files record about each column (Iceberg's name).
pub const METRICS_DEFAULT_PROPERTY: &str = "write.metadata.metrics.default";
/// The prefix of the table properties setting what data files record about one column.
pub const METRICS_COLUMN_PREFIX: &str = "write.metadata.metrics.column.";

/// The table property that sets `column`'s metrics mode.
pub fn column_metrics_property(column: &str) -> String {
    format!("{METRICS_COLUMN_PREFIX}{column}")
}

/// What a data file's entry in the manifest records about a column, as Iceberg's metrics modes
/// name it. Engines skip files by these bounds; a column whose values are random (an event's
/// id) or the file's partition value gains nothing from them, and the writer spends two
/// comparisons per value on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsMode {
    /// Neither bounds nor null counts.
    None,
    /// Value and null counts. The writer keeps the column's Parquet statistics whole for it:
    /// they carry the null counts, and the bounds come with them.
    Counts,
    /// Counts and bounds, the bounds of strings cut to this many characters by Java writers;
    /// this writer records them in full.
    Truncate(u32),
    /// Counts and bounds in full.
    Full,
}

impl MetricsMode {
    /// Parses Iceberg's spelling: `none`, `counts`, `truncate(16)`, `full`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        match text.as_str() {
            "none" => Some(Self::None),
            "counts" => Some(Self::Counts),
            "full" => Some(Self::Full),
            _ => text
                .strip_prefix("truncate(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|length| length.trim().parse::<u32>().ok())
                .filter(|length| *length > 0)
                .map(Self::Truncate),
        }
    }

    /// The Parquet statistics that give the data file's entry what this mode asks for.
    fn statistics(self) -> EnabledStatistics {
        match self {
            Self::None => EnabledStatistics::None,
            Self::Counts | Self::Truncate(_) | Self::Full => EnabledStatistics::Page,
        }
    }
}

/// A table's metrics properties.
struct MetricsModes<'a> {
    /// `write.metadata.metrics.default`, when set.
    default: Option<MetricsMode>,
    /// Each column named by a `write.metadata.metrics.column.*` property.
    columns: Vec<(&'a str, MetricsMode)>,
}

impl<'a> MetricsModes<'a> {
    fn of(properties: &'a HashMap<String, String>) -> Result<Self, TablePropertyError> {
        let mode = |key: &str, text: &String| {
            MetricsMode::parse(text).ok_or_else(|| TablePropertyError {
                key: key.to_string(),
                value: text.clone(),
                reason: "not a metrics mode (none, counts, truncate(N), full)".into(),
            })
        };
        let default = properties
            .get(METRICS_DEFAULT_PROPERTY)
            .map(|text| mode(METRICS_DEFAULT_PROPERTY, text))
            .transpose()?;
        let mut columns = Vec::new();
        for (key, text) in properties {
            if let Some(column) = key.strip_prefix(METRICS_COLUMN_PREFIX) {
                columns.push((column, mode(key, text)?));
            }
        }
        Ok(Self { default, columns })
    }
}

/// A table property the writer cannot follow.
#[derive(Debug, thiserror::Error)]
#[error("table property {key} = {value:?}: {reason}")]
pub struct TablePropertyError {
    /// The property's name.
    pub key: String,
    /// Its value in the table's metadata.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The codec the table's properties ask for, as every Iceberg writer reads them: zstd when
/// unset (Iceberg's default), so another engine's `ALTER TABLE … SET TBLPROPERTIES` applies here too.
fn compression(properties: &HashMap<String, String>) -> Result<Compression, TablePropertyError> {
    let codec = properties
        .get(CODEC_PROPERTY)
        .map_or("zstd", String::as_str);
    let level = match properties.get(LEVEL_PROPERTY) {
        None => None,
        Some(text) => Some(text.trim().parse::<i32>().map_err(|e| TablePropertyError {
            key: LEVEL_PROPERTY.to_string(),
            value: text.clone(),
            reason: e.to_string(),
        })?),
    };
    let level_error = |e: parquet::errors::ParquetError| TablePropertyError {
        key: LEVEL_PROPERTY.to_string(),
        value: level.map(|l| l.to_string()).unwrap_or_default(),
        reason: format!("not a level of {codec}: {e}"),
    };
    Ok(match codec.to_ascii_lowercase().as_str() {
        "zstd" => Compression::ZSTD(match level {
            Some(level) => ZstdLevel::try_new(level).map_err(level_error)?,
            None => ZstdLevel::default(),
        }),
        "gzip" => Compression::GZIP(match level {
            Some(level) => {
                GzipLevel::try_new(u32::try_from(level).unwrap_or(u32::MAX)).map_err(level_error)?
            }
            None => GzipLevel::default(),
        }),
        "brotli" => Compression::BROTLI(match level {
            Some(level) => BrotliLevel::try_new(u32::try_from(level).unwrap_or(u32::MAX))
                .map_err(level_error)?,
            None => BrotliLevel::default(),
        }),
        "snappy" => Compression::SNAPPY,
        // Parquet's LZ4 without Hadoop's framing: what current readers expect of "lz4".
        "lz4" => Compression::LZ4_RAW,
        "uncompressed" | "none" => Compression::UNCOMPRESSED,
        _ => {
            return Err(TablePropertyError {
                key: CODEC_PROPERTY.to_string(),
                value: codec.to_string(),
                reason:
                    "not a codec this writer has (zstd, gzip, brotli, snappy, lz4, uncompressed)"
                        .into(),
            })
        }
    })
}

/// Data files of one commit closing at the same time. Each holds its encoded bytes and its
/// column encoders until it is closed; four overlap the disk's syncs with the next partition's
/// encoding while adding only a few megabytes to the commit's memory.
const CLOSING_AT_ONCE: usize = 4;

/// Largest dictionary page a column keeps before it falls back to plain encoding.
const DICTIONARY_PAGE_LIMIT: usize = 64 * 1024;

/// `pipeline`'s offsets and checkpoints in `table`: from the newest of its snapshots that
/// carries them (each commit records the full maps), walking the ancestry from the current.
pub fn read_state(table: &Table, pipeline: &str, label: &str) -> Result<TableState, SinkError> {
    let metadata = table.metadata();
    let mut offsets = None;
    let mut checkpoints = None;
    let mut next = metadata.current_snapshot().cloned();
    while let Some(snapshot) = next {
        if offsets.is_some() && checkpoints.is_some() {
            break;
        }
        let properties = &snapshot.summary().additional_properties;
        if properties.get(summary::PIPELINE).map(String::as_str) == Some(pipeline) {
            let unreadable = |key: &'static str, text: &str, source| SinkError::Summary {
                table: label.to_string(),
                snapshot: snapshot.snapshot_id(),
                key,
                text: text.to_string(),
                source,
            };
            if let (None, Some(text)) = (&offsets, properties.get(summary::OFFSETS)) {
                offsets = Some(
                    Offsets::from_json(text).map_err(|e| unreadable(summary::OFFSETS, text, e))?,
                );
            }
            if let (None, Some(text)) = (&checkpoints, properties.get(summary::CHECKPOINT)) {
                checkpoints = Some(Checkpoints::from_json(text).map_err(|e| {
                    let mut error = unreadable(summary::CHECKPOINT, text, e);
                    if !text.starts_with('{') {
                        error = SinkError::Schema {
                            table: label.to_string(),
                            message: format!(
                                "the newest snapshot keeps one window-state checkpoint for \
                                 the whole pipeline ({text}), written before state was kept \
                                 per source partition: finish its open windows with the \
                                 previous version (`run --until-caught-up \
                                 --flush-open-windows`) before upgrading"
                            ),
                        };
                    }
                    error
                })?);
            }
        }
        next = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id).cloned());
    }
    Ok(TableState {
        offsets: offsets.unwrap_or_default(),
        checkpoints: checkpoints.unwrap_or_default(),
    })
}

/// What `namespace.name` holds for `pipeline` now, loaded through the catalog.
pub async fn load_state(
    catalog: &dyn Catalog,
    namespace: &str,
    name: &str,
    pipeline: &str,
) -> Result<TableState, SinkError> {
    let table = load_table(catalog, namespace, name).await?;
    read_state(&table, pipeline, &format!("{namespace}.{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec_of(properties: &WriterProperties) -> Compression {
        properties.compression(&ColumnPath::from("event_id"))
    }

    #[test]
    fn a_commits_files_take_the_file_codec_and_compaction_the_tables() {
        let table: HashMap<String, String> =
            [(CODEC_PROPERTY.to_string(), "gzip".to_string())].into();
        let commit = |codec| codec_of(&commit_file_properties(&table, codec).unwrap());
        assert_eq!(commit(FileCodec::Snappy), Compression::SNAPPY);
        assert_eq!(commit(FileCodec::Lz4), Compression::LZ4_RAW);
        assert_eq!(commit(FileCodec::Uncompressed), Compression::UNCOMPRESSED);
        assert!(matches!(commit(FileCodec::Zstd), Compression::ZSTD(_)));
        assert!(matches!(commit(FileCodec::Table), Compression::GZIP(_)));
        assert!(matches!(
            codec_of(&parquet_properties(&table).unwrap()),
            Compression::GZIP(_)
        ));
        // A codec the table names but the writer lacks fails where it is followed.
        let unknown: HashMap<String, String> =
            [(CODEC_PROPERTY.to_string(), "lzo".to_string())].into();
        assert!(parquet_properties(&unknown).is_err());
        assert!(commit_file_properties(&unknown, FileCodec::Table).is_err());
        assert!(commit_file_properties(&unknown, FileCodec::Snappy).is_ok());
    }

    #[test]
    fn a_column_whose_metrics_mode_is_none_gets_no_statistics() {
        let statistics = |properties: &[(&str, &str)], column: &str| {
            let table: HashMap<String, String> = properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let written = commit_file_properties(&table, FileCodec::Uncompressed).unwrap();
            let compacted = parquet_properties(&table).unwrap();
            let path = ColumnPath::from(column);
            assert_eq!(
                written.statistics_enabled(&path),
                compacted.statistics_enabled(&path)
            );
            written.statistics_enabled(&path)
        };
        let id_none = column_metrics_property("event_id");
        let with_id_none = [(id_none.as_str(), "none")];
        // The default applies to every column a column property does not name.
        let default_none = [
            (METRICS_DEFAULT_PROPERTY, " None "),
            (id_none.as_str(), "truncate(16)"),
        ];
        let none = EnabledStatistics::None;
        let page = EnabledStatistics::Page;
        for (properties, column, expected) in [
            (&with_id_none[..], "event_id", none),
            (&with_id_none[..], "timestamp", page),
            (&[][..], "event_id", page),
            (&default_none[..], "user_id", none),
            (&default_none[..], "event_id", page),
        ] {
            assert_eq!(
                statistics(properties, column),
                expected,
                "{properties:?} {column}"
            );
        }
        for mode in ["counts", "full", "truncate( 8 )"] {
            assert_eq!(
                statistics(&[(id_none.as_str(), mode)], "event_id"),
                EnabledStatistics::Page,
                "{mode}"
            );
        }
    }

    #[test]
    fn a_metrics_mode_the_writer_does_not_know_names_its_property() {
        for bad in ["truncate(0)", "truncate(x)", "truncate", "bounds", ""] {
            let table: HashMap<String, String> =
                [(column_metrics_property("user_id"), bad.to_string())].into();
            let error = commit_file_properties(&table, FileCodec::Table).unwrap_err();
            assert_eq!(error.key, "write.metadata.metrics.column.user_id", "{bad}");
            assert_eq!(error.value, bad);
            assert!(parquet_properties(&table).is_err(), "{bad}");
        }
        let table: HashMap<String, String> =
            [(METRICS_DEFAULT_PROPERTY.to_string(), "most".to_string())].into();
        assert_eq!(
            parquet_properties(&table).unwrap_err().key,
            METRICS_DEFAULT_PROPERTY
        );
    }
}
