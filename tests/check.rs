//! `check`: plans both SQL files and cites file and line for every problem, without Kafka.

mod common;

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
