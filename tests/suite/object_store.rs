//! The pipeline on production storage: the warehouse in S3 (SeaweedFS's S3 API) with the
//! Iceberg REST catalog (SeaweedFS's), against real servers; values read back through the same
//! catalog.

use crate::common;

use std::time::Duration;

use arrow::array::RecordBatch;
use campaign_pipeline::generator::Truth;
use common::seaweed::{seaweed, ACCESS_KEY, BUCKET, SECRET_KEY, TABLE_BUCKET};
use common::{production, pyiceberg, scan_table, snapshot_properties, text, TestPipeline};

fn on_rest_catalog() -> TestPipeline {
    production::on_rest_catalog(seaweed())
}

fn on_postgres_catalog() -> TestPipeline {
    production::on_postgres_catalog(seaweed(), &common::postgres::postgres().uri)
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
    let pipeline = on_rest_catalog();
    let truth =
        every_event_once_across_a_sigkill(&pipeline, &format!("s3://{BUCKET}/checkpoints/")).await;
    dashboard_and_dlq_read_the_truth(&pipeline, &truth);
    // `bench` compares the REST catalog and S3 with the embedded default, each reading every
    // event (it fails otherwise), and leaves no scratch namespace behind.
    let bench = cli_ok(
        &pipeline,
        &[
            "bench",
            "--memory-events",
            "2000",
            "--window-events",
            "2000",
            "--kafka-events",
            "0",
            "--dlq-events",
            "0",
            "--storage-events",
            "6000",
            "--freshness-seconds",
            "0",
            "--contention-seconds",
            "2",
            "--contention-writers",
            "2",
        ],
    );
    let uri = &seaweed().catalog_uri;
    for row in [
        "| end to end, embedded default ".to_string(),
        format!("| end to end, rest catalog at {uri} "),
        format!("|   commit latency, rest catalog at {uri} "),
        "| configured vs embedded (wall clock, CPU) ".to_string(),
        "| commit contention, embedded SQLite, 2 writers, each writer commits ".to_string(),
        "| commit contention, embedded SQLite, 2 writers, one committer ".to_string(),
        format!("| commit contention, rest catalog at {uri}, 2 writers, each writer commits "),
        format!("| commit contention, rest catalog at {uri}, 2 writers, one committer "),
    ] {
        assert!(bench.contains(&row), "{row}: {bench}");
    }
    // Every contention run landed commits of both writers, none starved.
    for line in bench.lines().filter(|l| l.contains("commit contention")) {
        assert!(line.contains("0 of 2 writers starved"), "{line}");
    }
    let namespaces = cli_ok(
        &pipeline,
        &[
            "query",
            "--format",
            "csv",
            "SELECT schema_name FROM information_schema.schemata",
        ],
    );
    assert!(!namespaces.contains("bench_storage"), "{namespaces}");
    assert!(!namespaces.contains("bench_contention"), "{namespaces}");
    // An independent reader, PyIceberg through the same REST catalog, reads the same rows.
    let server = seaweed();
    let properties = serde_json::json!({
        "type": "rest",
        "uri": server.catalog_uri,
        "warehouse": format!("s3://{TABLE_BUCKET}/"),
        "credential": format!("{ACCESS_KEY}:{SECRET_KEY}"),
        "s3.endpoint": server.s3_endpoint,
        "s3.access-key-id": ACCESS_KEY,
        "s3.secret-access-key": SECRET_KEY,
        "s3.region": "us-east-1",
    });
    let namespace = pyiceberg::namespace(&pipeline.config);
    for table in ["campaign_events", "campaign_metrics"] {
        let ours = pyiceberg::comparable(&scan_table(&pipeline.config, table).await);
        let theirs = pyiceberg::read(&properties, &namespace, table);
        assert!(!ours.is_empty(), "{table} has rows");
        assert_eq!(ours.len(), theirs.len(), "{table}: rows");
        if let Some((a, b)) = ours.iter().zip(&theirs).find(|(a, b)| a != b) {
            panic!("{table}: campaign-pipeline reads\n{a}\nPyIceberg reads\n{b}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_catalog_and_s3_warehouse_hold_every_event_once_across_a_sigkill() {
    // Checkpoints beside the metrics table, in the warehouse bucket.
    every_event_once_across_a_sigkill(&on_postgres_catalog(), &format!("s3://{BUCKET}/")).await;
}

/// 20,000 events, a SIGKILL after committed work and a restart: both tables equal the truth,
/// every event once, the checkpoints in the object store under `checkpoints_under`.
async fn every_event_once_across_a_sigkill(
    pipeline: &TestPipeline,
    checkpoints_under: &str,
) -> Truth {
    // Many commits to kill between.
    production::small_commits(pipeline);
    cli_ok(pipeline, &["setup"]);
    let truth = production::generate_20k(pipeline, 81);
    let killed = pipeline
        .kill_after_commits(&["run", "--until-caught-up"], 3, Duration::ZERO)
        .await;
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
        pipeline,
        &["run", "--until-caught-up", "--flush-open-windows"],
    );

    production::assert_every_event_once(pipeline, &truth).await;
    // The window state's checkpoints are in the object store.
    let properties = snapshot_properties(&pipeline.config, "campaign_metrics").await;
    let checkpoint = &properties["campaign-pipeline.checkpoint"];
    assert!(checkpoint.contains(checkpoints_under), "{checkpoint}");
    // `tables` and `snapshots` list them through the catalog, offsets included.
    let tables = cli_ok(pipeline, &["tables", "--format", "csv"]);
    assert!(
        tables.contains("campaign_events,") && tables.contains(&truth.valid_events.to_string()),
        "{tables}"
    );
    let snapshots = cli_ok(
        pipeline,
        &["snapshots", "campaign_metrics", "--format", "csv"],
    );
    assert!(
        snapshots.contains("campaign-pipeline.offsets"),
        "{snapshots}"
    );
    // And `query` reads the same tables through the catalog.
    let counted = cli_ok(
        pipeline,
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
    maintenance_compacts_and_cleans_up(pipeline, &truth).await;
    truth
}

/// `maintain` on this catalog: the replace commit lands through its compare-and-swap, the rows
/// stay, one snapshot is kept and the small files it replaced are deleted from the object
/// store (those it left, larger than the rest of their partition, stay); a second pass past the grace period leaves no unreferenced file in the tables' folders.
async fn maintenance_compacts_and_cleans_up(pipeline: &TestPipeline, truth: &Truth) {
    use campaign_pipeline::maintain::files::{manifests, LiveFiles};
    use campaign_pipeline::maintain::listing::list;
    pipeline.edit_config(|yaml| {
        let yaml = yaml.replace("max_rows: 2000\n", "max_rows: 2000\n      retry_for: 1s\n");
        format!("{yaml}    maintenance:\n      enabled: false\n      min_input_files: 2\n      keep_snapshots: 1\n      snapshot_max_age: 0s\n      orphan_grace: {}\n", production::LONG_GRACE)
    });
    let mut small_files = Vec::new();
    for table in ["campaign_events", "campaign_metrics"] {
        let loaded = common::load_table(&pipeline.config, table).await;
        let live = LiveFiles::read(&loaded).await.unwrap().expect("a snapshot");
        small_files.push(
            live.entries
                .iter()
                .map(|e| e.entry.file_path().to_string())
                .collect::<Vec<_>>(),
        );
    }
    let report = cli_ok(pipeline, &["maintain"]);
    assert_eq!(
        report.matches("small files rewritten into").count(),
        2,
        "{report}"
    );
    production::assert_every_event_once(pipeline, truth).await;
    for (table, small) in ["campaign_events", "campaign_metrics"]
        .iter()
        .zip(&small_files)
    {
        let loaded = common::load_table(&pipeline.config, table).await;
        assert_eq!(
            loaded.metadata().snapshots().count(),
            1,
            "{table}: snapshots"
        );
        let live = LiveFiles::read(&loaded).await.unwrap().expect("a snapshot");
        assert_eq!(live.data_manifests(), 1, "{table}: manifests");
        assert!(
            live.entries.len() < small.len() / 2,
            "{table}: files after compaction"
        );
        let alive: std::collections::HashSet<&str> =
            live.entries.iter().map(|e| e.entry.file_path()).collect();
        // A file larger than the rest of its partition together is left as it is (size tiers).
        for file in small.iter().filter(|f| !alive.contains(f.as_str())) {
            assert!(
                !loaded.file_io().exists(file).await.unwrap(),
                "{table}: {file} was replaced and expired but remains"
            );
        }
    }
    production::sweep_only_after_2s(pipeline);
    std::thread::sleep(Duration::from_secs(3));
    cli_ok(pipeline, &["maintain"]);
    for table in ["campaign_events", "campaign_metrics"] {
        let loaded = common::load_table(&pipeline.config, table).await;
        let snapshot = loaded.metadata().current_snapshot().expect("a snapshot");
        let mut referenced: std::collections::HashSet<String> =
            [snapshot.manifest_list().to_string()].into();
        referenced.insert(loaded.metadata_location().unwrap().to_string());
        for manifest in manifests(&loaded, snapshot).await.unwrap() {
            referenced.insert(manifest.manifest_path.clone());
            let entries = manifest.load_manifest(loaded.file_io()).await.unwrap();
            referenced.extend(
                entries
                    .entries()
                    .iter()
                    .filter(|e| e.is_alive())
                    .map(|e| e.file_path().to_string()),
            );
        }
        let listed = list(loaded.file_io(), loaded.metadata().location())
            .await
            .expect("listing the table's folder");
        assert!(listed.len() >= referenced.len(), "{table}: {listed:?}");
        for file in listed {
            let kept = referenced.contains(&file.path)
                || file.path.ends_with(".metadata.json")
                || file.path.contains("/checkpoints/");
            assert!(kept, "{table}: {} is referenced by nothing", file.path);
        }
    }
}

/// The standalone dashboard serves totals read through the catalog that equal the truth, and
/// `dlq stats` counts every rejected event.
fn dashboard_and_dlq_read_the_truth(pipeline: &TestPipeline, truth: &Truth) {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut dashboard = pipeline
        .command(&["dashboard", "--listen", &listen])
        .spawn()
        .expect("dashboard");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let totals = loop {
        if let Some((status, body)) = common::http_get(port, "/api/totals?windows=10000") {
            if status.contains(" 200 ") {
                break body;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard did not answer"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = dashboard.kill();
    let _ = dashboard.wait();
    let totals: serde_json::Value = serde_json::from_str(&totals).expect("totals JSON");
    let sum = |count: fn(&campaign_pipeline::generator::truth::Counts) -> u64| -> u64 {
        truth.campaigns.values().map(count).sum()
    };
    assert_eq!(totals["impressions"], sum(|c| c.impressions), "{totals}");
    assert_eq!(totals["clicks"], sum(|c| c.clicks), "{totals}");
    assert_eq!(totals["conversions"], sum(|c| c.conversions), "{totals}");
    let output = pipeline.cli(&["dlq", "stats", "--format", "json"]);
    assert!(output.status.success(), "{}", text(&output));
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stats JSON");
    assert_eq!(stats["total"], truth.invalid_events, "{stats}");
}

/// One broken setting of a working pipeline, what the error must say and what it must not.
struct Broken {
    what: &'static str,
    from: String,
    to: String,
    says: Vec<String>,
    secret: Option<&'static str>,
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_settings_are_named_before_anything_is_consumed() {
    let server = seaweed();
    let postgres = common::postgres::postgres();
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let rest_cases = [
        Broken {
            what: "a wrong catalog credential",
            from: format!("credential: {ACCESS_KEY}:{SECRET_KEY}"),
            to: format!("credential: {ACCESS_KEY}:not-the-secret"),
            says: vec![
                format!("cannot open the rest catalog at {}", server.catalog_uri),
                "check sink.catalog.credential".into(),
            ],
            secret: Some("not-the-secret"),
        },
        Broken {
            what: "an unreachable REST catalog",
            from: format!("uri: {}", server.catalog_uri),
            to: format!("uri: http://{nowhere}"),
            says: vec![
                format!("cannot open the rest catalog at http://{nowhere}"),
                "check sink.catalog.uri".into(),
            ],
            secret: None,
        },
        Broken {
            what: "a wrong object store secret",
            from: format!("secret_access_key: {SECRET_KEY}"),
            to: "secret_access_key: not-the-s3-secret".into(),
            says: vec![
                "cannot read its metadata file".into(),
                "check sink.storage".into(),
            ],
            secret: Some("not-the-s3-secret"),
        },
    ];
    for case in rest_cases {
        refused_before_consuming(on_rest_catalog(), case).await;
    }
    let postgres_cases = [
        Broken {
            what: "an unreachable PostgreSQL catalog",
            from: format!("uri: {}", postgres.uri),
            to: format!("uri: postgres://postgres:pg-secret@{nowhere}/postgres"),
            says: vec![
                format!("cannot open the postgres catalog at postgres://postgres:***@{nowhere}"),
                "check sink.catalog.uri".into(),
            ],
            secret: Some("pg-secret"),
        },
        Broken {
            what: "a bucket that does not exist",
            from: format!("warehouse: s3://{BUCKET}/"),
            to: "warehouse: s3://no-such-bucket/".into(),
            says: vec![
                "writing a probe file to the warehouse s3://no-such-bucket/".into(),
                "check sink.catalog.warehouse and sink.storage".into(),
                "NoSuchBucket".into(),
            ],
            secret: None,
        },
    ];
    for case in postgres_cases {
        refused_before_consuming(on_postgres_catalog(), case).await;
    }
}

/// Sets `pipeline` up with working settings, produces events (some of them invalid), breaks
/// one setting, and checks that `setup` and `run` both stop with an error that says what
/// `case` expects, and that nothing was consumed: no dead letter, no row.
async fn refused_before_consuming(pipeline: TestPipeline, case: Broken) {
    cli_ok(&pipeline, &["setup"]);
    cli_ok(
        &pipeline,
        &["generate", "--count", "200", "--invalid-ratio", "0.2"],
    );
    let working = std::fs::read_to_string(&pipeline.config).unwrap();
    assert!(working.contains(&case.from), "{}: {working}", case.what);
    pipeline.edit_config(|yaml| yaml.replace(&case.from, &case.to));
    for command in [&["setup"][..], &["run", "--until-caught-up"]] {
        let output = pipeline.cli(command);
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{}: {command:?} succeeded",
            case.what
        );
        for said in &case.says {
            assert!(
                err.contains(said.as_str()),
                "{}: {command:?} says {said:?}: {err}",
                case.what
            );
        }
        if let Some(secret) = case.secret {
            assert!(
                !err.contains(secret),
                "{}: the secret is shown: {err}",
                case.what
            );
        }
    }
    std::fs::write(&pipeline.config, working).unwrap();
    let letters = common::read_topic(&pipeline.brokers, &pipeline.dlq_topic);
    assert!(letters.is_empty(), "{}: dead letters were sent", case.what);
    let rows = rows(&scan_table(&pipeline.config, "campaign_events").await);
    assert_eq!(rows, 0, "{}: events were written", case.what);
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_commits_land_only_on_the_table_they_were_built_on_in_every_catalog() {
    for pipeline in [
        TestPipeline::new(),
        on_postgres_catalog(),
        on_rest_catalog(),
    ] {
        swap_is_a_compare_and_swap(&pipeline).await;
    }
}

/// Maintenance's own commit path (`PointerSwap`): a commit built on a table state that another
/// writer has moved on from is refused as a conflict, and nothing changes; built on the current
/// state, it lands.
async fn swap_is_a_compare_and_swap(pipeline: &TestPipeline) {
    use campaign_pipeline::maintain::swap::{PointerSwap, SwapError};
    use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
    use iceberg::{TableRequirement, TableUpdate};
    cli_ok(pipeline, &["setup"]);
    let config = campaign_pipeline::config::Config::load(&pipeline.config).unwrap();
    let sink = &config.pipelines[0].sink;
    let catalog = campaign_pipeline::catalog::open_catalog(&config, sink)
        .await
        .unwrap();
    let swap = PointerSwap::open(&config, sink).await.unwrap();
    let stale = common::load_table(&pipeline.config, "campaign_events").await;
    let marker = |value: &str| TableUpdate::SetProperties {
        updates: [("campaign-pipeline.test".to_string(), value.to_string())].into(),
    };
    let requirements = |table: &iceberg::table::Table| {
        vec![
            TableRequirement::UuidMatch {
                uuid: table.metadata().uuid(),
            },
            TableRequirement::CurrentSchemaIdMatch {
                current_schema_id: table.metadata().current_schema_id(),
            },
        ]
    };
    // Another writer moves the table on (a new schema).
    let tx = Transaction::new(&stale);
    let tx = tx
        .update_schema()
        .add_column(AddColumn::optional(
            "added_by_another_writer",
            iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Int),
        ))
        .apply(tx)
        .unwrap();
    tx.commit(catalog.as_ref()).await.unwrap();

    let refused = swap
        .swap(&stale, vec![marker("stale")], requirements(&stale))
        .await;
    assert!(
        matches!(refused, Err(SwapError::Conflict { .. })),
        "{}: {refused:?}",
        sink.catalog.kind()
    );
    let current = common::load_table(&pipeline.config, "campaign_events").await;
    assert!(!current
        .metadata()
        .properties()
        .contains_key("campaign-pipeline.test"));

    swap.swap(&current, vec![marker("landed")], requirements(&current))
        .await
        .unwrap_or_else(|e| panic!("{}: {e:?}", sink.catalog.kind()));
    let after = common::load_table(&pipeline.config, "campaign_events").await;
    assert_eq!(
        after
            .metadata()
            .properties()
            .get("campaign-pipeline.test")
            .map(String::as_str),
        Some("landed"),
        "{}",
        sink.catalog.kind()
    );
}
