//! pipelines.yaml: the shipped file loads, and each kind of bad file gets its own message.

use std::path::{Path, PathBuf};

use campaign_pipeline::config::{CatalogConfig, Config, StartFrom};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shipped() -> String {
    std::fs::read_to_string(repo().join("pipelines.yaml")).expect("shipped pipelines.yaml")
}

/// Parses text as if it were the repository's pipelines.yaml (so the SQL paths resolve).
fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, &repo().join("pipelines.yaml")).map_err(|e| e.to_string())
}

#[test]
fn shipped_configuration_loads_with_every_documented_key() {
    let config = Config::load(&repo().join("pipelines.yaml")).expect("loads");
    let p = config.pipeline(None).expect("one pipeline");
    assert_eq!(p.name, "campaign");
    assert_eq!(p.source.topic, "campaign_events");
    assert_eq!(p.source.partitions, 3);
    assert_eq!(p.source.start_from, StartFrom::Earliest);
    assert_eq!(p.dead_letter.topic, "dead_letter_queue");
    assert_eq!(p.dead_letter.partitions, 1);
    assert_eq!(p.dead_letter.retention.as_secs(), 7 * 24 * 3600);
    assert_eq!(p.window.allowed_lateness.as_secs(), 10);
    assert_eq!(p.window.max_future.as_secs(), 300);
    assert_eq!(p.window.max_past.as_secs(), 7 * 24 * 3600);
    assert_eq!(p.batch.max_rows, 10_000);
    assert_eq!(p.commit.interval.as_millis(), 1000);
    assert_eq!(p.maintenance.max_snapshots, 100);
    assert_eq!(
        p.sink.events_table.partition_by,
        ["campaign_id", "event_type"]
    );
    assert_eq!(p.sink.metrics_table.partition_by, ["campaign_id"]);
    assert_eq!(
        p.sink
            .events_table
            .properties
            .get("write.metadata.metrics.column.event_id"),
        Some(&"none".to_string())
    );
    assert!(
        matches!(&p.sink.catalog, CatalogConfig::Sqlite { path, warehouse, .. }
        if path == "data/catalog.db" && warehouse == "data/warehouse")
    );
    assert!(config.resolve(&p.sql.parse).is_file());
}

#[test]
fn unknown_key_is_rejected_with_its_path_and_line() {
    let text = shipped().replace("      group_id:", "      group_idd: x\n      group_id:");
    let line = text.lines().position(|l| l.contains("group_idd")).unwrap() + 1;
    let err = parse(&text).unwrap_err();
    assert!(err.contains("pipelines[0].source"), "{err}");
    assert!(err.contains("unknown field `group_idd`"), "{err}");
    assert!(err.contains(&format!("line {line}")), "{err}");
}

