//! Apache Superset 6.1.0 (installed by `scripts/superset.sh install`) over the SQL endpoint of
//! `serve`: the script provisions the Campaign performance dashboard, every chart's data as
//! Superset's chart-data API returns it equals the tables' values read through `query`, and the
//! dashboard drawn in headless Chromium shows every chart and the tables' totals.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::sql::{Served, PASSWORD};
use common::{free_port, repo_root, text};
use serde_json::Value;

/// Superset on a port of its own, its state in a folder of its own; stopped on drop.
struct Superset {
    home: tempfile::TempDir,
    port: u16,
    sql_uri: String,
}

impl Superset {
    fn script(&self, args: &[&str]) -> Output {
        Command::new(repo_root().join("scripts/superset.sh"))
            .args(args)
            .env("SUPERSET_HOME", self.home.path())
            .env("SUPERSET_PORT", self.port.to_string())
            .env("SUPERSET_ADMIN_USER", "admin")
            .env("SUPERSET_ADMIN_PASSWORD", "admin-test-password")
            .env("SUPERSET_WORKERS", "2")
            .env("CAMPAIGN_SQL_URI", &self.sql_uri)
            .output()
            .expect("scripts/superset.sh")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.script(args);
        assert!(out.status.success(), "superset.sh {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn chart_rows(&self, chart: &str) -> Vec<Value> {
        let rows: Value = serde_json::from_str(&self.ok(&["chart-data", chart, "--rows"]))
            .unwrap_or_else(|e| panic!("chart-data {chart}: {e}"));
        rows.as_array().expect("rows").clone()
    }
}

impl Drop for Superset {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
    }
}

