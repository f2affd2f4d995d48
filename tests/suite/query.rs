//! `query`, `tables` and `snapshots` on tables the pipeline wrote: values the truth file
//! predicts, CSV and JSON that parse, writes refused, time travel to older snapshots.

use crate::common;

use std::collections::BTreeMap;

use campaign_pipeline::generator::Truth;
use common::{text, TestPipeline};

fn ok(pipeline: &TestPipeline, args: &[&str]) -> String {
    let output = pipeline.cli(args);
    assert!(output.status.success(), "{args:?}: {}", text(&output));
    String::from_utf8(output.stdout).unwrap()
}

fn json(pipeline: &TestPipeline, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["query", "--format", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(pipeline, &all)).expect("query --format json prints JSON")
}

#[test]
fn query_reads_what_the_truth_predicts_in_every_format_and_back_in_time() {
    let pipeline = TestPipeline::new();
    ok(&pipeline, &["setup"]);
    let dir = tempfile::tempdir().unwrap();
    let truth_path = dir.path().join("truth.json");
    ok(
        &pipeline,
        &[
            "generate",
            "--count",
            "6000",
            "--seed",
            "51",
            "--campaigns",
            "3",
            "--invalid-ratio",
            "0.05",
            "--truth",
            truth_path.to_str().unwrap(),
        ],
    );
    let truth: Truth = serde_json::from_slice(&std::fs::read(&truth_path).unwrap()).unwrap();
    ok(
        &pipeline,
        &["run", "--until-caught-up", "--flush-open-windows"],
    );

    // Per campaign, the windows add up to the truth's on-time counts.
    let rows = json(
        &pipeline,
        &[
            "SELECT campaign_id, sum(impressions) AS impressions, sum(clicks) AS clicks, \
           sum(conversions) AS conversions, round(sum(revenue) * 100) AS cents \
           FROM campaign_metrics GROUP BY campaign_id ORDER BY campaign_id",
        ],
    );
    let mut want: BTreeMap<String, (u64, u64, u64, i64)> = BTreeMap::new();
    for w in &truth.windows {
        let e = want.entry(w.campaign_id.clone()).or_default();
        e.0 += w.counts.impressions;
        e.1 += w.counts.clicks;
        e.2 += w.counts.conversions;
        e.3 += w.counts.revenue_cents;
    }
    let got: BTreeMap<String, (u64, u64, u64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["campaign_id"].as_str().unwrap().to_string(),
                (
                    r["impressions"].as_u64().unwrap(),
                    r["clicks"].as_u64().unwrap(),
                    r["conversions"].as_u64().unwrap(),
                    r["cents"].as_f64().unwrap() as i64,
                ),
            )
        })
        .collect();
    assert_eq!(got, want);

    // CSV parses: a header and one line per row.
    let csv = ok(
        &pipeline,
        &[
            "query",
            "--format",
            "csv",
            "SELECT campaign_id, count(*) AS n FROM campaign_events GROUP BY 1 ORDER BY 1",
        ],
    );
    let lines: Vec<&str> = csv.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "campaign_id,n");
    let total: u64 = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, truth.valid_events);

    // Writes are refused with a clear message.
    for statement in [
        "INSERT INTO campaign_events (campaign_id) VALUES ('x')",
        "DROP TABLE campaign_metrics",
        "CREATE TABLE t AS SELECT 1",
        "EXPLAIN ANALYZE INSERT INTO campaign_events (campaign_id) VALUES ('x')",
    ] {
        let output = pipeline.cli(&["query", statement]);
        assert!(!output.status.success(), "{statement}");
        assert!(
            text(&output).contains("only queries are allowed here"),
            "{}",
            text(&output)
        );
    }

    // A second batch of events, then time travel back to the first snapshot.
    let first = json(&pipeline, &["SELECT count(*) AS n FROM campaign_events"])[0]["n"]
        .as_u64()
        .unwrap();
    let snapshots = ok(
        &pipeline,
        &["snapshots", "campaign_events", "--format", "json"],
    );
    let snapshots: Vec<serde_json::Value> = serde_json::from_str(&snapshots).unwrap();
    let old_id = snapshots.last().unwrap()["snapshot_id"].as_i64().unwrap();
    assert!(snapshots.last().unwrap()["kafka_offsets"]
        .as_str()
        .unwrap()
        .contains(&pipeline.topic));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let between = chrono::Utc::now().to_rfc3339();
    ok(
        &pipeline,
        &[
            "generate",
            "--count",
            "500",
            "--seed",
            "52",
            "--campaigns",
            "3",
        ],
    );
    ok(&pipeline, &["run", "--until-caught-up"]);
    let now = json(&pipeline, &["SELECT count(*) AS n FROM campaign_events"])[0]["n"]
        .as_u64()
        .unwrap();
    assert_eq!(now, first + 500);
    let snapshot_arg = old_id.to_string();
    let back = json(
        &pipeline,
        &[
            "--snapshot",
            &snapshot_arg,
            "SELECT count(*) AS n FROM campaign_events",
        ],
    );
    assert_eq!(back[0]["n"].as_u64().unwrap(), first);
    let back = json(
        &pipeline,
        &[
            "--as-of",
            &between,
            "SELECT count(*) AS n FROM campaign_events",
        ],
    );
    assert_eq!(back[0]["n"].as_u64().unwrap(), first);
    let before = json(
        &pipeline,
        &[
            "--as-of",
            "2001-01-01T00:00:00Z",
            "SELECT count(*) AS n FROM campaign_events",
        ],
    );
    assert_eq!(before[0]["n"].as_u64().unwrap(), 0);

    // Filters on partition columns reach the Iceberg scan.
    let plan = ok(
        &pipeline,
        &[
            "query",
            "EXPLAIN SELECT count(*) FROM campaign_events WHERE campaign_id = 'campaign_001'",
        ],
    );
    assert!(
        plan.contains(
            r#"IcebergTableScan projection:[campaign_id] predicate:[campaign_id = "campaign_001"]"#
        ),
        "{plan}"
    );

    // The interactive prompt reads statements ending with `;`, across lines.
    let mut prompt = pipeline
        .command(&["query", "--format", "csv"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = prompt.stdin.take().unwrap();
        stdin
            .write_all(b"SELECT count(*) AS n\n  FROM campaign_events;\n\\q\n")
            .unwrap();
    }
    let output = prompt.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("n\n{now}\n")),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let tables = ok(&pipeline, &["tables", "--format", "json"]);
    let tables: Vec<serde_json::Value> = serde_json::from_str(&tables).unwrap();
    let names: Vec<&str> = tables
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["campaign_events", "campaign_metrics"]);
    assert_eq!(tables[0]["rows"].as_u64().unwrap(), now);
}
