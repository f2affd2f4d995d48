//! Tables as they were: one table at a snapshot or at a time, for `query --snapshot/--as-of`
//! and, as the SQL table functions `table_at_snapshot` and `table_as_of`, for any client.

use std::sync::Arc;

use datafusion::catalog::{TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use iceberg::table::Table;
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;

use super::{AsOf, QueryError};
use crate::catalog::CatalogError;

/// The snapshot of `table` that `as_of` names: `Ok(None)` when the table had none yet at that
/// time (it was empty), an error when it has no such snapshot id.
pub fn snapshot_of(table: &Table, as_of: AsOf) -> Result<Option<i64>, QueryError> {
    let metadata = table.metadata();
    match as_of {
        AsOf::Current => Ok(metadata.current_snapshot_id()),
        AsOf::Snapshot(id) => match metadata.snapshot_by_id(id) {
            Some(_) => Ok(Some(id)),
            None => Err(QueryError::TimeTravel(format!(
                "table {} has no snapshot {id} (expired, or another table's); \
                 `campaign-pipeline snapshots TABLE` lists them",
                table.identifier().name()
            ))),
        },
        AsOf::Time(at) => {
            let millis = at.timestamp_millis();
            Ok(metadata
                .history()
                .iter()
                .rfind(|entry| entry.timestamp_ms <= millis)
                .map(|entry| entry.snapshot_id))
        }
    }
}

/// `table` as it was at `snapshot` (`None`: empty, with its current columns).
pub async fn provider_at(
    table: Table,
    snapshot: Option<i64>,
) -> Result<Arc<dyn TableProvider>, QueryError> {
    let name = table.identifier().name().to_string();
    let failed = |e| QueryError::Catalog(CatalogError::iceberg(format!("table {name}"), e));
    match snapshot {
        Some(id) => Ok(Arc::new(
            IcebergStaticTableProvider::try_new_from_table_snapshot(table, id)
                .await
                .map_err(failed)?,
        )),
        None => {
            let schema = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
                .map_err(failed)?;
            Ok(Arc::new(MemTable::try_new(Arc::new(schema), vec![vec![]])?))
        }
    }
}

/// Which table function: by snapshot id or by time.
#[derive(Debug, Clone, Copy)]
enum By {
    Snapshot,
    Time,
}

/// `table_at_snapshot('campaign_events', 123)` / `table_as_of('campaign_events',
/// '2026-11-27T10:00:00Z')`: a table of the namespace as it was.
#[derive(Debug)]
pub struct TimeTravel {
    catalog: Arc<dyn Catalog>,
    namespace: NamespaceIdent,
    by: By,
}

impl TimeTravel {
    /// The two functions, named, over `namespace` of `catalog`.
    pub fn functions(
        catalog: Arc<dyn Catalog>,
        namespace: NamespaceIdent,
    ) -> [(&'static str, Arc<dyn TableFunctionImpl>); 2] {
        let make = |by| -> Arc<dyn TableFunctionImpl> {
            Arc::new(TimeTravel {
                catalog: catalog.clone(),
                namespace: namespace.clone(),
                by,
            })
        };
        [
            ("table_at_snapshot", make(By::Snapshot)),
            ("table_as_of", make(By::Time)),
        ]
    }

    fn usage(&self) -> DataFusionError {
        DataFusionError::Plan(match self.by {
            By::Snapshot => "usage: table_at_snapshot('<table>', <snapshot id>)".into(),
            By::Time => {
                "usage: table_as_of('<table>', '<RFC 3339 time, e.g. 2026-11-27T10:00:00Z>')".into()
            }
        })
    }

    fn arguments(&self, args: &[Expr]) -> DfResult<(String, AsOf)> {
        let literal = |expr: &Expr| match expr {
            Expr::Literal(value, _) => Some(value.clone()),
            _ => None,
        };
        let (Some(table), Some(point), 2) = (
            args.first().and_then(literal),
            args.get(1).and_then(literal),
            args.len(),
        ) else {
            return Err(self.usage());
        };
        let table = match table {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => s,
            _ => return Err(self.usage()),
        };
        let as_of = match (self.by, point) {
            (By::Snapshot, ScalarValue::Int64(Some(id))) => AsOf::Snapshot(id),
            (By::Snapshot, ScalarValue::Int32(Some(id))) => AsOf::Snapshot(id.into()),
            (
                By::Time,
                ScalarValue::Utf8(Some(s))
                | ScalarValue::Utf8View(Some(s))
                | ScalarValue::LargeUtf8(Some(s)),
            ) => {
                let at = chrono::DateTime::parse_from_rfc3339(&s).map_err(|e| {
                    DataFusionError::Plan(format!(
                        "table_as_of: {s:?} is not an RFC 3339 time: {e}"
                    ))
                })?;
                AsOf::Time(at.with_timezone(&chrono::Utc))
            }
            _ => return Err(self.usage()),
        };
        Ok((table, as_of))
    }

    async fn provider(
        &self,
        table: String,
        as_of: AsOf,
    ) -> Result<Arc<dyn TableProvider>, QueryError> {
        let ident = TableIdent::new(self.namespace.clone(), table.clone());
        let loaded = self
            .catalog
            .load_table(&ident)
            .await
            .map_err(|e| CatalogError::iceberg(format!("table {table}"), e))?;
        let snapshot = snapshot_of(&loaded, as_of)?;
        provider_at(loaded, snapshot).await
    }
}

impl TableFunctionImpl for TimeTravel {
    fn call(&self, args: &[Expr]) -> DfResult<Arc<dyn TableProvider>> {
        let (table, as_of) = self.arguments(args)?;
        // Planning is synchronous and loading a table is not: wait for it on this worker,
        // which the multi-threaded runtime allows.
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(DataFusionError::NotImplemented(
                "time travel functions need the multi-threaded runtime".into(),
            ));
        }
        // The whole cause chain in the message: clients see only the text.
        tokio::task::block_in_place(|| handle.block_on(self.provider(table, as_of)))
            .map_err(|e| DataFusionError::Plan(crate::common::error::Causes(&e).to_string()))
    }
}
