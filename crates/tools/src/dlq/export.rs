//! Writes dead letters to a file as JSON lines (one [`Letter`] per line, payload exactly as
//! stored: text stays text, base64 stays base64) or CSV, and reads JSON lines back.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use super::entry::Letter;

/// Errors writing or reading an export file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file could not be created, written or read.
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A CSV row could not be written.
    #[error("{path}")]
    Csv { path: PathBuf, source: csv::Error },
    /// A line is not an exported dead letter.
    #[error("{path}:{line}: not a dead letter record: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Export file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

/// The CSV columns, in order.
const CSV_HEADER: [&str; 15] = [
    "dlq_partition",
    "dlq_offset",
    "failed_at",
    "category",
    "error",
    "source_topic",
    "source_partition",
    "source_offset",
    "source_timestamp",
    "pipeline",
    "replay_of",
    "key",
    "key_encoding",
    "payload_encoding",
    "payload",
];

/// A writer of dead letters to one file.
pub struct ExportWriter {
    path: PathBuf,
    inner: Inner,
}

enum Inner {
    Jsonl(std::io::BufWriter<std::fs::File>),
    Csv(Box<csv::Writer<std::fs::File>>),
}

impl ExportWriter {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path, format: ExportFormat) -> Result<Self, ExportError> {
        let io = |source| ExportError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let inner = match format {
            ExportFormat::Jsonl => Inner::Jsonl(std::io::BufWriter::new(file)),
            ExportFormat::Csv => {
                let mut writer = csv::Writer::from_writer(file);
                writer
                    .write_record(CSV_HEADER)
                    .map_err(|source| ExportError::Csv {
                        path: path.to_path_buf(),
                        source,
                    })?;
                Inner::Csv(Box::new(writer))
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            inner,
        })
    }

    /// Writes one dead letter.
    pub fn write(&mut self, letter: &Letter) -> Result<(), ExportError> {
        match &mut self.inner {
            Inner::Jsonl(out) => {
                let line = serde_json::to_vec(letter).unwrap_or_default();
                out.write_all(&line)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|source| ExportError::Io {
                        path: self.path.clone(),
                        source,
                    })
            }
            Inner::Csv(out) => {
                let record = &letter.record;
                let dlq = letter.dlq.as_ref();
                let encoding = |e| match e {
                    super::PayloadEncoding::Text => "text",
                    super::PayloadEncoding::Base64 => "base64",
                };
                out.write_record([
                    dlq.map(|d| d.partition.to_string()).unwrap_or_default(),
                    dlq.map(|d| d.offset.to_string()).unwrap_or_default(),
                    record.failed_at.clone(),
                    record.category.clone(),
                    record.error.clone(),
                    record.source.topic.clone(),
                    record.source.partition.to_string(),
                    record.source.offset.to_string(),
                    record.source.timestamp.clone().unwrap_or_default(),
                    record.pipeline.clone(),
                    record.replay_of.clone().unwrap_or_default(),
                    letter.key.clone().unwrap_or_default(),
                    encoding(letter.key_encoding).to_string(),
                    encoding(record.payload_encoding).to_string(),
                    record.payload.clone(),
                ])
                .map_err(|source| ExportError::Csv {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    /// Flushes everything to the file.
    pub fn finish(self) -> Result<(), ExportError> {
        let result = match self.inner {
            Inner::Jsonl(mut out) => out.flush(),
            Inner::Csv(mut out) => out.flush(),
        };
        result.map_err(|source| ExportError::Io {
            path: self.path,
            source,
        })
    }
}

/// Reads a JSON lines export; the first bad line is an error naming it (blank lines are skipped).
pub fn read_jsonl(path: &Path) -> Result<Vec<Letter>, ExportError> {
    let io = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut letters = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let letter: Letter = serde_json::from_str(&line).map_err(|e| ExportError::BadLine {
            path: path.to_path_buf(),
            line: index + 1,
            message: e.to_string(),
        })?;
        letters.push(letter);
    }
    Ok(letters)
}
