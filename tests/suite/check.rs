//! `check`: plans both SQL files and cites file and line for every problem, without Kafka.

use crate::common;

use std::path::{Path, PathBuf};

use common::{repo_root, text, TestPipeline};

fn shipped(name: &str) -> PathBuf {
    repo_root().join("sql").join(name)
}

/// Writes `sql` to a file in its own folder (kept alive by the returned guard).
fn sql_file(sql: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.sql");
    std::fs::write(&path, sql).unwrap();
    (dir, path)
}

fn check(parse: &Path, metrics: &Path) -> (bool, String) {
    let pipeline = TestPipeline::offline(parse, metrics);
    let output = pipeline.cli(&["check"]);
    (output.status.success(), text(&output))
}

fn line_of(sql: &str, needle: &str) -> usize {
    sql.lines()
        .position(|l| l.contains(needle))
        .expect("needle in sql")
        + 1
}

#[test]
fn shipped_sql_checks_clean() {
    let (ok, out) = check(
        &shipped("campaign_events.sql"),
        &shipped("campaign_metrics.sql"),
    );
    assert!(ok, "{out}");
    assert!(out.contains("pipeline test: ok"), "{out}");
}

#[test]
fn syntax_error_in_parsing_sql_is_cited_with_file_and_line() {
    let original = std::fs::read_to_string(shipped("campaign_events.sql")).unwrap();
    let broken = original.replacen("FROM kafka_records", "FROM FROM kafka_records", 1);
    let line = line_of(&broken, "FROM FROM");
    let (_dir, path) = sql_file(&broken);
    let (ok, out) = check(&path, &shipped("campaign_metrics.sql"));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{}:{line}:", path.display())),
        "{out}"
    );
}

#[test]
fn unknown_column_in_parsing_sql_is_cited_with_file_and_line() {
    let original = std::fs::read_to_string(shipped("campaign_events.sql")).unwrap();
    let broken = original.replacen("    _offset,\n", "    _ofset,\n", 1);
    let line = line_of(&broken, "_ofset");
    let (_dir, path) = sql_file(&broken);
    let (ok, out) = check(&path, &shipped("campaign_metrics.sql"));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{}:{line}:", path.display())),
        "{out}"
    );
    assert!(out.contains("_ofset"), "{out}");
}

#[test]
fn unknown_column_in_metrics_sql_is_cited_with_file_and_line() {
    let original = std::fs::read_to_string(shipped("campaign_metrics.sql")).unwrap();
    let broken = original.replacen("sum(revenue)", "sum(revenu)", 1);
    let line = line_of(&broken, "revenu)");
    let (_dir, path) = sql_file(&broken);
    let (ok, out) = check(&shipped("campaign_events.sql"), &path);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{}:{line}:", path.display())),
        "{out}"
    );
    assert!(out.contains("revenu"), "{out}");
}

#[test]
fn problems_in_both_files_are_all_reported() {
    let (_d1, parse) = sql_file("SELECT value AS event_id FROM kafka_records");
    let (_d2, metrics) = sql_file("SELEC campaign_id FROM campaign_events");
    let (ok, out) = check(&parse, &metrics);
    assert!(!ok, "{out}");
    assert!(out.contains("must return a column `_error`"), "{out}");
    assert!(out.contains("must pass `_topic` through"), "{out}");
    assert!(out.contains(&format!("{}:1:", metrics.display())), "{out}");
}

#[test]
fn bad_configuration_fails_check() {
    let pipeline = TestPipeline::offline(
        &shipped("campaign_events.sql"),
        &shipped("campaign_metrics.sql"),
    );
    let yaml = std::fs::read_to_string(&pipeline.config)
        .unwrap()
        .replace("group_id", "groupid");
    std::fs::write(&pipeline.config, yaml).unwrap();
    let output = pipeline.cli(&["check"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("unknown field `groupid`"),
        "{}",
        text(&output)
    );
}

#[test]
fn metrics_sql_without_a_tumbling_window_is_refused_with_the_expected_form() {
    let (_dir, metrics) = sql_file(
        "SELECT campaign_id, count(*) AS events FROM campaign_events GROUP BY campaign_id",
    );
    let (ok, out) = check(&shipped("campaign_events.sql"), &metrics);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "{}: the metrics SQL has no tumbling window",
            metrics.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("date_bin(INTERVAL '1 minute', \"timestamp\")"),
        "{out}"
    );
}

