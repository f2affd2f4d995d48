//! The events branch: parsed valid rows → campaign_events table, committed with the offsets
//! that [`Progress`] decides against the table state each commit lands on.

use std::sync::Arc;

use iceberg::Catalog;

use super::progress::{Progress, TableRole};
use super::{Landing, PipelineError};
use crate::common::{Offsets, Selection};
use crate::config::PipelineConfig;
use crate::sink::iceberg::{Share, SnapshotContent, TableWriter};
use crate::sink::SinkError;

/// The events table and the rows written to it since the last commit.
pub struct EventsBranch {
    writer: TableWriter,
    pipeline: String,
}

impl EventsBranch {
    /// Opens (and if needed evolves) the events table for the parsing SQL's output.
    pub async fn open(
        pipeline: &PipelineConfig,
        catalog: Arc<dyn Catalog>,
        parse_output: &arrow::datatypes::Schema,
    ) -> Result<Self, PipelineError> {
        let writer = TableWriter::open(
            catalog,
            &pipeline.sink.namespace,
            &pipeline.sink.events_table.name,
            &pipeline.name,
            parse_output,
        )
        .await
        .map_err(|source| PipelineError::Sink {
            pipeline: pipeline.name.clone(),
            source,
        })?
        .with_file_codec(pipeline.sink.file_codec);
        Ok(Self {
            writer,
            pipeline: pipeline.name.clone(),
        })
    }

    /// `namespace.table` of the events table.
    pub fn label(&self) -> &str {
        self.writer.label()
    }

    /// The offsets the table holds, as last loaded or committed.
    pub fn offsets(&self) -> &Offsets {
        &self.writer.state().offsets
    }

    /// Loads the table's newest state (another runner may have moved it on).
    pub async fn refresh(&mut self) -> Result<Offsets, PipelineError> {
        match self.writer.refresh().await {
            Ok(state) => Ok(state.offsets.clone()),
            Err(e) => Err(self.sink_err(e)),
        }
    }

    /// Writes the valid rows of a micro-batch that the table does not hold yet (`absorbed`:
    /// where it holds rows the source hands on again).
    pub async fn take(
        &mut self,
        valid: &Selection,
        absorbed: &Offsets,
    ) -> Result<(), PipelineError> {
        let rows =
            super::unabsorbed_selection(valid, absorbed).map_err(|e| PipelineError::Sink {
                pipeline: self.pipeline.clone(),
                source: SinkError::Arrow {
                    table: self.writer.label().to_string(),
                    source: e,
                },
            })?;
        self.writer
            .write_selected(&rows)
            .await
            .map_err(|e| self.sink_err(e))
    }

    /// Rows written since the last commit.
    pub fn buffered_rows(&self) -> u64 {
        self.writer.buffered_rows()
    }

    /// Commits the rows written since the last commit, with the offsets `progress` decides on
    /// the table state the commit lands on.
    pub async fn commit(&mut self, progress: &mut Progress) -> Result<Landing, PipelineError> {
        let decided = self
            .writer
            .commit(|state| {
                Ok(SnapshotContent {
                    offsets: progress.decide(TableRole::Events, &state.offsets)?,
                    checkpoints: None,
                    jumps: progress.jumps(TableRole::Events),
                })
            })
            .await;
        match decided {
            Ok(stats) => {
                progress.committed(TableRole::Events, &self.writer.state().offsets);
                Ok(Landing::Committed(stats))
            }
            Err(SinkError::Fenced { source, .. }) => Ok(Landing::Fenced(source)),
            Err(other) => Err(self.sink_err(other)),
        }
    }

    /// Writes the rows taken since the last commit into data files for the committer, with
    /// this runner's claim on the table.
    pub async fn share(&mut self, progress: &Progress) -> Result<Share, PipelineError> {
        let claim = progress.claim(TableRole::Events);
        self.writer.share(claim).await.map_err(|e| self.sink_err(e))
    }

    /// The committer landed this runner's share: its partitions stand where the claim said.
    pub fn landed_elsewhere(&mut self, progress: &mut Progress, share: &Share) {
        progress.committed(TableRole::Events, &share.claim.records());
        self.writer.landed_elsewhere(&share.claim);
    }

    /// Deletes the files of a share that no snapshot took.
    pub async fn delete_share(&self, share: &Share) {
        self.writer.delete_share(share).await;
    }

    /// The table's writer (shares are encoded, decoded and landed on it).
    pub fn writer(&mut self) -> &mut TableWriter {
        &mut self.writer
    }

    /// Drops the rows written since the last commit.
    pub async fn discard(&mut self) -> u64 {
        self.writer.discard().await
    }

    /// Forgets the rows written since the last commit without touching the object store.
    pub fn abandon(&mut self) -> u64 {
        self.writer.abandon()
    }

    fn sink_err(&self, source: SinkError) -> PipelineError {
        PipelineError::Sink {
            pipeline: self.pipeline.clone(),
            source,
        }
    }
}
