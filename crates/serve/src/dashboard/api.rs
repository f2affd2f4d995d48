//! The dashboard's JSON API: SQL over the Iceberg tables through the same engine as `query`.
//!
//! - `GET /api/campaigns?windows=N` campaigns ranked by revenue over the last N windows
//! - `GET /api/windows?windows=N&campaign=C` each window's metrics, oldest first
//! - `GET /api/totals?windows=N&campaign=C` totals over the range
//! - `GET /api/health` last commit, events/s, lag, dead letters, table sizes

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::format_micros;
use crate::common::summary::{self, WatermarkSummary};
use crate::config::{Config, PipelineConfig};
use crate::query::{self, QueryError};
use crate::telemetry::{watermark_delay, Health, Telemetry};

/// Windows shown when the request does not say.
const DEFAULT_WINDOWS: usize = 30;

/// Query parameters shared by the endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Range {
    /// Campaign to show (all when absent or empty).
    pub campaign: Option<String>,
    /// How many of the newest windows.
    pub windows: Option<usize>,
    /// Chart metric: `ctr_percent`, `cvr_percent` or `revenue`.
    pub metric: Option<String>,
}

impl Range {
    fn windows(&self) -> usize {
        self.windows.unwrap_or(DEFAULT_WINDOWS).clamp(1, 10_000)
    }

    fn campaign_filter(&self) -> String {
        match self.campaign.as_deref().filter(|c| !c.is_empty()) {
            Some(campaign) => format!(" AND campaign_id = '{}'", campaign.replace('\'', "''")),
            None => String::new(),
        }
    }

    /// The chart metric (CTR by default).
    pub fn metric(&self) -> &str {
        match self.metric.as_deref() {
            Some(m @ ("ctr_percent" | "cvr_percent" | "revenue")) => m,
            _ => "ctr_percent",
        }
    }
}

/// One table's size and age, for the health panel.
#[derive(Debug, Clone, Serialize)]
pub struct TableHealth {
    /// Table name.
    pub table: String,
    /// Rows in the current snapshot.
    pub rows: i64,
    /// Snapshots kept.
    pub snapshots: i64,
    /// When the table last changed (RFC 3339).
    pub last_updated: String,
}

/// The health panel's figures.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReply {
    /// `run` when the dashboard runs inside the pipeline (live lag and dead letters), else
    /// `tables` (figures read from the tables' snapshots only).
    pub source: &'static str,
    /// Live figures from the running pipeline, when there is one.
    #[serde(flatten)]
    pub live: Health,
    /// The tables.
    pub tables: Vec<TableHealth>,
}

/// The API's state: one query session over the catalog, refreshed per query.
pub struct Api {
    ctx: SessionContext,
    config: Config,
    pipeline: PipelineConfig,
    telemetry: Option<Arc<Telemetry>>,
}

