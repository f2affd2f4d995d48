//! The compare-and-swap of a table's catalog pointer, for commits iceberg-rust 0.10.1 has no
//! action for (a `replace` snapshot): the new metadata lands only if the table is still the
//! one the commit was built on.
//!
//! SQL catalogs (SQLite, PostgreSQL): the new metadata file is written next to the old one and
//! the row moves with `UPDATE … WHERE metadata_location = <the one read>`, exactly as
//! iceberg-catalog-sql's own commits do, so both kinds of commit exclude each other. REST: the
//! commit request with its requirements (table UUID, the branch's snapshot), which the server
//! checks; 409 is a conflict.

use std::collections::HashMap;
use std::str::FromStr;

use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableRequirement, TableUpdate};
use serde::Deserialize;

use crate::config::{CatalogConfig, Config, SinkConfig};

/// Why a swap did not land.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// Another writer moved the table on first; nothing was changed.
    #[error("another writer committed to {table} first")]
    Conflict { table: String },
    /// The new metadata could not be built or written.
    #[error("{table}: building the new metadata")]
    Metadata {
        table: String,
        #[source]
        source: iceberg::Error,
    },
    /// The catalog database failed.
    #[error("{table}: updating the catalog's pointer")]
    Database {
        table: String,
        #[source]
        source: sqlx::Error,
    },
    /// The REST catalog failed or refused the commit.
    #[error("{table}: REST commit: {what}")]
    Rest {
        table: String,
        what: String,
        #[source]
        source: Option<reqwest::Error>,
    },
}

/// How the catalog of a pipeline's sink moves a table's pointer.
pub enum PointerSwap {
    /// A SQL catalog's `iceberg_tables` row.
    Sql { pool: sqlx::AnyPool, postgres: bool },
    /// A REST catalog's commit endpoint.
    Rest(RestCommits),
}

impl PointerSwap {
    /// Connects to the catalog `sink` is configured with.
    pub async fn open(config: &Config, sink: &SinkConfig) -> Result<Self, SwapError> {
        let database = |source| SwapError::Database {
            table: sink.namespace.clone(),
            source,
        };
        sqlx::any::install_default_drivers();
        match &sink.catalog {
            CatalogConfig::Sqlite { path, .. } => {
                let url = crate::catalog::sqlite_url(config, path)
                    .map_err(|e| database(sqlx::Error::Configuration(Box::new(e))))?;
                let pool = sqlx::any::AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .map_err(database)?;
                Ok(Self::Sql {
                    pool,
                    postgres: false,
                })
            }
            CatalogConfig::Postgres { uri, .. } => {
                let pool = sqlx::any::AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(uri)
                    .await
                    .map_err(database)?;
                Ok(Self::Sql {
                    pool,
                    postgres: true,
                })
            }
            CatalogConfig::Rest { .. } => {
                let props = crate::catalog::rest_client_properties(sink);
                Ok(Self::Rest(RestCommits::connect(props).await.map_err(
                    |(what, source)| SwapError::Rest {
                        table: sink.namespace.clone(),
                        what,
                        source,
                    },
                )?))
            }
        }
    }

    /// Applies `updates` to `table` if the catalog still points at `table`'s metadata (and the
    /// `requirements` hold).
    pub async fn swap(
        &self,
        table: &Table,
        updates: Vec<TableUpdate>,
        requirements: Vec<TableRequirement>,
    ) -> Result<(), SwapError> {
        let label = table.identifier().to_string();
        match self {
            PointerSwap::Sql { pool, postgres } => {
                let metadata_error = |source| SwapError::Metadata {
                    table: label.clone(),
                    source,
                };
                let current = table.metadata_location_result().map_err(metadata_error)?;
                let mut builder = table
                    .metadata()
                    .clone()
                    .into_builder(Some(current.to_string()));
                for update in updates {
                    builder = update.apply(builder).map_err(metadata_error)?;
                }
                let metadata: TableMetadata = builder.build().map_err(metadata_error)?.metadata;
                let location = MetadataLocation::from_str(current)
                    .map_err(metadata_error)?
                    .with_next_version()
                    .with_new_metadata(&metadata);
                metadata
                    .write_to(table.file_io(), &location)
                    .await
                    .map_err(metadata_error)?;
                let new_location = location.to_string();
                let ident = table.identifier();
                let sql = if *postgres {
                    "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
                     WHERE catalog_name = $3 AND table_name = $4 AND table_namespace = $5 \
                     AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = $6"
                } else {
                    "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
                     WHERE catalog_name = ? AND table_name = ? AND table_namespace = ? \
                     AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = ?"
                };
                let result = sqlx::query(sql)
                    .bind(&new_location)
                    .bind(current)
                    .bind(crate::catalog::CATALOG_NAME)
                    .bind(ident.name())
                    .bind(ident.namespace().join("."))
                    .bind(current)
                    .execute(pool)
                    .await;
                match result {
                    Ok(done) if done.rows_affected() == 1 => Ok(()),
                    outcome => {
                        // The metadata file is nobody's: the pointer never moved to it.
                        let _ = table.file_io().delete(&new_location).await;
                        match outcome {
                            Ok(_) => Err(SwapError::Conflict { table: label }),
                            Err(source) => Err(SwapError::Database {
                                table: label,
                                source,
                            }),
                        }
                    }
                }
            }
            PointerSwap::Rest(rest) => rest.commit(table, updates, requirements).await,
        }
    }
}

