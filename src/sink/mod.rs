//! The Iceberg sink: the tables the pipeline writes.

pub mod checkpoint;
pub mod commit;
pub mod evolve;
pub mod iceberg;
pub mod partition;
pub mod table;

/// Errors of the Iceberg sink, each naming the table or catalog involved.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The catalog could not be opened.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
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
    /// A SQL output column has no Iceberg counterpart.
    #[error("table {table}: column `{column}` has type {data_type}, which Iceberg cannot store; cast it in the SQL")]
    UnsupportedType {
        table: String,
        column: String,
        data_type: String,
    },
}

impl SinkError {
    /// Wraps an Iceberg error with what was being done.
    pub fn iceberg(what: impl Into<String>, source: ::iceberg::Error) -> Self {
        SinkError::Iceberg {
            what: what.into(),
            source: Box::new(source),
        }
    }
}
