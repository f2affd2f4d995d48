//! The Iceberg sink: the tables the pipeline writes.

pub mod buffer;
pub mod checkpoint;
pub mod claim;
pub mod commit;
pub mod evolve;
pub mod iceberg;
pub mod partition;
pub mod table;
pub mod waiting;

/// Errors of the Iceberg sink, each naming the table or catalog involved.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The catalog could not be opened.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The table's files cannot be read with the storage settings in use.
    #[error("table {table}: cannot read its metadata file {location} from the object store (check sink.storage; a REST catalog may send storage settings of its own)")]
    Storage {
        table: String,
        location: String,
        #[source]
        source: Option<Box<::iceberg::Error>>,
    },
    /// Window-state checkpoints cannot be written where they are configured to go.
    #[error("table {table}: cannot write window-state checkpoints under {folder} (check sink.checkpoints: an Iceberg table bucket, such as SeaweedFS's or S3 Tables', accepts only Iceberg's own files)")]
    Checkpoints {
        table: String,
        folder: String,
        #[source]
        source: Box<::iceberg::Error>,
    },
    /// An Iceberg operation on a table or namespace failed.
    #[error("{what}")]
    Iceberg {
        what: String,
        #[source]
        source: Box<::iceberg::Error>,
    },
    /// The SQL output and the table disagree, or the table is missing.
    #[error("table {table}: {message}")]
    Schema { table: String, message: String },
    /// Another runner moved partitions on: the commit did not land.
    #[error("table {table}")]
    Fenced {
        table: String,
        #[source]
        source: crate::common::Fenced,
    },
    /// Arrow failed on rows bound for a table.
    #[error("table {table}")]
    Arrow {
        table: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A SQL output column could not be cast to the table column's type.
    #[error("table {table}: column `{column}` does not convert to the table's {data_type}")]
    Conform {
        table: String,
        column: String,
        data_type: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A snapshot summary value this pipeline wrote does not read back.
    #[error("table {table}: snapshot {snapshot} has an unreadable `{key}`: {text:?}")]
    Summary {
        table: String,
        snapshot: i64,
        key: &'static str,
        text: String,
        #[source]
        source: serde_json::Error,
    },
    /// A table property the writer follows has a value it cannot use.
    #[error("table {table}: {source} (change it with any Iceberg engine's ALTER TABLE … SET TBLPROPERTIES)")]
    Property {
        table: String,
        source: self::iceberg::TablePropertyError,
    },
    /// A SQL output column has no Iceberg counterpart.
    #[error("table {table}: column `{column}` has type {data_type}, which Iceberg cannot store; cast it in the SQL")]
    UnsupportedType {
        table: String,
        column: String,
        data_type: String,
    },
}

impl SinkError {
    /// Whether the error may pass by itself: the object store or the catalog did not answer
    /// or failed (iceberg-rust reports I/O, HTTP and database failures as `Unexpected`), as
    /// opposed to a table, summary or SQL output that is wrong and stays wrong, or an object
    /// store that refuses the request (permission, missing bucket, setting).
    pub fn is_transient(&self) -> bool {
        let SinkError::Iceberg { source, .. } = self else {
            return false;
        };
        if source.kind() != ::iceberg::ErrorKind::Unexpected {
            return false;
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(error) = cause {
            if let Some(storage) = error.downcast_ref::<opendal::Error>() {
                return matches!(
                    storage.kind(),
                    opendal::ErrorKind::Unexpected | opendal::ErrorKind::RateLimited
                );
            }
            cause = error.source();
        }
        true
    }

    /// Wraps an Iceberg error with what was being done.
    pub fn iceberg(what: impl Into<String>, source: ::iceberg::Error) -> Self {
        SinkError::Iceberg {
            what: what.into(),
            source: Box::new(source),
        }
    }
}
