//! The tables' catalog as BI tools see it: the Iceberg namespaces plus PostgreSQL's
//! `pg_catalog`, which the Iceberg catalog provider cannot hold itself.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use datafusion::catalog::{CatalogProvider, SchemaProvider};
use datafusion::error::{DataFusionError, Result};

/// The Iceberg catalog with extra in-memory schemas beside its namespaces.
#[derive(Debug)]
pub struct ServedCatalog {
    iceberg: Arc<dyn CatalogProvider>,
    extra: RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>,
}

impl ServedCatalog {
    /// Wraps the Iceberg catalog provider.
    pub fn new(iceberg: Arc<dyn CatalogProvider>) -> Self {
        Self {
            iceberg,
            extra: RwLock::new(BTreeMap::new()),
        }
    }
}

impl CatalogProvider for ServedCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        let mut names = self.iceberg.schema_names();
        if let Ok(extra) = self.extra.read() {
            names.extend(extra.keys().cloned());
        }
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let extra = self.extra.read().ok()?.get(name).cloned();
        extra.or_else(|| self.iceberg.schema(name))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        if self.iceberg.schema(name).is_some() {
            return Err(DataFusionError::Plan(format!(
                "schema {name} is an Iceberg namespace of the catalog"
            )));
        }
        let mut extra = self
            .extra
            .write()
            .map_err(|_| DataFusionError::Internal("catalog lock poisoned".into()))?;
        Ok(extra.insert(name.to_string(), schema))
    }
}
