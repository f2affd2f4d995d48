//! What the catalog holds: the namespace's tables and each table's snapshots with their
//! summaries (the Kafka offsets included), as rows that print like query results.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use iceberg::{Catalog, TableIdent};

use super::QueryError;
use crate::catalog::namespace_ident;
use crate::catalog::open_catalog;
use crate::catalog::CatalogError;
use crate::config::{Config, PipelineConfig};

/// One row per table of the pipeline's namespace: name, snapshots, rows, current snapshot.
pub async fn tables(config: &Config, pipeline: &PipelineConfig) -> Result<RecordBatch, QueryError> {
    let catalog = open_catalog(config, &pipeline.sink).await?;
    let namespace = namespace_ident(&pipeline.sink.namespace)?;
    let mut idents = catalog
        .list_tables(&namespace)
        .await
        .map_err(|e| CatalogError::iceberg(format!("namespace {}", pipeline.sink.namespace), e))?;
    idents.sort_by(|a, b| a.name().cmp(b.name()));
    let (mut names, mut counts, mut rows, mut current, mut updated, mut partitioning) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for ident in &idents {
        let table = load(catalog.as_ref(), ident).await?;
        let metadata = table.metadata();
        names.push(ident.name().to_string());
        counts.push(metadata.snapshots().count() as i64);
        rows.push(
            metadata
                .current_snapshot()
                .and_then(|s| s.summary().additional_properties.get("total-records"))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0),
        );
        current.push(metadata.current_snapshot_id());
        updated.push(metadata.last_updated_ms());
        let spec = metadata.default_partition_spec();
        partitioning.push(
            spec.fields()
                .iter()
                .map(|f| format!("{}({})", f.transform, f.name))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("table", DataType::Utf8, false),
        Field::new("snapshots", DataType::Int64, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("current_snapshot_id", DataType::Int64, true),
        Field::new(
            "last_updated",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("partitioned_by", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(names)),
        Arc::new(Int64Array::from(counts)),
        Arc::new(Int64Array::from(rows)),
        Arc::new(Int64Array::from(current)),
        Arc::new(TimestampMillisecondArray::from(updated).with_timezone("UTC")),
        Arc::new(StringArray::from(partitioning)),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// One row per snapshot of `table`, oldest first, with its summary.
pub async fn snapshots(
    config: &Config,
    pipeline: &PipelineConfig,
    table: &str,
) -> Result<RecordBatch, QueryError> {
    let catalog = open_catalog(config, &pipeline.sink).await?;
    let ident = TableIdent::new(
        namespace_ident(&pipeline.sink.namespace)?,
        table.to_string(),
    );
    let table = load(catalog.as_ref(), &ident).await?;
    let metadata = table.metadata();
    let mut snapshots: Vec<_> = metadata.snapshots().collect();
    snapshots.sort_by_key(|s| (s.sequence_number(), s.timestamp_ms()));
    let property = |s: &iceberg::spec::Snapshot, key: &str| {
        s.summary().additional_properties.get(key).cloned()
    };
    let count = |s: &iceberg::spec::Snapshot, key: &str| {
        property(s, key).and_then(|v| v.parse::<i64>().ok())
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("snapshot_id", DataType::Int64, false),
        Field::new("parent_id", DataType::Int64, true),
        Field::new(
            "committed_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("operation", DataType::Utf8, false),
        Field::new("added_records", DataType::Int64, true),
        Field::new("total_records", DataType::Int64, true),
        Field::new("kafka_offsets", DataType::Utf8, true),
        Field::new("summary", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            snapshots.iter().map(|s| s.snapshot_id()),
        )),
        Arc::new(Int64Array::from_iter(
            snapshots.iter().map(|s| s.parent_snapshot_id()),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(snapshots.iter().map(|s| s.timestamp_ms()))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            snapshots
                .iter()
                .map(|s| format!("{:?}", s.summary().operation).to_lowercase()),
        )),
        Arc::new(Int64Array::from_iter(
            snapshots.iter().map(|s| count(s, "added-records")),
        )),
        Arc::new(Int64Array::from_iter(
            snapshots.iter().map(|s| count(s, "total-records")),
        )),
        Arc::new(StringArray::from_iter(
            snapshots
                .iter()
                .map(|s| property(s, crate::common::summary::OFFSETS)),
        )),
        Arc::new(StringArray::from_iter_values(snapshots.iter().map(|s| {
            let sorted: std::collections::BTreeMap<_, _> =
                s.summary().additional_properties.iter().collect();
            serde_json::to_string(&sorted).unwrap_or_default()
        }))),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

async fn load(
    catalog: &dyn Catalog,
    ident: &TableIdent,
) -> Result<iceberg::table::Table, QueryError> {
    Ok(catalog
        .load_table(ident)
        .await
        .map_err(|e| CatalogError::iceberg(format!("table {}", ident.name()), e))?)
}
