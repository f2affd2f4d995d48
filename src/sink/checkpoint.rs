//! Window-state checkpoints: one Arrow IPC file per source partition, kept in the metrics
//! table's folder (or under `sink.checkpoints`) and pointed to by its snapshots (see
//! [`crate::common::summary::CHECKPOINT`]).
//!
//! Each file has a fresh name, so two runners that briefly both hold a partition never write
//! the same file; once a newer snapshot points elsewhere, the runner that committed it deletes
//! the file it replaced.

use bytes::Bytes;

use super::iceberg::TableWriter;
use super::SinkError;

/// Writes a partition's checkpoint for the next commit, under `base` (default: the table's
/// `checkpoints/` folder), and returns its location.
pub async fn save(
    writer: &TableWriter,
    base: Option<&str>,
    partition: i32,
    state: Vec<u8>,
) -> Result<String, SinkError> {
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
        "{}/{pipeline}-p{partition}-{}.arrow",
        folder(writer, base),
        uuid::Uuid::now_v7()
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

/// The folder checkpoints are written to: `base`, or the table's `checkpoints/` folder.
fn folder(writer: &TableWriter, base: Option<&str>) -> String {
    match base {
        Some(base) => base.trim_end_matches('/').to_string(),
        None => format!("{}/checkpoints", writer.location().trim_end_matches('/')),
    }
}

/// Writes and deletes a small file where checkpoints go, so that a location the runner may not
/// write to is reported before anything is consumed, not at the first commit.
pub async fn probe(writer: &TableWriter, base: Option<&str>) -> Result<(), SinkError> {
    let folder = folder(writer, base);
    crate::catalog::probe_writable(writer.file_io(), &folder)
        .await
        .map_err(|source| SinkError::Checkpoints {
            table: writer.label().to_string(),
            folder,
            source: Box::new(source),
        })
}

/// Reads the checkpoint at `path`.
pub async fn read(writer: &TableWriter, path: &str) -> Result<Vec<u8>, SinkError> {
    let bytes = writer
        .file_io()
        .new_input(path)
        .map_err(|e| SinkError::iceberg(format!("checkpoint {path}"), e))?
        .read()
        .await
        .map_err(|e| {
            SinkError::iceberg(
                format!(
                    "reading the window state checkpoint {path} that table {}'s newest snapshot \
                     points to",
                    writer.label()
                ),
                e,
            )
        })?;
    Ok(bytes.to_vec())
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
