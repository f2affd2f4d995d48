//! The PostgreSQL-wire SQL endpoint of `serve`, with real PostgreSQL clients (psql from
//! Debian's postgresql-client, psycopg2 from the Superset environment) on a pipeline's tables:
//! the numbers equal `query`'s, the catalog queries BI tools send on connect answer, writes
//! and a wrong password are refused, and the statement limits stop a query with an error.

use crate::common;

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

/// `VmHWM` (the kernel's high-water mark of resident memory) of a running process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// psql with SQLSTATE codes in its error messages (`ERROR:  53200: ...`).
fn psql_verbose(url: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([
            url,
            "--no-psqlrc",
            "-X",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql")
}

#[tokio::test(flavor = "multi_thread")]
async fn heavy_statements_fail_out_of_memory_while_run_sql_ingests_every_event_once() {
    use campaign_pipeline::config::Config;
    use campaign_pipeline::pipeline::memory::MemoryBound;
    use common::production::{assert_every_event_once_of, generate_20k, generate_20k_from};
    use common::sql::KillOnDrop;

    let pipeline = common::TestPipeline::new();
    const MAX_MEMORY: u64 = 192 << 20;
    pipeline.edit_config(|yaml| {
        format!(
            "{yaml}sql_endpoint:\n  statement_timeout: 120s\n  max_memory: 192MiB\n  \
             statement_memory: 64MiB\n  max_spill: 256MiB\n"
        )
    });
    assert!(pipeline.cli(&["setup"]).status.success());
    let first = generate_20k(&pipeline, 81);
    let run = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(run.status.success(), "{}", text(&run));

    // The runner with its SQL endpoint; then analysts' statements far over their share, while
    // 20,000 more events arrive.
    let sql_port = common::free_port();
    let mut runner = KillOnDrop(
        pipeline
            .command(&[
                "run",
                "--sql",
                "--sql-listen",
                &format!("127.0.0.1:{sql_port}"),
            ])
            .env("CAMPAIGN_SQL_PASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .spawn()
            .expect("start run --sql"),
    );
    let pid = runner.0.id();
    common::sql::wait_for_endpoint(sql_port);
    let url = format!("postgresql://campaign:{PASSWORD}@127.0.0.1:{sql_port}/campaigns");
    let hostile = [
        // The statement: 4·10⁸ distinct groups.
        "SELECT a.event_id || b.event_id AS k, count(*) AS n FROM campaign_events a, \
         campaign_events b GROUP BY 1 ORDER BY n DESC LIMIT 1",
        // A full sort of the same cross join (no LIMIT: it cannot keep only the top rows).
        "SELECT a.user_id || b.event_id AS k FROM campaign_events a, campaign_events b \
         ORDER BY k",
    ];
    let statements: Vec<_> = hostile
        .iter()
        .map(|sql| {
            let (url, sql) = (url.clone(), sql.to_string());
            std::thread::spawn(move || psql_verbose(&url, &sql))
        })
        .collect();
    let second = generate_20k_from(&pipeline, 82, "2026-01-02T00:00:00Z");
    let want = first.valid_events + second.valid_events;
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut peak = 0;
    loop {
        peak = peak.max(peak_rss(pid));
        let out = psql_verbose(&url, "SELECT count(*) FROM campaign_events");
        let count = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().parse::<u64>().ok());
        if count == Some(want) {
            break;
        }
        assert!(runner.0.try_wait().unwrap().is_none(), "the runner stopped");
        assert!(Instant::now() < deadline, "ingested {count:?} of {want}");
        std::thread::sleep(Duration::from_millis(250));
    }
    for (sql, statement) in hostile.iter().zip(statements) {
        let out = statement.join().unwrap();
        peak = peak.max(peak_rss(pid));
        assert!(!out.status.success(), "{sql} ran: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("ERROR:  53200: out of memory") && err.contains("sql_endpoint."),
            "{sql}: {err}"
        );
    }
    // The process is well: it answers, and its peak stayed under the endpoint's bound plus
    // the runner's own.
    let out = psql_verbose(&url, "SELECT count(*) FROM campaign_metrics");
    assert!(out.status.success(), "{}", text(&out));
    let config = Config::load(&pipeline.config).unwrap();
    let bound = MemoryBound::of(&config.pipelines[0]).total() + MAX_MEMORY;
    println!("peak RSS {} MiB, bound {} MiB", peak >> 20, bound >> 20);
    assert!(
        peak > 0 && peak < bound,
        "peak RSS {} MiB over {} MiB",
        peak >> 20,
        bound >> 20
    );
    assert!(runner.0.try_wait().unwrap().is_none(), "the runner stopped");
    drop(runner);
    let run = pipeline.cli(&["run", "--until-caught-up", "--flush-open-windows"]);
    assert!(run.status.success(), "{}", text(&run));
    assert_every_event_once_of(&pipeline, &[first, second]).await;
}

#[test]
fn with_a_certificate_the_endpoint_speaks_tls_and_refuses_plain_text() {
    use common::sql::KillOnDrop;
    let pipeline = common::TestPipeline::new();
    let dir = pipeline.dir.path();
    let made = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", text(&made));
    // A key that is not there is named before anything is served.
    pipeline.edit_config(|yaml| {
        format!("{yaml}sql_endpoint:\n  tls:\n    certificate: cert.pem\n    key: nokey.pem\n")
    });
    assert!(pipeline.cli(&["setup"]).status.success());
    let sql_port = common::free_port();
    let serve = |pipeline: &common::TestPipeline| {
        let mut command = pipeline.command(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", common::free_port()),
            "--sql-listen",
            &format!("127.0.0.1:{sql_port}"),
        ]);
        command
            .env("CAMPAIGN_SQL_PASSWORD", PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let out = serve(&pipeline).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nokey.pem") && err.contains("sql_endpoint.tls.key"),
        "{err}"
    );

    pipeline.edit_config(|yaml| yaml.replace("nokey.pem", "key.pem"));
    let _server = KillOnDrop(serve(&pipeline).stdout(Stdio::null()).spawn().unwrap());
    common::sql::wait_for_endpoint(sql_port);
    let psql = |mode: &str| {
        let target = format!(
            "host=localhost port={sql_port} dbname=campaigns user=campaign \
             password={PASSWORD} sslmode={mode} sslrootcert={}",
            dir.join("cert.pem").display()
        );
        Command::new("psql")
            .args([
                &target,
                "-X",
                "-A",
                "-t",
                "-c",
                "SELECT count(*) FROM campaign_events",
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap()
    };
    // verify-full: the server proved it holds the configured certificate's key.
    for mode in ["require", "verify-full"] {
        let out = psql(mode);
        assert!(out.status.success(), "{mode}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    }
    let out = psql("disable");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("requires TLS"), "{err}");
}

#[test]
fn bi_tools_browse_the_tables_and_superset_time_filters_and_grains_answer_as_query_does() {
    let served = Served::start();

    // SQLAlchemy's PostgreSQL inspector, with Superset's own SQLAlchemy and psycopg2: what its
    // dataset editor and SQL Lab's schema browser call. It needs pg_attribute's real types,
    // pg_type_is_visible (get_columns), pg_index's and pg_constraint's arrays and
    // generate_subscripts (get_pk_constraint, get_indexes, get_unique_constraints),
    // pg_class.reloptions and a boolean read from 'f' (get_indexes).
    let python = installed("SUPERSET_PYTHON", "superset.sh", "python");
    let script = common::repo_root().join("tests/sql/inspector.py");
    let out = Command::new(python)
        .arg(script)
        .arg(served.url(PASSWORD))
        .arg("campaigns")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["sqlalchemy"], "1.4.54", "Superset 6.1.0's own");
    assert_eq!(seen["default_schema"], "campaigns");
    assert!(seen["schemas"]
        .as_array()
        .unwrap()
        .contains(&"campaigns".into()));
    let tables: Vec<&str> = seen["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for table in ["campaign_events", "campaign_metrics"] {
        assert!(tables.contains(&table), "{tables:?}");
    }
    assert_eq!(seen["views"], serde_json::json!([]));
    let metrics = &seen["details"]["campaign_metrics"];
    let column = |name: &str| {
        metrics["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {metrics}"))
            .clone()
    };
    assert_eq!(column("window_start")["type"], "TIMESTAMP");
    assert_eq!(
        column("window_start")["timezone"],
        true,
        "timestamptz, not text"
    );
    assert_eq!(column("impressions")["type"], "BIGINT");
    assert_eq!(column("revenue")["type"], "DOUBLE_PRECISION");
    assert_eq!(column("campaign_id")["type"], "TEXT");
    let names: Vec<&str> = metrics["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let want = served.query_rows(
        "SELECT column_name FROM information_schema.columns \
         WHERE table_schema = 'campaigns' AND table_name = 'campaign_metrics' \
         ORDER BY ordinal_position",
    );
    assert_eq!(names, want);
    // Iceberg tables have no keys, indexes or constraints, and say so.
    for table in ["campaign_events", "campaign_metrics"] {
        let details = &seen["details"][table];
        assert_eq!(details["pk"]["constrained_columns"], serde_json::json!([]));
        for empty in ["foreign_keys", "indexes", "unique", "checks"] {
            assert_eq!(details[empty], serde_json::json!([]), "{table} {empty}");
        }
        assert_eq!(details["has_table"], true);
    }

    // psql's own catalog commands.
    let listed = served.psql_rows("\\dt");
    assert!(
        listed
            .iter()
            .any(|row| row.starts_with("campaigns;campaign_events;table")),
        "{listed:?}"
    );
    let described = served.psql_rows("\\d campaign_events");
    assert!(
        described
            .iter()
            .any(|row| row.starts_with("timestamp;timestamp with time zone")),
        "{described:?}"
    );
    assert!(
        described
            .iter()
            .any(|row| row.starts_with("revenue;double precision")),
        "{described:?}"
    );
    assert!(!served.psql_rows("\\l").is_empty());

    // Superset's time-range filter (PostgreSQL's TO_TIMESTAMP templates) and time grains
    // (DATE_TRUNC) give what `query` gives for the same bounds and grains.
    let starts = served.query_rows(
        "SELECT CAST(min(window_start) AS VARCHAR), CAST(max(window_start) AS VARCHAR) \
         FROM campaign_metrics",
    );
    let (first, last) = starts[0].split_once(';').unwrap();
    let pg_time = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(&t.replace(' ', "T"))
            .or_else(|_| chrono::DateTime::parse_from_rfc3339(&format!("{}Z", t.replace(' ', "T"))))
            .unwrap_or_else(|e| panic!("{t}: {e}"))
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string()
    };
    // From the second window on: the filter must cut, not pass everything.
    let second = served.query_rows(&format!(
        "SELECT CAST(min(window_start) AS VARCHAR) FROM campaign_metrics \
         WHERE window_start > TIMESTAMP '{first}'"
    ));
    let from = pg_time(&second[0]);
    let to = pg_time(last);
    let filtered = served.psql_rows(&format!(
        "SELECT count(*), sum(impressions) FROM campaign_metrics \
         WHERE window_start >= TO_TIMESTAMP('{from}', 'YYYY-MM-DD HH24:MI:SS.US') \
         AND window_start < TO_TIMESTAMP('{to}', 'YYYY-MM-DD HH24:MI:SS.US')"
    ));
    let want = served.query_rows(&format!(
        "SELECT count(*), sum(impressions) FROM campaign_metrics \
         WHERE window_start >= TIMESTAMP '{from}' AND window_start < TIMESTAMP '{to}'"
    ));
    assert_eq!(filtered, want);
    let all = served.query_rows("SELECT count(*), sum(impressions) FROM campaign_metrics");
    assert_ne!(filtered, all, "the bounds cut some windows off");
    for grain in ["minute", "hour", "day", "week", "month"] {
        let sql = format!(
            "SELECT CAST(DATE_TRUNC('{grain}', window_start) AS VARCHAR) AS t, \
             sum(impressions) AS impressions FROM campaign_metrics GROUP BY 1 ORDER BY 1"
        );
        assert_eq!(served.psql_rows(&sql), served.query_rows(&sql), "{grain}");
    }
}
