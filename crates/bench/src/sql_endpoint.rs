//! SQL endpoint latency: 10 concurrent PostgreSQL clients (sqlx, the extended protocol) run
//! the queries Superset sends for the Campaign performance dashboard, against the tables the
//! end-to-end benchmark filled; the same queries run in process, one at a time, are the
//! baseline.

use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::config::{Config, PipelineConfig};
use crate::pipeline;
use crate::sql_server::{Credentials, SqlServer};

/// Concurrent clients, as the design's "10 users".
const CLIENTS: usize = 10;
/// Dashboard loads per client.
const ROUNDS: usize = 5;

/// The virtual dataset Superset's queries read, inlined as it sends it.
const DATASET: &str = "(SELECT campaign_id, window_start, impressions, clicks, conversions, \
     revenue FROM campaign_metrics) AS virtual_table";

/// Superset's queries for one dashboard view: the Totals table, three time series per
/// campaign at minute grain, the top campaigns by revenue.
fn dashboard() -> Vec<(&'static str, String)> {
    let series = |metric: &str, alias: &str| {
        format!(
            "SELECT DATE_TRUNC('MINUTE', window_start) AS window_start, campaign_id AS campaign_id, \
             {metric} AS {alias} FROM {DATASET} \
             GROUP BY DATE_TRUNC('MINUTE', window_start), campaign_id ORDER BY {alias} DESC LIMIT 50000"
        )
    };
    let ctr = "100.0 * SUM(clicks) / NULLIF(SUM(impressions), 0)";
    let cvr = "100.0 * SUM(conversions) / NULLIF(SUM(clicks), 0)";
    vec![
        (
            "totals",
            format!(
                "SELECT SUM(impressions) AS total_impressions, SUM(clicks) AS total_clicks, \
                 SUM(conversions) AS total_conversions, SUM(revenue) AS total_revenue, \
                 {ctr} AS ctr_pct, {cvr} AS cvr_pct FROM {DATASET} LIMIT 50000"
            ),
        ),
        ("CTR % per campaign", series(ctr, "ctr_pct")),
        ("CVR % per campaign", series(cvr, "cvr_pct")),
        (
            "revenue per campaign",
            series("SUM(revenue)", "total_revenue"),
        ),
        (
            "top campaigns by revenue",
            format!(
                "SELECT campaign_id AS campaign_id, SUM(revenue) AS total_revenue FROM {DATASET} \
                 GROUP BY campaign_id ORDER BY total_revenue DESC LIMIT 10"
            ),
        ),
    ]
}

/// Adds the latency rows to the table.
pub async fn measure(
    config: &Config,
    pipeline: &PipelineConfig,
    events: u64,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    // The baseline: the same statements in process, one at a time (after one warm-up run).
    let queries = dashboard();
    let session = crate::query::session(config, pipeline).await?;
    let mut baseline = vec![Vec::new(); queries.len()];
    for round in 0..=ROUNDS {
        for (i, (_, sql)) in queries.iter().enumerate() {
            let t = Instant::now();
            crate::query::run(&session, sql).await?;
            if round > 0 {
                baseline[i].push(t.elapsed());
            }
        }
    }

    let password = uuid::Uuid::new_v4().to_string();
    let server = SqlServer::bind_with(
        config,
        pipeline,
        ([127, 0, 0, 1], 0).into(),
        Credentials::new("bench".into(), &password),
    )
    .await?;
    let url = format!(
        "postgresql://bench:{password}@{}/{}",
        server.local_addr()?,
        pipeline.sink.namespace
    );
    let (stop, shutdown) = pipeline::shutdown_channel();
    let serving = tokio::spawn(server.serve(shutdown));
    // One untimed view warms the catalog and the table metadata.
    view(&url, 1).await?;
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { view(&url, ROUNDS).await })
        })
        .map(|client| async move { client.await? })
        .collect();
    let mut times = vec![Vec::new(); queries.len()];
    let mut views = Vec::new();
    for client in futures::future::join_all(clients).await {
        let (per_query, per_view) = client?;
        for (all, these) in times.iter_mut().zip(per_query) {
            all.extend(these);
        }
        views.extend(per_view);
    }
    let wall = started.elapsed();
    let _ = stop.send(true);
    let _ = serving.await;

    row(
        &format!(
            "SQL endpoint, {CLIENTS} concurrent PostgreSQL clients, Superset's dashboard queries, tables of {events} events"
        ),
        format!(
            "{} views of {} queries in {:.1}s; a whole view p50 {:.0} ms, p95 {:.0} ms",
            views.len(),
            queries.len(),
            wall.as_secs_f64(),
            ms(p(&mut views, 0.50)),
            ms(p(&mut views, 0.95)),
        ),
    );
    for ((name, _), (mut served, mut local)) in queries.iter().zip(times.into_iter().zip(baseline))
    {
        let local_p50 = p(&mut local, 0.50);
        let served_p50 = p(&mut served, 0.50);
        row(
            &format!("  {name}: p50 / p95 through the endpoint (in process, alone: p50)"),
            format!(
                "{:.1} / {:.1} ms ({:.1} ms; {:.1}x)",
                ms(served_p50),
                ms(p(&mut served, 0.95)),
                ms(local_p50),
                served_p50.as_secs_f64() / local_p50.as_secs_f64().max(1e-9),
            ),
        );
    }
    Ok(())
}

/// One client: `rounds` dashboard views on one connection; the time of each query (by query)
/// and of each whole view.
async fn view(url: &str, rounds: usize) -> anyhow::Result<(Vec<Vec<Duration>>, Vec<Duration>)> {
    let queries = dashboard();
    let mut connection = sqlx::postgres::PgConnection::connect(url).await?;
    let mut per_query = vec![Vec::new(); queries.len()];
    let mut per_view = Vec::new();
    for _ in 0..rounds {
        let view_started = Instant::now();
        for (i, (name, sql)) in queries.iter().enumerate() {
            let t = Instant::now();
            let rows = sqlx::query(sql.as_str()).fetch_all(&mut connection).await;
            let rows = rows.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            anyhow::ensure!(!rows.is_empty(), "{name} returned no rows");
            per_query[i].push(t.elapsed());
        }
        per_view.push(view_started.elapsed());
    }
    connection.close().await?;
    Ok((per_query, per_view))
}

fn p(times: &mut [Duration], q: f64) -> Duration {
    times.sort_unstable();
    super::quantile(times, q)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
