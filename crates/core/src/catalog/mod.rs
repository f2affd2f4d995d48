//! The one catalog factory: embedded SQLite by default, PostgreSQL or REST in production, with
//! the warehouse in a local folder or in S3-compatible object storage. The writer (`sink`), the
//! readers (`query`, the dashboard) and `setup` all open their catalog here.

mod storage;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use iceberg::io::{FileIO, LocalFsStorageFactory, StorageFactory};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use sqlx::migrate::MigrateDatabase;

use crate::config::{CatalogConfig, Config, SinkConfig};
use storage::storage_properties;

/// Name the catalog is registered under (appears in ad-hoc SQL as the catalog name).
pub const CATALOG_NAME: &str = "iceberg";

/// Boxed cause of a catalog failure.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Errors opening or asking a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog could not be opened.
    #[error("cannot open the {kind} catalog at {location}: {what}")]
    Open {
        kind: &'static str,
        location: String,
        what: String,
        #[source]
        source: Option<Cause>,
    },
    /// A catalog operation on a namespace or table failed.
    #[error("{what}")]
    Iceberg {
        what: String,
        #[source]
        source: Box<iceberg::Error>,
    },
}

impl CatalogError {
    /// Wraps an Iceberg error with what was being done.
    pub fn iceberg(what: impl Into<String>, source: iceberg::Error) -> Self {
        Self::Iceberg {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// The namespace identifier of a dotted name (`a.b` is nested).
pub fn namespace_ident(namespace: &str) -> Result<NamespaceIdent, CatalogError> {
    NamespaceIdent::from_strs(namespace.split('.'))
        .map_err(|source| CatalogError::iceberg(format!("namespace {namespace}"), source))
}

/// Opens the catalog a pipeline's sink is configured with, its FileIO set up for the
/// warehouse's storage.
pub async fn open_catalog(
    config: &Config,
    sink: &SinkConfig,
) -> Result<Arc<dyn Catalog>, CatalogError> {
    open_catalog_over(config, sink, |storage| storage).await
}

/// [`open_catalog`] whose tables' files go through `layer(storage)`: the seam that lets the
/// simulation tests fail the object store's calls the way they fail the catalog's.
pub async fn open_catalog_over(
    config: &Config,
    sink: &SinkConfig,
    layer: impl FnOnce(Arc<dyn StorageFactory>) -> Arc<dyn StorageFactory>,
) -> Result<Arc<dyn Catalog>, CatalogError> {
    let storage = storage_properties(&sink.storage);
    match &sink.catalog {
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
            let url = sqlite_url(config, path).map_err(|e| fail(Failure::of("resolving", e)))?;
            if !sqlx::Sqlite::database_exists(&url).await.unwrap_or(false) {
                sqlx::Sqlite::create_database(&url)
                    .await
                    .map_err(|e| fail(Failure::of("creating the database", e)))?;
            }
            let props = merged(properties, &storage);
            sql_catalog(config, &url, warehouse, SqlBindStyle::QMark, props, layer)
                .await
                .map_err(fail)
        }
        CatalogConfig::Postgres {
            uri,
            warehouse,
            properties,
        } => {
            let fail = |failure: Failure| failure.into_error("postgres", redact(uri));
            connect_postgres(uri).await.map_err(fail)?;
            let props = merged(properties, &storage);
            sql_catalog(
                config,
                uri,
                warehouse,
                SqlBindStyle::DollarNumeric,
                props,
                layer,
            )
            .await
            .map_err(fail)
        }
        CatalogConfig::Rest { uri, .. } => {
            let fail = |failure: Failure| failure.into_error("rest", uri.clone());
            let props = rest_properties(&sink.catalog, &storage);
            let catalog = RestCatalogBuilder::default()
                .with_client(http_client().map_err(fail)?)
                .with_storage_factory(layer(object_storage()))
                .load(CATALOG_NAME, props)
                .await
                .map_err(|e| fail(Failure::of("configuring the client", e)))?;
            // The client connects lazily: ask once now, so that a wrong address or credential is
            // reported before anything is consumed.
            let namespace = namespace_ident(&sink.namespace)?;
            catalog.namespace_exists(&namespace).await.map_err(|e| {
                fail(Failure::of(
                    format!(
                        "asking for namespace {} (check {})",
                        sink.namespace,
                        rest_setting(&e)
                    ),
                    e,
                ))
            })?;
            Ok(Arc::new(catalog))
        }
    }
}

/// The REST catalog client's properties: the storage's FileIO properties, the catalog's own
/// `properties` over them, and the named settings over both.
fn rest_properties(
    catalog: &CatalogConfig,
    storage: &HashMap<String, String>,
) -> HashMap<String, String> {
    let CatalogConfig::Rest {
        uri,
        warehouse,
        prefix,
        credential,
        token,
        properties,
    } = catalog
    else {
        return HashMap::new();
    };
    let mut props = merged(properties, storage);
    props.insert("uri".into(), uri.trim_end_matches('/').to_string());
    let named = [
        ("warehouse", warehouse.as_deref()),
        ("prefix", prefix.as_deref()),
        ("credential", credential.as_ref().map(|c| c.expose())),
        ("token", token.as_ref().map(|t| t.expose())),
    ];
    for (key, value) in named {
        if let Some(value) = value {
            props.insert(key.into(), value.to_string());
        }
    }
    props
}

/// Connects to the PostgreSQL catalog once, with a deadline: the catalog's own pool retries a
/// refused connection for 30 s and then reports only that it timed out.
async fn connect_postgres(uri: &str) -> Result<(), Failure> {
    use sqlx::Connection;
    let what = "connecting (check sink.catalog.uri)";
    let connecting = sqlx::PgConnection::connect(uri);
    match tokio::time::timeout(std::time::Duration::from_secs(10), connecting).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(Failure::of(what, e)),
        Err(_) => Err(Failure::said(format!("{what}: no answer within 10 s"))),
    }
}

/// The setting a REST catalog's refusal points to: the address when it cannot be reached, the
/// credential when it is refused, the warehouse when the server does not know it.
fn rest_setting(error: &iceberg::Error) -> &'static str {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(http) = current.downcast_ref::<reqwest::Error>() {
            if http.is_connect() || http.is_timeout() {
                return "sink.catalog.uri";
            }
        }
        cause = current.source();
    }
    let text = error.to_string();
    if text.contains("401 Unauthorized") || text.contains("403 Forbidden") {
        "sink.catalog.credential or sink.catalog.token"
    } else if text.contains("404 Not Found") {
        "sink.catalog.warehouse"
    } else {
        "sink.catalog"
    }
}

