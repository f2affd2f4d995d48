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
    let path = format!(
        "{}/{}{partition}-{}.arrow",
        folder(writer, base),
        file_prefix(writer.pipeline()),
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
    folder_of(writer.location(), base)
}

/// The checkpoint folder of the metrics table at `table_location`: `base`, or its
/// `checkpoints/` folder.
pub fn folder_of(table_location: &str, base: Option<&str>) -> String {
    match base {
        Some(base) => base.trim_end_matches('/').to_string(),
        None => format!("{}/checkpoints", table_location.trim_end_matches('/')),
    }
}

/// Whether `name` is the name of one of `pipeline`'s checkpoint files
/// (`<pipeline>-p<partition>-<uuid>.arrow`): a folder may be shared by several pipelines.
pub fn is_file_of(name: &str, pipeline: &str) -> bool {
    let Some(rest) = name.strip_prefix(&file_prefix(pipeline)) else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && rest[digits..].starts_with('-') && rest.ends_with(".arrow")
}

/// How the names of `pipeline`'s checkpoint files begin (the partition number follows).
fn file_prefix(pipeline: &str) -> String {
    let safe: String = pipeline
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-p")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_files_are_told_apart_by_pipeline() {
        let name = "campaign-p2-0190a6f2-7c1e-7b3a-9c1e-2f0e4d5a6b7c.arrow";
        assert!(is_file_of(name, "campaign"));
        assert!(!is_file_of(name, "campaign-prod"));
        assert!(!is_file_of("campaign-prod-p0-x.arrow", "campaign"));
        assert!(is_file_of("campaign_eu-p0-x.arrow", "campaign eu"));
        assert!(!is_file_of("campaign-p0-x.tmp", "campaign"));
    }
}
