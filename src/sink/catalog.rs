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
            let fail = |failure: Failure| failure.into_error("sqlite", db.display().to_string());
            if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| fail(Failure::of(format!("creating {}", dir.display()), e)))?;
            }
            let url = format!("sqlite://{}", absolute(&db).map_err(fail)?);
            if !sqlx::Sqlite::database_exists(&url).await.unwrap_or(false) {
                sqlx::Sqlite::create_database(&url)
                    .await
                    .map_err(|e| fail(Failure::of("creating the database", e)))?;
            }
            let warehouse = warehouse_location(config, warehouse).map_err(fail)?;
            sql_catalog(&url, &warehouse, SqlBindStyle::QMark, properties)
                .await
                .map_err(|e| fail(Failure::of("loading the catalog", e)))
        }
        CatalogConfig::Postgres {
            uri,
            warehouse,
            properties,
        } => {
            let fail = |failure: Failure| failure.into_error("postgres", redact(uri));
            let warehouse = warehouse_location(config, warehouse).map_err(fail)?;
            sql_catalog(uri, &warehouse, SqlBindStyle::DollarNumeric, properties)
                .await
                .map_err(|e| fail(Failure::of("loading the catalog", e)))
        }
        CatalogConfig::Rest { uri, .. } => Err(Failure::said(
            "the REST catalog is not built into this version yet; use sqlite or postgres",
        )
        .into_error("rest", uri.clone())),
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

/// What failed while opening a catalog, and the error behind it.
struct Failure {
    what: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Failure {
    /// `what` failed because of `source`.
    fn of(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A failure with nothing behind it.
    fn said(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }

    fn into_error(self, kind: &'static str, location: String) -> SinkError {
        SinkError::Catalog {
            kind,
            location,
            what: self.what,
            source: self.source,
        }
    }
}

/// A local warehouse folder, created and made absolute (Iceberg stores absolute locations).
fn warehouse_location(config: &Config, warehouse: &str) -> Result<String, Failure> {
    if warehouse.contains("://") && !warehouse.starts_with("file://") {
        return Err(Failure::said(format!(
            "warehouse {warehouse}: only local warehouse folders are supported so far"
        )));
    }
    let dir = config.resolve(warehouse.trim_start_matches("file://"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::of(format!("creating {}", dir.display()), e))?;
    absolute(&dir)
}

fn absolute(path: &Path) -> Result<String, Failure> {
    std::path::absolute(path)
        .map(|p| p.display().to_string())
        .map_err(|e| Failure::of(format!("resolving {}", path.display()), e))
}
