//! Creating the pipeline's tables from the SQL output schemas, with identity partition specs.

use std::collections::{BTreeMap, HashMap};

use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use iceberg::spec::{Schema, Transform, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::{Catalog, NamespaceIdent, TableCreation, TableIdent};

use super::iceberg::{column_metrics_property, CODEC_PROPERTY};
use super::SinkError;
use crate::config::TableConfig;

/// What `ensure_*` found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// It was created now.
    Created,
    /// It existed already and was left unchanged.
    Existed,
}

/// Reads the table's metadata file through the table's own storage settings: a REST catalog
/// answers without touching the object store, so wrong storage settings would otherwise show
/// only at the first commit, after events were consumed.
pub async fn check_storage(table: &Table, label: &str) -> Result<(), SinkError> {
    let Some(location) = table.metadata_location() else {
        return Ok(());
    };
    let found = table.file_io().exists(location).await;
    let storage_error = |source| SinkError::Storage {
        table: label.to_string(),
        location: location.to_string(),
        source,
    };
    match found {
        Ok(true) => Ok(()),
        Ok(false) => Err(storage_error(None)),
        Err(e) => Err(storage_error(Some(Box::new(e)))),
    }
}

/// Creates the namespace unless it exists.
pub async fn ensure_namespace(
    catalog: &dyn Catalog,
    namespace: &str,
) -> Result<Ensured, SinkError> {
    let ident = namespace_ident(namespace)?;
    let err = |source| SinkError::iceberg(format!("namespace {namespace}"), source);
    if catalog.namespace_exists(&ident).await.map_err(err)? {
        return Ok(Ensured::Existed);
    }
    catalog
        .create_namespace(&ident, Default::default())
        .await
        .map_err(err)?;
    Ok(Ensured::Created)
}

/// Creates `namespace.name` with the given SQL output schema, identity partitions and properties,
/// unless it exists.
pub async fn ensure_table(
    catalog: &dyn Catalog,
    namespace: &str,
    table: &TableConfig,
    sql_schema: &ArrowSchema,
) -> Result<Ensured, SinkError> {
    let TableConfig {
        name,
        partition_by,
        properties,
    } = table;
    let ident = TableIdent::new(namespace_ident(namespace)?, name.to_string());
    let err = |source| SinkError::iceberg(format!("table {namespace}.{name}"), source);
    if catalog.table_exists(&ident).await.map_err(err)? {
        return Ok(Ensured::Existed);
    }
    let schema = iceberg_schema(name, sql_schema)?;
    let spec = identity_spec(&schema, partition_by).map_err(err)?;
    let creation = TableCreation::builder()
        .name(name.to_string())
        .schema(schema)
        .partition_spec(spec)
        .properties(creation_properties(partition_by, properties))
        .build();
    catalog
        .create_table(ident.namespace(), creation)
        .await
        .map_err(err)?;
    Ok(Ensured::Created)
}

/// A new table's properties: Parquet with zstd, no metrics for the partition columns, then
/// `configured` over them. An identity partition column holds one value in each data file,
/// which the manifest already records as the file's partition; bounds would repeat it, at two
/// comparisons per value when the file is written.
fn creation_properties(
    partition_by: &[String],
    configured: &BTreeMap<String, String>,
) -> HashMap<String, String> {
    let mut properties: HashMap<String, String> = [
        ("write.format.default".to_string(), "parquet".to_string()),
        (CODEC_PROPERTY.to_string(), "zstd".to_string()),
    ]
    .into();
    for column in partition_by {
        properties.insert(column_metrics_property(column), "none".to_string());
    }
    properties.extend(configured.clone());
    properties
}

/// Parses a dotted namespace such as `campaigns` or `analytics.campaigns`.
pub fn namespace_ident(namespace: &str) -> Result<NamespaceIdent, SinkError> {
    Ok(crate::catalog::namespace_ident(namespace)?)
}

/// The Iceberg schema for a SQL output schema: field ids assigned in column order, every column
/// optional, timestamps stored at microsecond precision (what Iceberg v2 tables hold).
pub fn iceberg_schema(table: &str, sql_schema: &ArrowSchema) -> Result<Schema, SinkError> {
    let fields: Vec<Field> = sql_schema
        .fields()
        .iter()
        .map(|f| {
            let data_type =
                storable_type(f.data_type()).ok_or_else(|| SinkError::UnsupportedType {
                    table: table.to_string(),
                    column: f.name().clone(),
                    data_type: f.data_type().to_string(),
                })?;
            Ok(Field::new(f.name(), data_type, true))
        })
        .collect::<Result<_, SinkError>>()?;
    iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&ArrowSchema::new(fields))
        .map_err(|source| SinkError::iceberg(format!("schema of table {table}"), source))
}

/// The Arrow type a column is stored as, or `None` when Iceberg has no such type.
fn storable_type(data_type: &DataType) -> Option<DataType> {
    Some(match data_type {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::Binary | DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Boolean
        | DataType::Int32
        | DataType::Int64
        | DataType::Float32
        | DataType::Float64
        | DataType::Date32
        | DataType::Decimal128(_, _) => data_type.clone(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Date64 => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ => return None,
    })
}

fn identity_spec(
    schema: &Schema,
    partition_by: &[String],
) -> iceberg::Result<UnboundPartitionSpec> {
    let mut builder = UnboundPartitionSpec::builder().with_spec_id(0);
    for column in partition_by {
        let field = schema.field_by_name(column).ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!("partition column `{column}` is not a column of the table"),
            )
        })?;
        builder = builder.add_partition_field(field.id, column.clone(), Transform::Identity)?;
    }
    Ok(builder.build())
}

/// Loads a table by namespace and name.
pub async fn load_table(
    catalog: &dyn Catalog,
    namespace: &str,
    name: &str,
) -> Result<iceberg::table::Table, SinkError> {
    let ident = TableIdent::new(namespace_ident(namespace)?, name.to_string());
    catalog
        .load_table(&ident)
        .await
        .map_err(|source| SinkError::iceberg(format!("table {namespace}.{name}"), source))
}