/// Writes and deletes a small file in a SQL catalog's object store warehouse, so that a missing
/// bucket, a wrong endpoint or credentials without write access are reported by `setup` and
/// `run` before anything is consumed. (A REST catalog's warehouse is the server's: its tables'
/// storage is checked when they are opened.)
pub async fn check_warehouse(config: &Config, sink: &SinkConfig) -> Result<(), CatalogError> {
    let (kind, location, warehouse) = match &sink.catalog {
        CatalogConfig::Sqlite {
            path, warehouse, ..
        } => (
            "sqlite",
            config.resolve(path).display().to_string(),
            warehouse,
        ),
        CatalogConfig::Postgres { uri, warehouse, .. } => ("postgres", redact(uri), warehouse),
        CatalogConfig::Rest { .. } => return Ok(()),
    };
    let Warehouse::Object(root) = warehouse_location(config, warehouse)
        .map_err(|failure| failure.into_error(kind, location.clone()))?
    else {
        return Ok(());
    };
    let file_io = iceberg::io::FileIOBuilder::new(object_storage())
        .with_props(storage_properties(&sink.storage))
        .build();
    probe_writable(&file_io, &root).await.map_err(|e| {
        let what = format!(
            "writing a probe file to the warehouse {root} (check sink.catalog.warehouse and \
             sink.storage)"
        );
        Failure::of(what, e).into_error(kind, location)
    })
}

/// Writes a small file into `folder` and deletes it again: whether the runner may write there,
/// asked before anything is consumed. Failing to delete it only leaves the file, with a warning.
pub async fn probe_writable(file_io: &FileIO, folder: &str) -> iceberg::Result<()> {
    let probe = format!(
        "{}/.campaign-pipeline-probe-{}",
        folder.trim_end_matches('/'),
        uuid::Uuid::now_v7()
    );
    file_io
        .new_output(&probe)?
        .write(bytes::Bytes::from_static(b"probe"))
        .await?;
    if let Err(err) = file_io.delete(&probe).await {
        tracing::warn!(file = probe, "could not delete a probe file: {err}");
    }
    Ok(())
}

/// The REST catalog's HTTP client: HTTPS with the system's root certificates, and timeouts,
/// so that a catalog that stops answering fails the request (and the runner retries) instead
/// of hanging the commit forever.
fn http_client() -> Result<reqwest::Client, Failure> {
    rest_http_client().map_err(|e| Failure::of("building the HTTP client", e))
}

/// The `sqlite://` URL of the embedded catalog's database file `path` (resolved against the
/// configuration's folder): the catalog and maintenance's pointer swap open the same file.
pub fn sqlite_url(config: &Config, path: &str) -> std::io::Result<String> {
    let db = std::path::absolute(config.resolve(path))?;
    Ok(format!("sqlite://{}", db.display()))
}

/// The HTTP client every call to a REST catalog goes through (see [`http_client`]).
pub fn rest_http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build()
}

/// The properties the REST catalog client of `sink` is opened with (empty for SQL catalogs).
pub fn rest_client_properties(sink: &SinkConfig) -> HashMap<String, String> {
    rest_properties(&sink.catalog, &storage_properties(&sink.storage))
}