/// `query --format json` of `sql`.
fn query(served: &Served, sql: &str) -> Vec<Value> {
    let out = served.pipeline.cli(&["query", "--format", "json", sql]);
    assert!(out.status.success(), "{sql}: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("query's JSON")
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

/// Asserts that `rows` and `want` hold the same rows, matched by `key`, every column of `want`
/// equal (numbers to a relative 1e-9: Superset sums in another order).
fn assert_same(chart: &str, rows: &[Value], want: &[Value], key: &[&str]) {
    let by_key = |rows: &[Value]| -> std::collections::BTreeMap<String, Value> {
        rows.iter()
            .map(|r| {
                (
                    key.iter()
                        .map(|k| r[k].to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                    r.clone(),
                )
            })
            .collect()
    };
    let (got, expected) = (by_key(rows), by_key(want));
    assert_eq!(got.len(), rows.len(), "{chart}: duplicate keys");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{chart}: rows"
    );
    for (k, w) in &expected {
        for (column, value) in w.as_object().unwrap() {
            assert!(
                close(&got[k][column], value),
                "{chart} {k} {column}: Superset {} vs tables {value}",
                got[k][column]
            );
        }
    }
}

/// Rows as a results grid shows them (every cell text) in `query --format json`'s terms: numbers
/// without their thousands separators, times `2026-12-04 21:00:00` as `2026-12-04T21:00:00Z`.
fn as_shown(rows: &Value) -> Vec<Value> {
    let typed = |text: &str| -> Value {
        let plain = text.replace(',', "");
        if let Ok(n) = plain.parse::<i64>() {
            return n.into();
        }
        if let Ok(x) = plain.parse::<f64>() {
            return x.into();
        }
        match chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
            Ok(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string().into(),
            Err(_) => text.into(),
        }
    };
    rows.as_array()
        .expect("rows shown")
        .iter()
        .map(|row| {
            row.as_object()
                .expect("a row shown")
                .iter()
                .map(|(column, cell)| (column.clone(), typed(cell.as_str().unwrap_or_default())))
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect()
}

fn screenshot_folder() -> PathBuf {
    let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join("superset");
    std::fs::create_dir_all(&folder).unwrap();
    folder
}

#[test]
fn superset_dashboard_over_the_sql_endpoint_shows_the_tables_values() {
    let served = Served::start();
    let superset = Superset {
        home: tempfile::tempdir().unwrap(),
        port: free_port(),
        sql_uri: format!(
            "postgresql+psycopg2://analyst:{PASSWORD}@127.0.0.1:{}/campaigns",
            served.sql_port
        ),
    };
    superset.ok(&["start"]);
    let provisioned = superset.home.path().join("provisioned.json");
    superset.ok(&["provision", "--out", provisioned.to_str().unwrap()]);
    let provisioned: Value = serde_json::from_slice(&std::fs::read(&provisioned).unwrap()).unwrap();
    let charts: Vec<&String> = provisioned["charts"].as_object().unwrap().keys().collect();
    assert_eq!(charts.len(), 5, "{charts:?}");

    // Every chart's data equals the tables'.
    let totals = query(
        &served,
        "SELECT sum(impressions) AS total_impressions, sum(clicks) AS total_clicks, \
         sum(conversions) AS total_conversions, sum(revenue) AS total_revenue, \
         100.0 * sum(clicks) / nullif(sum(impressions), 0) AS ctr_pct, \
         100.0 * sum(conversions) / nullif(sum(clicks), 0) AS cvr_pct FROM campaign_metrics",
    );
    assert!(totals[0]["total_impressions"].as_u64().unwrap() > 0);
    assert_same("Totals", &superset.chart_rows("Totals"), &totals, &[]);
    for (chart, expr, column) in [
        (
            "CTR % per campaign",
            "100.0 * sum(clicks) / nullif(sum(impressions), 0)",
            "ctr_pct",
        ),
        (
            "CVR % per campaign",
            "100.0 * sum(conversions) / nullif(sum(clicks), 0)",
            "cvr_pct",
        ),
        ("Revenue per campaign", "sum(revenue)", "total_revenue"),
    ] {
        let want = query(
            &served,
            &format!(
                "SELECT date_trunc('minute', window_start) AS window_start, campaign_id, \
                 {expr} AS {column} FROM campaign_metrics GROUP BY 1, 2"
            ),
        );
        assert!(want.len() > 4, "{chart}: several windows");
        assert_same(
            chart,
            &superset.chart_rows(chart),
            &want,
            &["window_start", "campaign_id"],
        );
    }
    let top = superset.chart_rows("Top campaigns by revenue");
    let want = query(
        &served,
        "SELECT campaign_id, sum(revenue) AS total_revenue FROM campaign_metrics \
         GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
    );
    assert_same("Top campaigns by revenue", &top, &want, &["campaign_id"]);
    let order = |rows: &[Value]| {
        rows.iter()
            .map(|r| r["campaign_id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(order(&top), order(&want), "ranked by revenue");

    // What a user does on their own, clicked in Chromium: SQL Lab's schema browser and a query
    // typed there, a physical dataset made by picking the table (Superset reads its columns
    // through SQLAlchemy's inspector), and a chart on it with the time range "Last day" and an
    // hour grain, saved onto the dashboard. Every value shown equals the tables'.
    let user: Value = serde_json::from_str(&superset.ok(&["as-a-user"])).expect("as-a-user JSON");
    let browsed: Vec<&str> = user["browser"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for entry in ["campaigns", "campaign_events", "campaign_metrics"] {
        assert!(browsed.contains(&entry), "schema browser: {browsed:?}");
    }
    assert!(
        browsed.iter().any(|e| e.starts_with("window_start")),
        "the table's columns shown: {browsed:?}"
    );
    let sql_lab = query(
        &served,
        "SELECT campaign_id, SUM(impressions) AS impressions FROM campaign_metrics \
         GROUP BY campaign_id ORDER BY campaign_id",
    );
    assert_same(
        "SQL Lab",
        &as_shown(&user["sqllab"]),
        &sql_lab,
        &["campaign_id"],
    );
    let columns = user["dataset"]["columns"].as_array().unwrap();
    let window_start = columns
        .iter()
        .find(|c| c["name"] == "window_start")
        .expect("window_start");
    assert_eq!(window_start["type"], "TIMESTAMP WITH TIME ZONE", "{user}");
    assert_eq!(
        window_start["is_dttm"], true,
        "a time column for the time filter"
    );
    assert_eq!(user["chart"]["on_dashboard"], true, "{user}");
    let chart_sql = user["chart"]["query"].as_str().unwrap();
    assert!(
        chart_sql.contains("DATE_TRUNC('hour', window_start)")
            && chart_sql.contains("'YYYY-MM-DD HH24:MI:SS.US'"),
        "{chart_sql}"
    );
    let bounds: Vec<&str> = chart_sql
        .split("TO_TIMESTAMP('")
        .skip(1)
        .map(|rest| rest.split('\'').next().unwrap())
        .collect();
    assert_eq!(bounds.len(), 2, "{chart_sql}");
    let last_day = query(
        &served,
        &format!(
            "SELECT date_trunc('hour', window_start) AS window_start, \
             sum(impressions) AS \"SUM(impressions)\" FROM campaign_metrics \
             WHERE window_start >= TIMESTAMP '{}' AND window_start < TIMESTAMP '{}' GROUP BY 1",
            bounds[0], bounds[1]
        ),
    );
    assert!(
        !last_day.is_empty(),
        "the last day holds the served windows"
    );
    assert_same(
        "Impressions per hour (last day), shown in Explore",
        &as_shown(&user["chart_shown"]),
        &last_day,
        &["window_start"],
    );
    assert_same(
        "Impressions per hour (last day), saved",
        user["chart"]["rows"].as_array().unwrap(),
        &last_day,
        &["window_start"],
    );

    // The dashboard in headless Chromium: every chart drawn (the user's too), the totals shown
    // are the tables'.
    let png = screenshot_folder().join("campaign-performance.png");
    let report: Value =
        serde_json::from_str(&superset.ok(&["screenshot", "--out", png.to_str().unwrap()]))
            .expect("screenshot's JSON report");
    assert_eq!(report["ok"], true, "{report}");
    let drawn = report["charts"].as_array().expect("charts");
    assert_eq!(drawn.len(), 6, "{report}");
    for chart in drawn {
        assert_eq!(chart["state"], "rendered", "{chart}");
    }
    for column in ["total_impressions", "total_clicks", "total_conversions"] {
        assert_eq!(
            report["totals"][column], totals[0][column],
            "shown {column}"
        );
    }
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
}
