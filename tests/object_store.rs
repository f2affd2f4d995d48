//! The pipeline on production storage: the warehouse in S3 (SeaweedFS's S3 API) with the
//! Iceberg REST catalog (SeaweedFS's), against real servers; values read back through the same
//! catalog.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use campaign_pipeline::generator::Truth;
use common::seaweed::{seaweed, ACCESS_KEY, BUCKET, SECRET_KEY, TABLE_BUCKET};
use common::windows::{assert_windows_equal, expected, windows};
use common::{scan_table, snapshot_properties, text, unique, TestPipeline};

/// A pipeline with `catalog` (YAML lines of the `catalog:` block, given the namespace) and
/// SeaweedFS's S3 API as its object storage, in a namespace of its own.
fn on_object_store(catalog: impl FnOnce(&str) -> String) -> TestPipeline {
    let server = seaweed();
    let pipeline = TestPipeline::new();
    let namespace = unique("ns");
    let catalog = catalog(&namespace);
    pipeline.edit_config(|yaml| {
        let sqlite = "      catalog:\n        type: sqlite\n        path: data/catalog.db\n        warehouse: data/warehouse\n      namespace: campaigns\n";
        assert!(yaml.contains(sqlite), "{yaml}");
        yaml.replace(
            sqlite,
            &format!(
                "      catalog:\n{catalog}      storage:\n        endpoint: {s3}\n        region: us-east-1\n        path_style_access: true\n        access_key_id: {ACCESS_KEY}\n        secret_access_key: {SECRET_KEY}\n      namespace: {namespace}\n",
                s3 = server.s3_endpoint,
            ),
        )
    });
    pipeline
}

/// Tables in SeaweedFS: its REST catalog, its S3 API; checkpoints in the plain bucket (a table
/// bucket accepts only Iceberg's own files).
fn on_rest_catalog() -> TestPipeline {
    let uri = &seaweed().catalog_uri;
    on_object_store(|namespace| {
        format!(
            "        type: rest\n        uri: {uri}\n        warehouse: s3://{TABLE_BUCKET}/\n        credential: {ACCESS_KEY}:{SECRET_KEY}\n      checkpoints: s3://{BUCKET}/checkpoints/{namespace}\n"
        )
    })
}

/// A PostgreSQL catalog with the warehouse in SeaweedFS's S3 bucket.
fn on_postgres_catalog() -> TestPipeline {
    let uri = &common::postgres::postgres().uri;
    on_object_store(|namespace| {
        format!("        type: postgres\n        uri: {uri}\n        warehouse: s3://{BUCKET}/{namespace}\n")
    })
}

