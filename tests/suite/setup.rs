//! `setup` against a real broker and a real SQLite catalog: topics and tables read back, and a
//! second run changes nothing.

use crate::common;

use campaign_pipeline::catalog::open_catalog;
use campaign_pipeline::config::Config;
use campaign_pipeline::kafka::admin::TopicAdmin;
use campaign_pipeline::kafka::client_config;
use campaign_pipeline::sink::table::load_table;
use common::{text, TestPipeline};
use iceberg::spec::{PrimitiveType, Transform, Type};

fn column_types(table: &iceberg::table::Table) -> Vec<(String, Type)> {
    table
        .metadata()
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .map(|f| (f.name.clone(), (*f.field_type).clone()))
        .collect()
}

fn partition_columns(table: &iceberg::table::Table) -> Vec<(String, Transform)> {
    let schema = table.metadata().current_schema();
    table
        .metadata()
        .default_partition_spec()
        .fields()
        .iter()
        .map(|f| {
            let source = schema.field_by_id(f.source_id).expect("source column");
            (source.name.clone(), f.transform)
        })
        .collect()
}

fn p(t: PrimitiveType) -> Type {
    Type::Primitive(t)
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_creates_topics_and_tables_and_is_idempotent() {
    let pipeline = TestPipeline::new();
    let first = pipeline.cli(&["setup"]);
    assert!(first.status.success(), "{}", text(&first));
    let out = text(&first);
    assert!(
        out.contains(&format!("topic {}: created (3 partitions)", pipeline.topic)),
        "{out}"
    );
    assert!(
        out.contains("table campaigns.campaign_events: created"),
        "{out}"
    );

    // Topics, read back through the admin API.
    let admin = TopicAdmin::new(&client_config(&pipeline.brokers, &Default::default())).unwrap();
    assert_eq!(admin.partition_count(&pipeline.topic).unwrap(), Some(3));
    assert_eq!(admin.partition_count(&pipeline.dlq_topic).unwrap(), Some(1));
    let ledger = format!("{}.replayed", pipeline.dlq_topic);
    assert_eq!(admin.partition_count(&ledger).unwrap(), Some(1));
    let ledger_configs = admin.topic_configs(&ledger).await.unwrap();
    assert_eq!(
        ledger_configs.get("retention.ms").map(String::as_str),
        Some("-1"),
        "the replay ledger is kept forever: {ledger_configs:?}"
    );
    let dlq_configs = admin.topic_configs(&pipeline.dlq_topic).await.unwrap();
    assert_eq!(
        dlq_configs.get("retention.ms").map(String::as_str),
        Some("604800000"),
        "{dlq_configs:?}"
    );

    // Tables, read back from the catalog.
    let config = Config::load(&pipeline.config).unwrap();
    let sink = &config.pipelines[0].sink;
    let catalog = open_catalog(&config, sink).await.unwrap();
    let events = load_table(catalog.as_ref(), "campaigns", "campaign_events")
        .await
        .unwrap();
    assert_eq!(
        column_types(&events),
        vec![
            ("event_id".into(), p(PrimitiveType::String)),
            ("user_id".into(), p(PrimitiveType::String)),
            ("campaign_id".into(), p(PrimitiveType::String)),
            ("event_type".into(), p(PrimitiveType::String)),
            ("platform".into(), p(PrimitiveType::String)),
            ("timestamp".into(), p(PrimitiveType::Timestamptz)),
            ("revenue".into(), p(PrimitiveType::Double)),
            ("country".into(), p(PrimitiveType::String)),
            ("device_type".into(), p(PrimitiveType::String)),
            ("processed_at".into(), p(PrimitiveType::Timestamptz)),
        ]
    );
    assert_eq!(
        partition_columns(&events),
        vec![
            ("campaign_id".into(), Transform::Identity),
            ("event_type".into(), Transform::Identity)
        ]
    );
    let metrics = load_table(catalog.as_ref(), "campaigns", "campaign_metrics")
        .await
        .unwrap();
    let names: Vec<String> = column_types(&metrics).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "campaign_id",
            "window_start",
            "window_end",
            "impressions",
            "clicks",
            "conversions",
            "revenue",
            "ctr_percent",
            "cvr_percent",
            "processed_at"
        ]
    );
    assert_eq!(column_types(&metrics)[3].1, p(PrimitiveType::Long));
    assert_eq!(
        partition_columns(&metrics),
        vec![("campaign_id".into(), Transform::Identity)]
    );
    let events_metadata = events.metadata_location().map(str::to_string);

    // Second run: says what exists, changes nothing.
    let second = pipeline.cli(&["setup"]);
    assert!(second.status.success(), "{}", text(&second));
    let out = text(&second);
    assert!(
        out.contains(&format!(
            "topic {}: already exists (3 partitions), left unchanged",
            pipeline.topic
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "topic {}: already exists (1 partitions), left unchanged",
            pipeline.dlq_topic
        )),
        "{out}"
    );
    assert!(
        out.contains("table campaigns.campaign_events: already exists, left unchanged"),
        "{out}"
    );
    assert!(
        out.contains("table campaigns.campaign_metrics: already exists, left unchanged"),
        "{out}"
    );
    let reloaded = load_table(catalog.as_ref(), "campaigns", "campaign_events")
        .await
        .unwrap();
    assert_eq!(
        reloaded.metadata_location().map(str::to_string),
        events_metadata
    );
    assert_eq!(admin.partition_count(&pipeline.topic).unwrap(), Some(3));
}