#[test]
fn metrics_sql_that_cannot_run_window_by_window_is_refused() {
    // A window, but no aggregate: nothing to keep per window.
    let (_dir, metrics) = sql_file(
        "SELECT campaign_id, date_bin(INTERVAL '1 minute', \"timestamp\") AS window_start \
         FROM campaign_events",
    );
    let (ok, out) = check(&shipped("campaign_events.sql"), &metrics);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "{}: the metrics SQL must be one GROUP BY aggregate over the events with a date_bin window; found no aggregate",
            metrics.display()
        )),
        "{out}"
    );
}

#[test]
fn unsafe_window_sizes_are_refused_with_file_and_line() {
    let original = std::fs::read_to_string(shipped("campaign_metrics.sql")).unwrap();
    for (size, why) in [
        ("'0.5 us'", "whole number of microseconds"),
        ("'1500 nanoseconds'", "whole number of microseconds"),
        ("'1 month'", "no fixed length"),
        ("'0 minutes'", "must be positive"),
    ] {
        let edited = original.replace("INTERVAL '1 minute'", &format!("INTERVAL {size}"));
        assert_ne!(edited, original);
        let line = line_of(&edited, "date_bin");
        let (_dir, path) = sql_file(&edited);
        let (ok, out) = check(&shipped("campaign_events.sql"), &path);
        assert!(!ok, "{size}: {out}");
        assert!(
            out.contains(&format!("{}:{line}:", path.display())) && out.contains(why),
            "{size}: {out}"
        );
    }
}

