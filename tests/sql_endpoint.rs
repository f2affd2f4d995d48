//! The PostgreSQL-wire SQL endpoint of `serve`, with real PostgreSQL clients (psql from
//! Debian's postgresql-client, psycopg2 from the Superset environment) on a pipeline's tables:
//! the numbers equal `query`'s, the catalog queries BI tools send on connect answer, writes
//! and a wrong password are refused, and the statement limits stop a query with an error.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sql::{normalized, Served, PASSWORD};
use common::{installed, text};

/// Statements a dashboard runs, each returning a few rows of plain numbers and names.
const DASHBOARD: [&str; 4] = [
    "SELECT campaign_id, sum(impressions) AS impressions, sum(clicks) AS clicks, \
     sum(conversions) AS conversions, round(sum(revenue), 2) AS revenue, \
     round(100.0 * sum(clicks) / sum(impressions), 4) AS ctr \
     FROM campaign_metrics GROUP BY campaign_id ORDER BY campaign_id",
    "SELECT count(*) AS windows, count(DISTINCT window_start) AS starts, CAST(min(window_start) AS VARCHAR) AS first \
     FROM campaign_metrics",
    "SELECT event_type, count(*) AS events, round(sum(revenue), 2) AS revenue \
     FROM campaign_events GROUP BY event_type ORDER BY event_type",
    "SELECT campaign_id, round(sum(revenue), 2) AS revenue FROM campaign_metrics \
     GROUP BY campaign_id ORDER BY revenue DESC LIMIT 3",
];

#[test]
fn psql_and_psycopg_read_what_query_reads_and_nothing_else_gets_in() {
    let served = Served::start();

    // The numbers equal `query`'s on the same tables.
    for sql in DASHBOARD {
        let want = served.query_rows(sql);
        assert!(!want.is_empty(), "{sql} returns rows");
        assert_eq!(served.psql_rows(sql), want, "{sql}");
    }
    let events = served.psql_rows("SELECT count(*) FROM campaign_events");
    assert_eq!(
        events,
        served.query_rows("SELECT count(*) FROM campaign_events")
    );
    assert!(events[0].parse::<u64>().unwrap() > 15_000, "{events:?}");

    // What BI tools send on connect.
    let version = served.psql_rows("SELECT version()");
    assert!(version[0].contains("PostgreSQL"), "{version:?}");
    assert_eq!(served.psql_rows("SELECT current_schema()"), ["campaigns"]);
    assert_eq!(served.psql_rows("SHOW transaction_isolation").len(), 1);
    served.psql_rows("SET application_name = 'superset'");
    served.psql_rows("SET extra_float_digits = 3");
    let tables = served.psql_rows(
        "SELECT table_name FROM information_schema.tables \
         WHERE table_schema = 'campaigns' ORDER BY table_name",
    );
    // iceberg-datafusion also lists each table's snapshots and manifests as tables.
    let listed = [
        "campaign_events",
        "campaign_events$manifests",
        "campaign_events$snapshots",
        "campaign_metrics",
        "campaign_metrics$manifests",
        "campaign_metrics$snapshots",
    ];
    assert_eq!(tables, listed);
    let in_pg_class = served.psql_rows(
        "SELECT c.relname FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'campaigns' ORDER BY c.relname",
    );
    assert_eq!(in_pg_class, listed);

    // Time travel, as `query --snapshot` reads it, and before the first commit: empty.
    let first = served.psql_rows(
        "SELECT snapshot_id FROM \"campaign_metrics$snapshots\" ORDER BY committed_at LIMIT 1",
    );
    let at_first = served.psql_rows(&format!(
        "SELECT count(*), sum(impressions) FROM table_at_snapshot('campaign_metrics', {})",
        first[0]
    ));
    let out = served.pipeline.cli(&[
        "query",
        "--format",
        "csv",
        "--snapshot",
        &first[0],
        "SELECT count(*), sum(impressions) FROM campaign_metrics",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let want: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| normalized(&l.replace(',', ";")))
        .collect();
    assert_eq!(at_first, want);
    assert_eq!(
        served.psql_rows(
            "SELECT count(*) FROM table_as_of('campaign_events', '2000-01-01T00:00:00Z')"
        ),
        ["0"]
    );

    // Writes and DDL are refused with PostgreSQL's read-only error, and change nothing.
    for sql in [
        "INSERT INTO campaign_metrics (campaign_id) VALUES ('intruder')",
        "DELETE FROM campaign_events",
        "DROP TABLE campaign_events",
        "CREATE TABLE stolen AS SELECT * FROM campaign_events",
        "SET datafusion.execution.target_partitions = 1",
    ] {
        let out = served.psql(sql);
        assert!(!out.status.success(), "{sql} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("read-only") || err.contains("cannot be changed"),
            "{sql}: {err}"
        );
    }
    assert_eq!(
        served.psql_rows("SELECT count(*) FROM campaign_events"),
        events
    );

    // A wrong password and an unknown user are refused.
    for url in [
        served.url("wrong"),
        format!(
            "postgresql://nobody:{PASSWORD}@127.0.0.1:{}/campaigns",
            served.sql_port
        ),
    ] {
        let out = Command::new("psql")
            .args([&url, "-X", "-c", "SELECT 1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("authentication failed"), "{err}");
    }

    // A statement over the time limit is cancelled with an error (3 s here; unbounded, this
    // cross join counts 8·10¹² rows).
    let started = Instant::now();
    let out = served.psql(
        "SELECT count(*) FROM campaign_events a, campaign_events b, \
         (SELECT 1 FROM campaign_events LIMIT 20000) c",
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("statement timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // A result over the row limit fails instead of being sent.
    let out = served.psql("SELECT * FROM campaign_events");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more than 5000 rows"), "{err}");
    // The endpoint still serves after both.
    assert_eq!(
        served.psql_rows("SELECT count(*) FROM campaign_events"),
        events
    );

    // psycopg2 (the driver Superset uses), from 10 threads at once: the same numbers.
    let python = installed("SUPERSET_PYTHON", "superset.sh", "python");
    let script = common::repo_root().join("tests/sql/concurrent_clients.py");
    let child = Command::new(python)
        .arg(script)
        .arg(served.url(PASSWORD))
        .arg("10")
        .args(DASHBOARD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let answers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, sql) in DASHBOARD.iter().enumerate() {
        let want = served.query_rows(sql);
        let got: Vec<String> = answers[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| normalized(row.as_str().unwrap()))
            .collect();
        assert_eq!(got, want, "psycopg2: {sql}");
    }
}