#[test]
fn setup_refuses_broken_sql_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.sql");
    std::fs::write(&bad, "SELECT nope FROM kafka_records").unwrap();
    let pipeline =
        TestPipeline::with_sql(&bad, &common::repo_root().join("sql/campaign_metrics.sql"));
    let output = pipeline.cli(&["setup"]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("bad.sql:1:"), "{}", text(&output));
    let admin = TopicAdmin::new(&client_config(&pipeline.brokers, &Default::default())).unwrap();
    assert_eq!(admin.partition_count(&pipeline.topic).unwrap(), None);
    assert!(!pipeline.dir.path().join("data/catalog.db").exists());
}

#[test]
fn json_logs_are_one_object_per_line_and_text_logs_have_no_colour_codes_off_a_terminal() {
    let pipeline = TestPipeline::new();
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let run = |format: &str| {
        let output = pipeline
            .command(&["--log-format", format, "run", "--until-caught-up"])
            .env("RUST_LOG", "campaign=info")
            .output()
            .expect("run");
        assert!(output.status.success(), "{}", text(&output));
        String::from_utf8(output.stderr).expect("UTF-8 logs")
    };
    let json = run("json");
    let lines: Vec<&str> = json.lines().collect();
    assert!(lines.len() >= 3, "{json}");
    for line in &lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            object["timestamp"].is_string() && object["level"].is_string(),
            "{line}"
        );
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"holding partitions\"")),
        "{json}"
    );
    let text_log = run("text");
    assert!(text_log.contains(" INFO "), "{text_log}");
    assert!(!text_log.contains('\u{1b}'), "{text_log}");
}

#[tokio::test]
async fn a_deleted_topic_is_gone_and_deleting_it_again_is_no_error() {
    use campaign_pipeline::kafka::admin::TopicSpec;
    let topic = common::unique("deleted");
    let admin = TopicAdmin::new(&client_config(
        &common::broker().address,
        &Default::default(),
    ))
    .unwrap();
    admin
        .ensure_topic(&TopicSpec {
            name: topic.clone(),
            partitions: 2,
            replication: 1,
            configs: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(admin.partition_count(&topic).unwrap(), Some(2));
    admin.delete_topic(&topic).await.unwrap();
    // The broker answers the deletion before every metadata answer shows it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while admin.partition_count(&topic).unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "{topic} still listed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    admin.delete_topic(&topic).await.unwrap();
}