#[test]
fn a_sample_shows_parsed_rows_every_reject_with_its_reason_and_the_windows() {
    let minute = chrono::DurationRound::duration_trunc(
        chrono::Utc::now() - chrono::TimeDelta::minutes(3),
        chrono::TimeDelta::minutes(1),
    )
    .unwrap();
    let at = |seconds: i64| {
        (minute + chrono::TimeDelta::seconds(seconds))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let event = |id: &str, kind: &str, seconds: i64, revenue: f64| {
        serde_json::json!({
            "event_id": id, "user_id": "u1", "campaign_id": "campaign_001", "event_type": kind,
            "platform": "web", "timestamp": at(seconds), "revenue": revenue,
            "country": "US", "device_type": "desktop",
        })
    };
    let with = |id: &str, field: &str, value: serde_json::Value| {
        let mut e = event(id, "click", 5, 0.0);
        e[field] = value;
        e.to_string()
    };
    let without = |id: &str, field: &str| {
        let mut e = event(id, "click", 5, 0.0);
        e.as_object_mut().unwrap().remove(field);
        e.to_string()
    };
    let lines: Vec<(Vec<u8>, Option<&str>)> = vec![
        (event("a", "impression", 1, 0.0).to_string().into(), None),
        (event("b", "impression", 2, 0.0).to_string().into(), None),
        (event("c", "click", 3, 0.0).to_string().into(), None),
        (event("d", "conversion", 4, 12.5).to_string().into(), None),
        (event("e", "impression", 70, 0.0).to_string().into(), None),
        (
            with("f", "extra", "x".repeat(70_000).into()).into(),
            Some("too large"),
        ),
        (br#"{"event_id": "g", "#.to_vec(), Some("broken json")),
        (without("h", "event_id").into(), Some("missing event_id")),
        (
            with("i", "event_id", 42.into()).into(),
            Some("wrong type: event_id"),
        ),
        (
            with("j", "user_id", "  ".into()).into(),
            Some("blank user_id"),
        ),
        (
            with("k", "campaign_id", "c".repeat(300).into()).into(),
            Some("too long: campaign_id"),
        ),
        (
            with("l", "revenue", "12.50".into()).into(),
            Some("wrong type: revenue"),
        ),
        (
            without("m", "event_type").into(),
            Some("missing event_type"),
        ),
        (
            with("n", "event_type", "view".into()).into(),
            Some("unknown event_type: view"),
        ),
        // No timestamp of its own: the record's (the sample's clock), a window of its own.
        (without("o", "timestamp").into(), None),
        (
            with("p", "timestamp", "yesterday".into()).into(),
            Some("bad timestamp: yesterday"),
        ),
        (
            with("q", "revenue", (-3.0).into()).into(),
            Some("negative revenue: -3.0"),
        ),
        (
            with("r", "timestamp", "2099-01-01T00:00:00Z".into()).into(),
            Some("future timestamp: 2099-01-01T00:00:00.000000Z"),
        ),
        (
            with("s", "timestamp", "1970-01-01T00:00:00Z".into()).into(),
            Some("late"),
        ),
        (b"\xff\xfe not utf-8".to_vec(), Some("invalid utf-8")),
    ];
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("sample.jsonl");
    let mut bytes = Vec::new();
    for (line, _) in &lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    std::fs::write(&sample, bytes).unwrap();

    // No broker and no tables: the pipeline's address leads nowhere. The 1970 event is a
    // valid event (parsed, for the events table) and late for the windows.
    let pipeline = TestPipeline::offline(
        &shipped("campaign_events.sql"),
        &shipped("campaign_metrics.sql"),
    );
    let output = pipeline.cli(&["check", "--sample", sample.to_str().unwrap()]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains("20 payloads, 7 parsed, 14 rejected, 3 windows"),
        "{out}"
    );
    for (number, (_, reason)) in lines.iter().enumerate() {
        if let Some(reason) = reason {
            assert!(
                out.contains(&format!("  line {}: {reason}  <- ", number + 1)),
                "line {}: {reason}\n{out}",
                number + 1
            );
        }
    }
    // The first minute: 2 impressions, 1 click, 1 conversion of 12.50; the second: 1 impression.
    let windows = out.split("windows (3):").nth(1).expect("windows");
    let first = windows
        .lines()
        .find(|l| l.contains(&minute.format("%Y-%m-%dT%H:%M:00").to_string()))
        .unwrap_or_else(|| panic!("{windows}"));
    let cells: Vec<&str> = first.split('|').map(str::trim).collect();
    assert!(
        cells.contains(&"2") && cells.contains(&"1") && cells.contains(&"12.5"),
        "{first}"
    );
}

#[test]
fn an_error_names_what_failed_and_its_cause_once() {
    let pipeline = TestPipeline::offline(
        &shipped("campaign_events.sql"),
        &shipped("campaign_metrics.sql"),
    );
    pipeline
        .edit_config(|yaml| yaml.replace("path: data/catalog.db", "path: /proc/nope/catalog.db"));
    let output = pipeline.cli(&["tables"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(
            "cannot open the sqlite catalog at /proc/nope/catalog.db: creating /proc/nope: "
        ),
        "{line}"
    );
    let cause = line.rsplit(": ").next().unwrap();
    assert!(!cause.is_empty(), "{line}");
    assert_eq!(line.matches(cause).count(), 1, "the cause once: {line}");
}

#[test]
fn the_compose_configuration_checks_clean() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_campaign-pipeline"))
        .arg("--config")
        .arg(repo_root().join("pipelines.compose.yaml"))
        .arg("check")
        .env("KAFKA_BROKERS", "kafka:9092")
        .env("ICEBERG_CREDENTIAL", "id:secret")
        .env("AWS_ACCESS_KEY_ID", "id")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .output()
        .expect("run check");
    assert!(output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("pipeline campaign: ok"));
}
