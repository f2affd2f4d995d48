//! Window-state checkpoints kept in the metrics table's folder and pointed to by its snapshots.
//!
//! A checkpoint is named after the snapshot it follows, so a runner that dies between writing a
//! checkpoint and committing overwrites that same file on its next attempt instead of leaving
//! an orphan per crash. Once a newer snapshot points elsewhere, the older file is deleted.

use bytes::Bytes;

use super::iceberg::TableWriter;
use super::SinkError;

/// Snapshot summary key: location of the open-window state checkpoint.
pub const CHECKPOINT_PROPERTY: &str = "campaign-pipeline.checkpoint";
/// Snapshot summary key: the watermark and highest event time per partition (JSON).
pub const PROGRESS_PROPERTY: &str = "campaign-pipeline.watermark";

/// What the newest snapshot of a pipeline says about its window state.
#[derive(Debug, Clone, Default)]
pub struct SavedState {
    /// Where the checkpoint lives.
    pub location: Option<String>,
    /// Checkpoint contents (Arrow IPC), when the snapshot points to one.
    pub state: Option<Vec<u8>>,
    /// The progress JSON stored beside it.
    pub progress: Option<String>,
}

/// Reads the newest checkpoint of the writer's pipeline and deletes the ones older snapshots
/// pointed to that a crash may have left behind.
pub async fn load(writer: &TableWriter) -> Result<SavedState, SinkError> {
    let mut paths = writer.snapshot_property(CHECKPOINT_PROPERTY).into_iter();
    let progress = writer
        .snapshot_property(PROGRESS_PROPERTY)
        .into_iter()
        .next();
    let Some(current) = paths.next() else {
        return Ok(SavedState {
            location: None,
            state: None,
            progress,
        });
    };
    // Each commit deletes its predecessor's file, so at most the one before can remain.
    if let Some(previous) = paths.next().filter(|p| *p != current) {
        remove(writer, &previous).await;
    }
    let bytes = writer
        .file_io()
        .new_input(&current)
        .map_err(|e| SinkError::iceberg(format!("checkpoint {current}"), e))?
        .read()
        .await
        .map_err(|e| {
            SinkError::iceberg(
                format!(
                    "reading the window state checkpoint {current} that table {}'s newest \
                     snapshot points to",
                    writer.label()
                ),
                e,
            )
        })?;
    Ok(SavedState {
        location: Some(current),
        state: Some(bytes.to_vec()),
        progress,
    })
}

/// Writes a checkpoint for the next commit and returns its location.
pub async fn save(writer: &TableWriter, state: Vec<u8>) -> Result<String, SinkError> {
    let after = writer
        .current_snapshot_id()
        .map_or_else(|| "start".to_string(), |id| id.to_string());
    let pipeline: String = writer
        .pipeline()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = format!(
        "{}/checkpoints/{pipeline}-after-{after}.arrow",
        writer.location().trim_end_matches('/')
    );
    writer
        .file_io()
        .new_output(&path)
        .map_err(|e| SinkError::iceberg(format!("checkpoint {path}"), e))?
        .write(Bytes::from(state))
        .await
        .map_err(|e| SinkError::iceberg(format!("writing checkpoint {path}"), e))?;
    Ok(path)
}

/// Deletes a checkpoint no snapshot needs any more; failure only costs disk space.
pub async fn remove(writer: &TableWriter, path: &str) {
    if let Err(err) = writer.file_io().delete(path).await {
        tracing::warn!(
            checkpoint = path,
            "could not delete an old checkpoint: {err}"
        );
    }
}
