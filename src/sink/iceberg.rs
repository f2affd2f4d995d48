//! Writing a SQL stage's output to an Iceberg table: Parquet files fanned out by the partition
//! spec, committed with `fast_append` and the absorbed Kafka offsets in the snapshot summary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{new_null_array, ArrayRef};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::Catalog;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::evolve::columns_to_add;
use super::partition::PartitionSplitter;
use super::table::load_table;
use super::SinkError;
use crate::common::Offsets;

/// Snapshot summary key: the next Kafka offset per topic partition the table has absorbed.
pub const OFFSETS_PROPERTY: &str = "campaign-pipeline.offsets";
/// Snapshot summary key: the pipeline that made the snapshot.
pub const PIPELINE_PROPERTY: &str = "campaign-pipeline.pipeline";

/// Target size of one data file before it rolls over.
const TARGET_FILE_SIZE: usize = 128 * 1024 * 1024;

type Writer = FanoutWriter<
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>,
>;

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
}

/// An open Iceberg table being appended to by one pipeline.
pub struct TableWriter {
    catalog: Arc<dyn Catalog>,
    table: Table,
    label: String,
    pipeline: String,
    arrow_schema: SchemaRef,
    splitter: PartitionSplitter,
    writer: Option<Writer>,
    buffered_rows: u64,
    /// The offsets the table holds: read at open, raised by each commit.
    committed: Offsets,
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
            writer: None,
            buffered_rows: 0,
            committed: Offsets::new(),
        };
        writer.committed = writer.read_committed_offsets()?;
        Ok(writer)
    }

    /// `namespace.name`, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The offsets the table has absorbed (as of open and this writer's commits since).
    pub fn committed_offsets(&self) -> &Offsets {
        &self.committed
    }

    /// Per partition, the value in the newest snapshot of this pipeline that mentions it
    /// (walking the snapshot ancestry from the current one).
    fn read_committed_offsets(&self) -> Result<Offsets, SinkError> {
        let mut offsets = Offsets::new();
        for (snapshot_id, text) in self.pipeline_snapshots(OFFSETS_PROPERTY) {
            let found = Offsets::from_json(&text).map_err(|e| SinkError::Schema {
                table: self.label.clone(),
                message: format!("snapshot {snapshot_id} has unreadable offsets {text:?}: {e}"),
            })?;
            offsets.fill_from(&found);
        }
        Ok(offsets)
    }

    /// Values of a snapshot summary property in this pipeline's snapshots, newest first.
    pub fn snapshot_property(&self, key: &str) -> Vec<String> {
        self.pipeline_snapshots(key)
            .into_iter()
            .map(|(_, value)| value)
            .collect()
    }

    /// (snapshot id, value of `key`) for this pipeline's snapshots that carry `key`, walking the
    /// ancestry from the current snapshot (newest first).
    fn pipeline_snapshots(&self, key: &str) -> Vec<(i64, String)> {
        let metadata = self.table.metadata();
        let mut found = Vec::new();
        let mut next = metadata.current_snapshot().cloned();
        while let Some(snapshot) = next {
            let properties = &snapshot.summary().additional_properties;
            if properties.get(PIPELINE_PROPERTY) == Some(&self.pipeline) {
                if let Some(value) = properties.get(key) {
                    found.push((snapshot.snapshot_id(), value.clone()));
                }
            }
            next = snapshot
                .parent_snapshot_id()
                .and_then(|id| metadata.snapshot_by_id(id).cloned());
        }
        found
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
        self.buffered_rows
    }

    /// Writes SQL output rows (columns matched by name, `_` columns ignored) into open data files.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = self.conform(batch)?;
        let parts = self
            .splitter
            .split(&batch)
            .map_err(|e| SinkError::iceberg(&self.label, e))?;
        if self.writer.is_none() {
            self.writer = Some(self.new_writer()?);
        }
        let writer = self.writer.as_mut().ok_or_else(|| SinkError::Schema {
            table: self.label.clone(),
            message: "writer vanished".into(),
        })?;
        for (key, part) in parts {
            writer
                .write(key, part)
                .await
                .map_err(|e| SinkError::iceberg(&self.label, e))?;
        }
        self.buffered_rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes the open data files and commits them in one snapshot carrying `offsets` (the next
    /// offset per partition that this table has now fully absorbed).
    pub async fn commit(&mut self, offsets: &Offsets) -> Result<CommitStats, SinkError> {
        self.commit_with(offsets, Vec::new()).await
    }

    /// Like [`Self::commit`], with more snapshot summary properties.
    pub async fn commit_with(
        &mut self,
        offsets: &Offsets,
        extra: Vec<(String, String)>,
    ) -> Result<CommitStats, SinkError> {
        let started = Instant::now();
        let files: Vec<DataFile> = match self.writer.take() {
            Some(writer) => writer
                .close()
                .await
                .map_err(|e| SinkError::iceberg(&self.label, e))?,
            None => Vec::new(),
        };
        let rows = self.buffered_rows;
        // Where the table is ahead of the source (a crash between the two tables' commits left
        // it there), it keeps its own offsets: recording the source's position would move the
        // table back, and the next start would write those rows again.
        let mut offsets = offsets.clone();
        offsets.advance_all(&self.committed);
        let mut properties = HashMap::from([
            (OFFSETS_PROPERTY.to_string(), offsets.to_json()),
            (PIPELINE_PROPERTY.to_string(), self.pipeline.clone()),
        ]);
        properties.extend(extra);
        let file_count = files.len();
        let tx = Transaction::new(&self.table);
        let action = tx
            .fast_append()
            // File names carry a fresh UUID, so the duplicate check (which reads every
            // manifest of the table on each commit) can only cost time.
            .with_check_duplicate(false)
            .add_data_files(files)
            .set_snapshot_properties(properties);
        let tx = action
            .apply(tx)
            .map_err(|e| SinkError::iceberg(&self.label, e))?;
        self.table = tx
            .commit(self.catalog.as_ref())
            .await
            .map_err(|e| SinkError::iceberg(format!("committing to {}", self.label), e))?;
        self.buffered_rows = 0;
        self.committed = offsets;
        Ok(CommitStats {
            rows,
            files: file_count,
            snapshot_id: self.table.metadata().current_snapshot_id(),
            millis: started.elapsed().as_millis(),
        })
    }

    fn new_writer(&self) -> Result<Writer, SinkError> {
        let metadata = self.table.metadata();
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
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
        Ok(FanoutWriter::new(DataFileWriterBuilder::new(rolling)))
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
                Some(column) => cast(column, field.data_type()).map_err(|e| SinkError::Schema {
                    table: self.label.clone(),
                    message: format!("column `{}`: {e}", field.name()),
                }),
                None => Ok(new_null_array(field.data_type(), batch.num_rows())),
            })
            .collect::<Result<Vec<ArrayRef>, SinkError>>()?;
        RecordBatch::try_new(self.arrow_schema.clone(), columns).map_err(|e| SinkError::Schema {
            table: self.label.clone(),
            message: e.to_string(),
        })
    }
}