/// The catalog properties with the storage's FileIO properties added (the catalog's own take
/// precedence, so `properties` can override anything).
fn merged(
    catalog: &std::collections::BTreeMap<String, String>,
    storage: &HashMap<String, String>,
) -> HashMap<String, String> {
    let mut props = storage.clone();
    props.extend(catalog.iter().map(|(k, v)| (k.clone(), v.clone())));
    props
}

/// FileIO for object storage and local files alike (iceberg-rust's OpenDAL storage, resolving
/// each location by its scheme).
fn object_storage() -> Arc<dyn StorageFactory> {
    Arc::new(iceberg_storage_opendal::OpenDalResolvingStorageFactory::new())
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

/// A SQL catalog at `url` whose tables live in `warehouse` (a local folder, resolved against the
/// configuration's folder, or an object store URL).
async fn sql_catalog(
    config: &Config,
    url: &str,
    warehouse: &str,
    bind_style: SqlBindStyle,
    props: HashMap<String, String>,
    layer: impl FnOnce(Arc<dyn StorageFactory>) -> Arc<dyn StorageFactory>,
) -> Result<Arc<dyn Catalog>, Failure> {
    let warehouse = warehouse_location(config, warehouse)?;
    sqlx::any::install_default_drivers();
    let storage: Arc<dyn StorageFactory> = match warehouse {
        Warehouse::Local(_) => Arc::new(LocalFsStorageFactory),
        Warehouse::Object(_) => object_storage(),
    };
    let catalog = SqlCatalogBuilder::default()
        .uri(url)
        .warehouse_location(warehouse.location())
        .sql_bind_style(bind_style)
        .props(props)
        .with_storage_factory(layer(storage))
        .load(CATALOG_NAME, HashMap::new())
        .await
        .map_err(|e| Failure::of("loading the catalog", e))?;
    Ok(Arc::new(catalog))
}

/// Where a SQL catalog's tables live.
enum Warehouse {
    /// An absolute local folder.
    Local(String),
    /// An object store URL (`s3://bucket/prefix`).
    Object(String),
}

impl Warehouse {
    fn location(&self) -> &str {
        match self {
            Warehouse::Local(location) | Warehouse::Object(location) => location,
        }
    }
}

/// What failed while opening a catalog, and the error behind it.
struct Failure {
    what: String,
    source: Option<Cause>,
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

    fn into_error(self, kind: &'static str, location: String) -> CatalogError {
        CatalogError::Open {
            kind,
            location,
            what: self.what,
            source: self.source,
        }
    }
}

/// The warehouse of a SQL catalog: an object store URL as it is, or a local folder created and
/// made absolute (Iceberg stores absolute locations).
fn warehouse_location(config: &Config, warehouse: &str) -> Result<Warehouse, Failure> {
    if let Some((scheme, _)) = warehouse.split_once("://") {
        match scheme {
            "s3" | "s3a" => return Ok(Warehouse::Object(warehouse.trim_end_matches('/').into())),
            "file" => {}
            other => {
                return Err(Failure::said(format!(
                    "warehouse {warehouse}: `{other}://` is not supported; use a local folder or \
                     s3://bucket/prefix"
                )))
            }
        }
    }
    let dir = config.resolve(warehouse.trim_start_matches("file://"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::of(format!("creating {}", dir.display()), e))?;
    absolute(&dir).map(Warehouse::Local)
}

fn absolute(path: &Path) -> Result<String, Failure> {
    std::path::absolute(path)
        .map(|p| p.display().to_string())
        .map_err(|e| Failure::of(format!("resolving {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_settings_become_client_properties_over_the_extra_ones() {
        let catalog: CatalogConfig = serde_yaml::from_str(
            "type: rest\nuri: https://catalog.example/\nwarehouse: analytics\nprefix: ws/analytics\n\
             credential: id:secret\nproperties: { scope: 'PRINCIPAL_ROLE:ALL', prefix: other }\n",
        )
        .expect("a REST catalog");
        let storage = HashMap::from([("s3.region".to_string(), "eu-west-1".to_string())]);
        let props = rest_properties(&catalog, &storage);
        let get = |key: &str| props.get(key).map(String::as_str);
        assert_eq!(get("uri"), Some("https://catalog.example"));
        assert_eq!(get("warehouse"), Some("analytics"));
        assert_eq!(
            get("prefix"),
            Some("ws/analytics"),
            "the named setting wins"
        );
        assert_eq!(get("credential"), Some("id:secret"));
        assert_eq!(get("scope"), Some("PRINCIPAL_ROLE:ALL"));
        assert_eq!(get("s3.region"), Some("eu-west-1"));
        assert_eq!(get("token"), None);
    }

    #[tokio::test]
    async fn the_rest_client_speaks_https() {
        // Without a TLS feature reqwest refuses an `https://` URL before connecting; with one,
        // a closed port is a connection error.
        let client = http_client().ok().expect("a client");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let error = client
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("nothing listens");
        assert!(error.is_connect() && !error.is_builder(), "{error:?}");
    }
}