#[test]
fn wrong_type_is_rejected_with_its_path_and_line() {
    let text = shipped().replace("max_rows: 10000", "max_rows: lots");
    let line = text
        .lines()
        .position(|l| l.contains("max_rows: lots"))
        .unwrap()
        + 1;
    let err = parse(&text).unwrap_err();
    assert!(err.contains("pipelines[0].batch.max_rows"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
    assert!(err.contains(&format!("line {line}")), "{err}");
}

#[test]
fn unset_environment_variable_is_named() {
    let text = shipped().replace(
        "brokers: ${KAFKA_BROKERS:-127.0.0.1:9092}",
        "brokers: ${CAMPAIGN_TEST_SURELY_UNSET_VAR}",
    );
    let line = text
        .lines()
        .position(|l| l.contains("SURELY_UNSET"))
        .unwrap()
        + 1;
    let err = parse(&text).unwrap_err();
    assert!(
        err.contains("`CAMPAIGN_TEST_SURELY_UNSET_VAR` is not set"),
        "{err}"
    );
    assert!(err.contains("pipelines[0].source"), "{err}");
    assert!(err.contains(&format!("line {line}")), "{err}");
}

#[test]
fn set_environment_variable_is_expanded() {
    std::env::set_var("CAMPAIGN_TEST_BROKERS", "kafka-1:9093,kafka-2:9093");
    let text = shipped().replace(
        "${KAFKA_BROKERS:-127.0.0.1:9092}",
        "${CAMPAIGN_TEST_BROKERS}",
    );
    let config = parse(&text).expect("loads");
    assert_eq!(
        config.pipelines[0].source.brokers,
        "kafka-1:9093,kafka-2:9093"
    );
}

#[test]
fn missing_sql_file_is_named_with_its_path() {
    let text = shipped().replace("sql/campaign_metrics.sql", "sql/no_such_metrics.sql");
    let err = parse(&text).unwrap_err();
    assert!(err.contains("pipelines[0].sql.metrics"), "{err}");
    assert!(err.contains("no_such_metrics.sql does not exist"), "{err}");
}

#[test]
fn duplicate_pipeline_names_and_bad_bounds_are_rejected() {
    let one = shipped();
    let body = one.split_once("pipelines:\n").unwrap().1;
    let twice = format!("pipelines:\n{body}{body}");
    assert!(parse(&twice)
        .unwrap_err()
        .contains("`campaign` is used twice"));
    let zero = shipped().replace("partitions: 3 ", "partitions: 0 ");
    assert!(parse(&zero)
        .unwrap_err()
        .contains("source.partitions: must be at least 1"));
    let short_past = shipped().replace("max_past: 7d ", "max_past: 5s ");
    assert!(parse(&short_past)
        .unwrap_err()
        .contains("window.max_past: must be longer than window.allowed_lateness (10s)"));
    let capped_below_kept = shipped().replace("max_snapshots: 100 ", "max_snapshots: 5 ");
    assert!(parse(&capped_below_kept)
        .unwrap_err()
        .contains("maintenance.max_snapshots: must be at least keep_snapshots (20)"));
}

#[test]
fn unreadable_file_is_named() {
    let err = Config::load(Path::new("/no/such/pipelines.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/pipelines.yaml"), "{err}");
}

#[test]
fn cooperative_rebalancing_is_refused_naming_the_property() {
    let text = shipped().replace(
        "properties: {}",
        "properties: { partition.assignment.strategy: cooperative-sticky }",
    );
    let err = parse(&text).unwrap_err();
    assert!(
        err.contains("pipelines[0].source.properties.partition.assignment.strategy"),
        "{err}"
    );
    assert!(err.contains("eager assignor"), "{err}");
    let eager = shipped().replace(
        "properties: {}",
        "properties: { partition.assignment.strategy: roundrobin }",
    );
    parse(&eager).expect("an eager assignor is fine");
}

#[test]
fn a_topic_name_kafka_would_not_take_or_would_read_as_a_pattern_is_refused() {
    let pattern = shipped().replace("topic: campaign_events", "topic: ^campaign_.*");
    let err = parse(&pattern).unwrap_err();
    assert!(err.contains("pipelines[0].source.topic"), "{err}");
    assert!(err.contains("`^` is not allowed"), "{err}");
    let spaced = shipped().replace("topic: dead_letter_queue", "topic: dead letters");
    let err = parse(&spaced).unwrap_err();
    assert!(err.contains("pipelines[0].dead_letter.topic"), "{err}");
    assert!(err.contains("` ` is not allowed"), "{err}");
    let long = shipped().replace(
        "topic: campaign_events",
        &format!("topic: {}", "t".repeat(250)),
    );
    assert!(parse(&long).unwrap_err().contains("1 to 249 characters"));
    let legal = shipped().replace("topic: campaign_events", "topic: Campaign.events-v2_eu");
    parse(&legal).expect("letters, digits, dots, underscores and dashes are fine");
}

#[test]
fn the_query_memory_bounds_read_as_sizes_and_a_share_over_the_whole_is_refused() {
    use campaign_pipeline::config::ByteSize;
    let config = parse(&shipped()).expect("loads");
    assert_eq!(config.sql_endpoint.max_memory, ByteSize::gib(2));
    assert_eq!(config.sql_endpoint.statement_memory, ByteSize::mib(512));
    assert_eq!(config.sql_endpoint.max_spill, ByteSize::gib(8));
    assert!(config.sql_endpoint.tls.is_none());
    let over = shipped().replace("statement_memory: 512MiB", "statement_memory: 4GiB");
    assert!(parse(&over)
        .unwrap_err()
        .contains("sql_endpoint.statement_memory: 4GiB is more than max_memory (2GiB)"));
    let unit = shipped().replace("max_memory: 2GiB", "max_memory: 2 gallons");
    let err = parse(&unit).unwrap_err();
    assert!(
        err.contains("unknown unit `gallons`") && err.contains("line"),
        "{err}"
    );
}

#[test]
fn a_catalog_pool_property_that_does_not_read_is_refused_naming_it() {
    for (property, value, says) in [
        (
            "pool.max-connections",
            "ten",
            "a whole number of connections",
        ),
        ("pool.idle-timeout", "10s", "a whole number of seconds"),
        ("pool.test-before-acquire", "yes", "`true` or `false`"),
    ] {
        let text = shipped().replace(
            "        warehouse: data/warehouse\n",
            &format!("        warehouse: data/warehouse\n        properties: {{ {property}: {value} }}\n"),
        );
        let err = parse(&text).unwrap_err();
        assert!(
            err.contains(&format!("pipelines[0].sink.catalog.properties.{property}")),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
    }
    let fine = shipped().replace(
        "        warehouse: data/warehouse\n",
        "        warehouse: data/warehouse\n        properties: { pool.max-connections: 4, pool.test-before-acquire: true }\n",
    );
    parse(&fine).expect("pool properties that read are fine");
}

#[test]
fn a_table_property_the_writer_cannot_follow_is_refused_naming_it() {
    let shipped = shipped();
    let line = "          write.metadata.metrics.column.user_id: none\n";
    assert!(
        shipped.contains(line),
        "the shipped events table sets user_id's metrics"
    );
    for (property, value, says) in [
        (
            "write.metadata.metrics.column.user_id",
            "truncate(0)",
            "not a metrics mode",
        ),
        (
            "write.metadata.metrics.default",
            "bounds",
            "not a metrics mode",
        ),
        ("write.parquet.compression-codec", "lzo", "not a codec"),
    ] {
        let text = shipped.replace(line, &format!("          {property}: {value}\n"));
        let err = parse(&text).unwrap_err();
        assert!(
            err.contains(&format!(
                "pipelines[0].sink.events_table.properties.{property}"
            )),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
    }
}