impl Api {
    /// Opens the pipeline's catalog.
    pub async fn open(
        config: &Config,
        pipeline: &PipelineConfig,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Result<Self, QueryError> {
        Ok(Self {
            ctx: query::session(config, pipeline).await?,
            config: config.clone(),
            pipeline: pipeline.clone(),
            telemetry,
        })
    }

    /// The running pipeline's metrics, when the dashboard runs inside it.
    pub fn telemetry(&self) -> Option<&Arc<Telemetry>> {
        self.telemetry.as_ref()
    }

    fn metrics_table(&self) -> &str {
        &self.pipeline.sink.metrics_table.name
    }

    /// `FROM ... WHERE` over the rows of the range's newest windows. One scan of the table
    /// (a `window_start IN (newest windows)` subquery would read every file twice, and the
    /// cost of a query follows the files it opens).
    fn last_windows(&self, range: &Range) -> String {
        format!(
            "(SELECT *, dense_rank() OVER (ORDER BY window_start DESC) AS window_recency \
             FROM {table}) AS recent WHERE window_recency <= {n}",
            table = self.metrics_table(),
            n = range.windows()
        )
    }

    /// Campaigns ranked by revenue over the range.
    pub async fn campaigns(&self, range: &Range) -> Result<Vec<Value>, QueryError> {
        let sql = format!(
            "SELECT campaign_id, {sums} FROM {last} GROUP BY campaign_id \
             ORDER BY revenue DESC, campaign_id",
            sums = SUMS,
            last = self.last_windows(range),
        );
        self.rows(&sql).await
    }

    /// Each window's metrics over the range, oldest first.
    pub async fn windows(&self, range: &Range) -> Result<Vec<Value>, QueryError> {
        let sql = format!(
            "SELECT campaign_id, CAST(window_start AS VARCHAR) AS window_start, \
             CAST(window_end AS VARCHAR) AS window_end, impressions, clicks, conversions, \
             revenue, ctr_percent, cvr_percent FROM {last}{campaign} \
             ORDER BY window_start, campaign_id",
            last = self.last_windows(range),
            campaign = range.campaign_filter(),
        );
        self.rows(&sql).await
    }

    /// Totals over the range (one campaign or all).
    pub async fn totals(&self, range: &Range) -> Result<Value, QueryError> {
        let sql = format!(
            "SELECT count(DISTINCT window_start) AS windows, \
             CAST(min(window_start) AS VARCHAR) AS from_time, \
             CAST(max(window_end) AS VARCHAR) AS to_time, {sums} \
             FROM {last}{campaign}",
            sums = SUMS,
            last = self.last_windows(range),
            campaign = range.campaign_filter(),
        );
        Ok(self
            .rows(&sql)
            .await?
            .into_iter()
            .next()
            .unwrap_or(Value::Null))
    }

    /// Pipeline health: live figures when running inside `run`, table figures always.
    pub async fn health(&self) -> Result<HealthReply, QueryError> {
        let tables = query::tables(&self.config, &self.pipeline).await?;
        let names = tables.column(0).as_string::<i32>();
        let rows = tables.column(2).as_primitive::<Int64Type>();
        let snapshots = tables.column(1).as_primitive::<Int64Type>();
        let updated = tables.column(4).as_primitive::<TimestampMillisecondType>();
        let tables: Vec<TableHealth> = (0..tables.num_rows())
            .map(|i| TableHealth {
                table: names.value(i).to_string(),
                rows: rows.value(i),
                snapshots: snapshots.value(i),
                last_updated: chrono::DateTime::from_timestamp_millis(updated.value(i))
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default(),
            })
            .collect();
        let (source, live) = match &self.telemetry {
            Some(t) => ("run", t.health()),
            None => ("tables", self.health_from_snapshots(&tables).await?),
        };
        Ok(HealthReply {
            source,
            live,
            tables,
        })
    }

    /// Last commit and events/s from the events table's two newest snapshots.
    async fn health_from_snapshots(&self, tables: &[TableHealth]) -> Result<Health, QueryError> {
        let events = &self.pipeline.sink.events_table.name;
        let mut health = Health {
            pipeline: self.pipeline.name.clone(),
            ..Health::default()
        };
        let Some(table) = tables.iter().find(|t| &t.table == events) else {
            return Ok(health);
        };
        health.last_commit = Some(table.last_updated.clone());
        let snapshots = query::snapshots(&self.config, &self.pipeline, events).await?;
        let n = snapshots.num_rows();
        if n >= 2 {
            let times = snapshots
                .column(2)
                .as_primitive::<TimestampMillisecondType>();
            let added = snapshots.column(4).as_primitive::<Int64Type>();
            let seconds = (times.value(n - 1) - times.value(n - 2)) as f64 / 1000.0;
            if seconds > 0.0 && added.is_valid(n - 1) {
                health.events_per_second = added.value(n - 1) as f64 / seconds;
            }
        }
        let metrics = &self.pipeline.sink.metrics_table.name;
        if tables.iter().any(|t| &t.table == metrics) {
            let snapshots = query::snapshots(&self.config, &self.pipeline, metrics).await?;
            let summaries = snapshots.column(7).as_string::<i32>();
            let watermark = (summaries.len() > 0)
                .then(|| summaries.value(summaries.len() - 1))
                .and_then(|text| {
                    serde_json::from_str::<BTreeMap<String, String>>(text)
                        .ok()?
                        .remove(summary::WATERMARK)
                })
                .and_then(|text| serde_json::from_str::<WatermarkSummary>(&text).ok())
                .and_then(|w| w.watermark);
            health.watermark_micros = watermark;
            health.watermark = watermark.and_then(format_micros);
            health.watermark_delay_seconds = watermark.map(watermark_delay);
        }
        Ok(health)
    }

    async fn rows(&self, sql: &str) -> Result<Vec<Value>, QueryError> {
        let batches: Vec<RecordBatch> = query::run(&self.ctx, sql).await?;
        let text = query::render(&batches, query::OutputFormat::Json)?;
        serde_json::from_str(&text)
            .map_err(|e| QueryError::Format(arrow::error::ArrowError::JsonError(e.to_string())))
    }
}

/// Sums and rates over windows: the totals the page shows.
const SUMS: &str = "CAST(sum(impressions) AS BIGINT) AS impressions, \
    CAST(sum(clicks) AS BIGINT) AS clicks, CAST(sum(conversions) AS BIGINT) AS conversions, \
    sum(revenue) AS revenue, \
    CAST(sum(clicks) AS DOUBLE) * 100.0 / nullif(sum(impressions), 0) AS ctr_percent, \
    CAST(sum(conversions) AS DOUBLE) * 100.0 / nullif(sum(clicks), 0) AS cvr_percent";
