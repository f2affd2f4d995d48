//! Test pipelines on production storage: the warehouse in SeaweedFS's S3 API, with its REST
//! catalog or a PostgreSQL catalog.

use std::collections::BTreeSet;

use arrow::array::{AsArray, RecordBatch};
use campaign_pipeline::generator::Truth;

use super::seaweed::{Seaweed, ACCESS_KEY, BUCKET, SECRET_KEY, TABLE_BUCKET};
use super::windows::{assert_windows_equal, expected, windows};
use super::{scan_table, unique, TestPipeline};

/// A pipeline with `catalog` (YAML lines of the `catalog:` block, given the namespace) and
/// `server`'s S3 API as its object storage, in a namespace of its own.
pub fn on_object_store(server: &Seaweed, catalog: impl FnOnce(&str) -> String) -> TestPipeline {
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

/// Tables in `server`: its REST catalog, its S3 API; checkpoints in the plain bucket (a table
/// bucket accepts only Iceberg's own files).
pub fn on_rest_catalog(server: &Seaweed) -> TestPipeline {
    let uri = &server.catalog_uri;
    on_object_store(server, |namespace| {
        format!(
            "        type: rest\n        uri: {uri}\n        warehouse: s3://{TABLE_BUCKET}/\n        credential: {ACCESS_KEY}:{SECRET_KEY}\n      checkpoints: s3://{BUCKET}/checkpoints/{namespace}\n"
        )
    })
}

/// A PostgreSQL catalog at `uri` with the warehouse in `server`'s S3 bucket.
pub fn on_postgres_catalog(server: &Seaweed, uri: &str) -> TestPipeline {
    on_object_store(server, |namespace| {
        format!("        type: postgres\n        uri: {uri}\n        warehouse: s3://{BUCKET}/{namespace}\n")
    })
}

/// Many small commits: 1,000-row micro-batches, a commit every 2,000 rows or 200 ms.
pub fn small_commits(pipeline: &TestPipeline) {
    pipeline.edit_config(|yaml| {
        yaml.replace("interval: 5s", "interval: 200ms")
            .replace("max_rows: 10000", "max_rows: 1000")
            .replace("max_rows: 500000", "max_rows: 2000")
    });
}

/// The grace period `maintain` gives unreferenced files before deleting them in the tests.
pub const LONG_GRACE: &str = "10m";

/// Turns the pipeline's maintenance (block written with `orphan_grace`, `min_input_files` and
/// perhaps `max_manifests`) into expiry and the sweep only, with a 2 s grace period: a pass
/// then deletes what is left unreferenced 2 s after it was written. A pass that compacts must
/// not run under so short a grace: a rewrite slower than half of it is dropped on purpose, and
/// a debug build on a busy machine can take that long.
pub fn sweep_only_after_2s(pipeline: &TestPipeline) {
    pipeline.edit_config(|yaml| {
        let lines = yaml.lines().map(|line| {
            let indent = &line[..line.len() - line.trim_start().len()];
            match line.trim_start().split(':').next() {
                Some("orphan_grace") => format!("{indent}orphan_grace: 2s"),
                Some(key @ ("min_input_files" | "max_manifests")) => {
                    format!("{indent}{key}: 1000000")
                }
                _ => line.to_string(),
            }
        });
        lines.collect::<Vec<_>>().join("\n") + "\n"
    });
}

/// Produces 20,000 events of 5 campaigns from 2026-01-01 (2% invalid, 5% out of order) with
/// `seed` to the pipeline's topic, and returns their truth.
pub fn generate_20k(pipeline: &TestPipeline, seed: u64) -> Truth {
    generate_20k_from(pipeline, seed, "2026-01-01T00:00:00Z")
}

/// Same, with event times from `start_time`.
pub fn generate_20k_from(pipeline: &TestPipeline, seed: u64, start_time: &str) -> Truth {
    let truth_path = pipeline.dir.path().join(format!("truth-{seed}.json"));
    let seed = seed.to_string();
    let output = pipeline.cli(&[
        "generate",
        "--count",
        "20000",
        "--seed",
        &seed,
        "--campaigns",
        "5",
        "--start-time",
        start_time,
        "--invalid-ratio",
        "0.02",
        "--out-of-order-ratio",
        "0.05",
        "--truth",
        truth_path.to_str().expect("UTF-8 path"),
    ]);
    assert!(output.status.success(), "{}", super::text(&output));
    serde_json::from_slice(&std::fs::read(&truth_path).expect("truth file")).expect("truth")
}

/// Both tables, read back through the pipeline's catalog, hold every valid event of `truth`
/// exactly once and its windows.
pub async fn assert_every_event_once(pipeline: &TestPipeline, truth: &Truth) {
    assert_every_event_once_of(pipeline, std::slice::from_ref(truth)).await
}

/// Both tables hold every valid event of `truths` (disjoint runs of the generator) exactly
/// once, and their windows.
pub async fn assert_every_event_once_of(pipeline: &TestPipeline, truths: &[Truth]) {
    let valid: u64 = truths.iter().map(|t| t.valid_events).sum();
    let events = scan_table(&pipeline.config, "campaign_events").await;
    let rows: usize = events.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows as u64, valid, "rows in campaign_events");
    let ids: BTreeSet<String> = events
        .iter()
        .flat_map(|b| {
            let ids = b.column_by_name("event_id").expect("event_id");
            let ids = ids.as_string::<i32>();
            ids.iter().flatten().map(str::to_string).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ids.len() as u64, valid, "every event once");
    let metrics = windows(
        &scan_table(&pipeline.config, "campaign_metrics").await,
        None,
    );
    assert_windows_equal(&metrics, &expected(truths));
}
