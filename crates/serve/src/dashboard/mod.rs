//! The campaign dashboard: one page (CTR %, CVR % and revenue per campaign over the last
//! windows, totals, pipeline health) refreshed from a small JSON API over the Iceberg tables,
//! charts drawn as SVG on the server (no CDN), and Prometheus metrics at `/metrics`.

pub mod api;
pub mod chart;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use crate::common::error::Causes;
use crate::config::{Config, PipelineConfig};
use crate::query::QueryError;
use crate::telemetry::Telemetry;
use api::{Api, Range};

/// Default address: 8088 belongs to Superset, which reads the same tables through the SQL
/// endpoint.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

const PAGE: &str = include_str!("page.html");

/// Errors of the dashboard server.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The tables could not be opened.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The address could not be bound.
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves the dashboard on `listen` until `shutdown` becomes true.
pub async fn serve(
    config: &Config,
    pipeline: &PipelineConfig,
    listen: SocketAddr,
    telemetry: Option<Arc<Telemetry>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DashboardError> {
    let api = Arc::new(Api::open(config, pipeline, telemetry).await?);
    let app = router(api);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DashboardError::Listen {
            address: listen,
            source,
        })?;
    tracing::info!(
        "dashboard on http://{listen}/ (JSON API under /api, Prometheus metrics at /metrics)"
    );
    campaign_http::serve(listener, app, LIMITS, async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await;
    Ok(())
}

/// What the dashboard allows its clients: a few people and their browsers, each page a handful
/// of requests; a query's own time and memory are bounded by the query engine's limits.
const LIMITS: campaign_http::ServerLimits = campaign_http::ServerLimits {
    max_connections: 256,
    header_timeout: std::time::Duration::from_secs(10),
    shutdown_grace: std::time::Duration::from_secs(5),
};

fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/campaigns", get(campaigns))
        .route("/api/windows", get(windows))
        .route("/api/totals", get(totals))
        .route("/api/health", get(health))
        .route("/api/chart.svg", get(chart))
        .route("/metrics", get(metrics))
        .with_state(api)
}

type Shared = State<Arc<Api>>;

async fn campaigns(State(api): Shared, Query(range): Query<Range>) -> Response {
    reply(api.campaigns(&range).await)
}

async fn windows(State(api): Shared, Query(range): Query<Range>) -> Response {
    reply(api.windows(&range).await)
}

async fn totals(State(api): Shared, Query(range): Query<Range>) -> Response {
    reply(api.totals(&range).await)
}

async fn health(State(api): Shared) -> Response {
    reply(api.health().await)
}

async fn chart(State(api): Shared, Query(range): Query<Range>) -> Response {
    match api.windows(&range).await {
        Ok(rows) => (
            [(header::CONTENT_TYPE, "image/svg+xml")],
            chart::render(&rows, range.metric()),
        )
            .into_response(),
        Err(err) => error(err),
    }
}

async fn metrics(State(api): Shared) -> Response {
    let body = api.telemetry().map(|t| t.encode()).unwrap_or_else(|| {
        "# the pipeline's metrics are served by `campaign-pipeline run --dashboard`\n# EOF\n"
            .to_string()
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn reply<T: serde::Serialize>(result: Result<T, QueryError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(err) => error(err),
    }
}

fn error(err: QueryError) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": Causes(&err).to_string() })),
    )
        .into_response()
}
