//! The one catalog factory: embedded SQLite by default, PostgreSQL or REST in production.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use iceberg::io::LocalFsStorageFactory;
use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use sqlx::migrate::MigrateDatabase;

use super::SinkError;
use crate::config::{CatalogConfig, Config};

/// Name the catalog is registered under (appears in ad-hoc SQL as the catalog name).
pub const CATALOG_NAME: &str = "iceberg";

/// Opens the catalog a pipeline's sink is configured with.
pub async fn open_catalog(
    config: &Config,
    catalog: &CatalogConfig,
) -> Result<Arc<dyn Catalog>, SinkError> {
    match catalog {
        CatalogConfig::Sqlite {
            path,
            warehouse,
            properties,
        } => {
            let db = config.resolve(path);
            let fail = |message: String| SinkError::Catalog {
                kind: "sqlite",
                location: db.display().to_string(),
                message,
            };
            if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
            }
            let url = format!("sqlite://{}", absolute(&db).map_err(fail)?);
            if !sqlx::Sqlite::database_exists(&url).await.unwrap_or(false) {
                sqlx::Sqlite::create_database(&url)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
            }
            let warehouse = warehouse_location(config, warehouse).map_err(fail)?;
            sql_catalog(&url, &warehouse, SqlBindStyle::QMark, properties)
                .await
                .map_err(|e| fail(e.to_string()))
        }
        CatalogConfig::Postgres {
            uri,
            warehouse,
            properties,
        } => {
            let fail = |message: String| SinkError::Catalog {
                kind: "postgres",
                location: redact(uri),
                message,
            };
            let warehouse = warehouse_location(config, warehouse).map_err(fail)?;
            sql_catalog(uri, &warehouse, SqlBindStyle::DollarNumeric, properties)
                .await
                .map_err(|e| fail(e.to_string()))
        }
        CatalogConfig::Rest { uri, .. } => Err(SinkError::Catalog {
            kind: "rest",
            location: uri.clone(),
            message: "the REST catalog is not built into this version yet; use sqlite or postgres"
                .into(),
        }),
    }
}

/// A connection URI without its password, for messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &uri[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..]),
                None => uri.to_string(),
            }
        }
        _ => uri.to_string(),
    }
}

impl CatalogConfig {
    /// Short name of the catalog kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            CatalogConfig::Sqlite { .. } => "sqlite",
            CatalogConfig::Postgres { .. } => "postgres",
            CatalogConfig::Rest { .. } => "rest",
        }
    }
}

async fn sql_catalog(
    url: &str,
    warehouse: &str,
    bind_style: SqlBindStyle,
    properties: &std::collections::BTreeMap<String, String>,
) -> iceberg::Result<Arc<dyn Catalog>> {
    sqlx::any::install_default_drivers();
    let props: HashMap<String, String> = properties.clone().into_iter().collect();
    let catalog = SqlCatalogBuilder::default()
        .uri(url)
        .warehouse_location(warehouse)
        .sql_bind_style(bind_style)
        .props(props)
        .with_storage_factory(Arc::new(LocalFsStorageFactory))
        .load(CATALOG_NAME, HashMap::new())
        .await?;
    Ok(Arc::new(catalog))
}

/// A local warehouse folder, created and made absolute (Iceberg stores absolute locations).
fn warehouse_location(config: &Config, warehouse: &str) -> Result<String, String> {
    if warehouse.contains("://") && !warehouse.starts_with("file://") {
        return Err(format!(
            "warehouse {warehouse}: only local warehouse folders are supported so far"
        ));
    }
    let dir = config.resolve(warehouse.trim_start_matches("file://"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    absolute(&dir)
}

fn absolute(path: &Path) -> Result<String, String> {
    std::path::absolute(path)
        .map(|p| p.display().to_string())
        .map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}