/// Commits through a REST catalog's `POST /v1/{prefix}/namespaces/{ns}/tables/{table}`.
pub struct RestCommits {
    client: reqwest::Client,
    uri: String,
    prefix: Option<String>,
    /// The client's properties, for a new token when the current one expires.
    props: HashMap<String, String>,
    token: tokio::sync::Mutex<Option<String>>,
}

#[derive(Deserialize)]
struct ServerConfig {
    #[serde(default)]
    defaults: HashMap<String, String>,
    #[serde(default)]
    overrides: HashMap<String, String>,
}

type RestFailure = (String, Option<reqwest::Error>);

impl RestCommits {
    /// Reads the server's configuration (its prefix) and gets a token, as the catalog client does.
    async fn connect(props: HashMap<String, String>) -> Result<Self, RestFailure> {
        let client = crate::catalog::rest_http_client()
            .map_err(|e| ("building the HTTP client".to_string(), Some(e)))?;
        let uri = props.get("uri").cloned().unwrap_or_default();
        let mut request = client.get(format!("{uri}/v1/config"));
        if let Some(warehouse) = props.get("warehouse") {
            request = request.query(&[("warehouse", warehouse)]);
        }
        let mut token = props.get("token").cloned();
        if let (None, Some(credential)) = (&token, props.get("credential")) {
            token = Some(exchange(&client, &uri, &props, credential).await?);
        }
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let server: ServerConfig = send(request, "reading /v1/config").await?;
        let mut merged = server.defaults;
        merged.extend(props);
        merged.extend(server.overrides);
        Ok(Self {
            client,
            uri: merged.get("uri").cloned().unwrap_or(uri),
            prefix: merged.get("prefix").cloned(),
            props: merged,
            token: tokio::sync::Mutex::new(token),
        })
    }

    /// A new token from the credential, when there is one (a maintainer runs for months; its
    /// first token expires).
    async fn renew_token(&self) -> Result<bool, RestFailure> {
        let Some(credential) = self
            .props
            .get("credential")
            .filter(|_| !self.props.contains_key("token"))
        else {
            return Ok(false);
        };
        let token = exchange(&self.client, &self.uri, &self.props, credential).await?;
        *self.token.lock().await = Some(token);
        Ok(true)
    }

    async fn commit(
        &self,
        table: &Table,
        updates: Vec<TableUpdate>,
        requirements: Vec<TableRequirement>,
    ) -> Result<(), SwapError> {
        let ident = table.identifier();
        let label = ident.to_string();
        let url = [
            Some(self.uri.as_str()),
            Some("v1"),
            self.prefix.as_deref(),
            Some("namespaces"),
            Some(&ident.namespace().to_url_string()),
            Some("tables"),
            Some(ident.name()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("/");
        let body = serde_json::json!({
            "identifier": { "namespace": ident.namespace().as_ref(), "name": ident.name() },
            "requirements": requirements,
            "updates": updates,
        });
        let mut renewed = false;
        let response = loop {
            let mut request = self.client.post(&url).json(&body);
            if let Some(token) = self.token.lock().await.as_ref() {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.map_err(|e| SwapError::Rest {
                table: label.clone(),
                what: "sending".into(),
                source: Some(e),
            })?;
            if response.status().as_u16() == 401 && !renewed {
                renewed = true;
                let rest_error = |(what, source)| SwapError::Rest {
                    table: label.clone(),
                    what,
                    source,
                };
                if self.renew_token().await.map_err(rest_error)? {
                    continue;
                }
            }
            break response;
        };
        match response.status().as_u16() {
            200 => Ok(()),
            409 => Err(SwapError::Conflict { table: label }),
            status => {
                let text = response.text().await.unwrap_or_default();
                Err(SwapError::Rest {
                    table: label,
                    what: format!("HTTP {status}: {text}"),
                    source: None,
                })
            }
        }
    }
}

/// OAuth2 client credentials (`id:secret` or a bare secret) for a bearer token.
async fn exchange(
    client: &reqwest::Client,
    uri: &str,
    props: &HashMap<String, String>,
    credential: &str,
) -> Result<String, RestFailure> {
    #[derive(Deserialize)]
    struct TokenResponse {
        access_token: String,
    }
    let endpoint = props
        .get("oauth2-server-uri")
        .cloned()
        .unwrap_or_else(|| format!("{uri}/v1/oauth/tokens"));
    let mut form = vec![("grant_type", "client_credentials")];
    match credential.split_once(':') {
        Some((id, secret)) => form.extend([("client_id", id), ("client_secret", secret)]),
        None => form.push(("client_secret", credential)),
    }
    form.push((
        "scope",
        props.get("scope").map_or("catalog", String::as_str),
    ));
    let token: TokenResponse = send(client.post(endpoint).form(&form), "getting a token").await?;
    Ok(token.access_token)
}

async fn send<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<T, RestFailure> {
    let response = request
        .send()
        .await
        .map_err(|e| (what.to_string(), Some(e)))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err((format!("{what}: HTTP {status}: {text}"), None));
    }
    response
        .json()
        .await
        .map_err(|e| (format!("{what}: unreadable answer"), Some(e)))
}