fn cli_ok(pipeline: &TestPipeline, args: &[&str]) -> String {
    let output = pipeline.cli(args);
    assert!(output.status.success(), "{}", text(&output));
    text(&output)
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_catalog_and_s3_warehouse_hold_every_event_once_across_a_sigkill() {
    every_event_once_across_a_sigkill(on_rest_catalog(), &format!("s3://{BUCKET}/checkpoints/"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_catalog_and_s3_warehouse_hold_every_event_once_across_a_sigkill() {
    // Checkpoints beside the metrics table, in the warehouse bucket.
    every_event_once_across_a_sigkill(on_postgres_catalog(), &format!("s3://{BUCKET}/")).await;
}

/// 20,000 events, a SIGKILL after committed work and a restart: both tables equal the truth,
/// every event once, the checkpoints in the object store under `checkpoints_under`.
async fn every_event_once_across_a_sigkill(pipeline: TestPipeline, checkpoints_under: &str) {
    pipeline.edit_config(|yaml| {
        // A commit every 2,000 rows: many commits to kill between.
        yaml.replace("interval: 5s", "interval: 200ms")
            .replace("max_rows: 10000", "max_rows: 1000")
            .replace("max_rows: 500000", "max_rows: 2000")
    });
    cli_ok(&pipeline, &["setup"]);
    let truth_path = pipeline.dir.path().join("truth.json");
    cli_ok(
        &pipeline,
        &[
            "generate",
            "--count",
            "20000",
            "--seed",
            "81",
            "--campaigns",
            "5",
            "--start-time",
            "2026-01-01T00:00:00Z",
            "--invalid-ratio",
            "0.02",
            "--out-of-order-ratio",
            "0.05",
            "--truth",
            truth_path.to_str().unwrap(),
        ],
    );
    let truth: Truth = serde_json::from_slice(&std::fs::read(&truth_path).unwrap()).unwrap();
    let killed = pipeline.kill_after_commits(&["run", "--until-caught-up"], 3, Duration::ZERO);
    assert!(killed, "the runner finished before it could be killed");
    // It was killed after committing part of the topic, not before.
    let properties = snapshot_properties(&pipeline.config, "campaign_events").await;
    let offsets: serde_json::Value =
        serde_json::from_str(&properties["campaign-pipeline.offsets"]).unwrap();
    let committed: i64 = offsets
        .as_object()
        .unwrap()
        .values()
        .flat_map(|partitions| partitions.as_object().unwrap().values())
        .map(|next| next.as_i64().unwrap())
        .sum();
    assert!((1..20_000).contains(&committed), "{offsets}");
    cli_ok(
        &pipeline,
        &["run", "--until-caught-up", "--flush-open-windows"],
    );

    let events = scan_table(&pipeline.config, "campaign_events").await;
    assert_eq!(rows(&events) as u64, truth.valid_events);
    let ids: BTreeSet<String> = events
        .iter()
        .flat_map(|b| {
            let ids = b.column_by_name("event_id").unwrap().as_string::<i32>();
            ids.iter().flatten().map(str::to_string).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ids.len() as u64, truth.valid_events, "every event once");
    let metrics = windows(
        &scan_table(&pipeline.config, "campaign_metrics").await,
        None,
    );
    assert_windows_equal(&metrics, &expected(std::slice::from_ref(&truth)));
    // The window state's checkpoints are in the object store.
    let properties = snapshot_properties(&pipeline.config, "campaign_metrics").await;
    let checkpoint = &properties["campaign-pipeline.checkpoint"];
    assert!(checkpoint.contains(checkpoints_under), "{checkpoint}");
    // `tables` and `snapshots` list them through the catalog, offsets included.
    let tables = cli_ok(&pipeline, &["tables", "--format", "csv"]);
    assert!(
        tables.contains("campaign_events,") && tables.contains(&truth.valid_events.to_string()),
        "{tables}"
    );
    let snapshots = cli_ok(
        &pipeline,
        &["snapshots", "campaign_metrics", "--format", "csv"],
    );
    assert!(
        snapshots.contains("campaign-pipeline.offsets"),
        "{snapshots}"
    );
    // And `query` reads the same tables through the catalog.
    let counted = cli_ok(
        &pipeline,
        &[
            "query",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM campaign_events",
        ],
    );
    assert!(
        counted.contains(&format!("\n{}\n", truth.valid_events)),
        "{counted}"
    );
}

#[test]
fn a_wrong_catalog_credential_is_reported_before_anything_is_consumed() {
    let pipeline = on_rest_catalog();
    pipeline.edit_config(|yaml| {
        yaml.replace(
            &format!("credential: {ACCESS_KEY}:{SECRET_KEY}"),
            &format!("credential: {ACCESS_KEY}:not-the-secret"),
        )
    });
    let setup = pipeline.cli(&["setup"]);
    assert!(!setup.status.success(), "{}", text(&setup));
    let err = String::from_utf8_lossy(&setup.stderr);
    assert!(
        err.contains(&format!(
            "cannot open the rest catalog at {}",
            seaweed().catalog_uri
        )),
        "{err}"
    );
    assert!(
        !err.contains("not-the-secret"),
        "the secret is never shown: {err}"
    );
    // `run` stops at the same place, before the source is read.
    let run = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("cannot open the rest catalog"),
        "{}",
        text(&run)
    );
}
