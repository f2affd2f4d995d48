//! The stream core against a real broker and real Iceberg tables: every valid event lands in
//! campaign_events exactly once, value for value and in its partition; every invalid one lands
//! in the dead letter queue with its reason and source offset; restarts and SIGKILLs lose and
//! duplicate nothing.

mod collector;
use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use campaign_pipeline::dlq::{DeadLetter, PayloadEncoding};
use campaign_pipeline::generator::event::{CampaignEvent, EVENT_TYPES};
use common::{read_topic, repo_root, scan_table, snapshot_properties, text, Record, TestPipeline};

/// One row of the events table as the test compares it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    event_id: String,
    user_id: String,
    campaign_id: String,
    event_type: String,
    platform: String,
    timestamp_micros: i64,
    revenue: f64,
    country: String,
    device_type: String,
}

fn rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for batch in batches {
        let s = |name: &str| {
            arrow::compute::cast(
                batch.column_by_name(name).unwrap(),
                &arrow::datatypes::DataType::Utf8,
            )
            .unwrap()
        };
        let (ids, users, campaigns, types, platforms, countries, devices) = (
            s("event_id"),
            s("user_id"),
            s("campaign_id"),
            s("event_type"),
            s("platform"),
            s("country"),
            s("device_type"),
        );
        let ts = batch
            .column_by_name("timestamp")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .clone();
        let revenue = batch
            .column_by_name("revenue")
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone();
        for i in 0..batch.num_rows() {
            out.push(Row {
                event_id: ids.as_string::<i32>().value(i).to_string(),
                user_id: users.as_string::<i32>().value(i).to_string(),
                campaign_id: campaigns.as_string::<i32>().value(i).to_string(),
                event_type: types.as_string::<i32>().value(i).to_string(),
                platform: platforms.as_string::<i32>().value(i).to_string(),
                timestamp_micros: ts.value(i),
                revenue: revenue.value(i),
                country: countries.as_string::<i32>().value(i).to_string(),
                device_type: devices.as_string::<i32>().value(i).to_string(),
            });
        }
    }
    out
}

/// What the shipped parsing SQL must decide for a message, computed independently of it:
/// `Ok(row)` for a valid event, `Err(reason prefix)` for a rejected one.
fn expected(payload: &[u8]) -> Result<Row, String> {
    let Ok(text) = std::str::from_utf8(payload) else {
        return Err("invalid utf-8".into());
    };
    if text.len() > 65_536 {
        return Err("too large".into());
    }
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) else {
        return Err("broken json".into());
    };
    use serde_json::Value;
    let present = |name: &str| map.get(name).filter(|v| !v.is_null());
    for name in ["event_id", "user_id", "campaign_id"] {
        match present(name) {
            None => return Err(format!("missing {name}")),
            Some(Value::String(s)) if s.trim_matches(' ').is_empty() => {
                return Err(format!("blank {name}"))
            }
            Some(Value::String(s)) if s.chars().count() > 256 => {
                return Err(format!("too long: {name}"))
            }
            Some(Value::String(_)) => {}
            Some(_) => return Err(format!("wrong type: {name}")),
        }
    }
    for name in [
        "event_type",
        "timestamp",
        "revenue",
        "platform",
        "country",
        "device_type",
    ] {
        let fits = match present(name) {
            None => true,
            Some(Value::Number(_)) => name == "revenue",
            Some(Value::String(_)) => name != "revenue",
            Some(_) => false,
        };
        if !fits {
            return Err(format!("wrong type: {name}"));
        }
    }
    for name in ["platform", "country", "device_type"] {
        if present(name)
            .and_then(Value::as_str)
            .is_some_and(|s| s.chars().count() > 64)
        {
            return Err(format!("too long: {name}"));
        }
    }
    let field = |name: &str| present(name).and_then(Value::as_str);
    let Some(event_type) = field("event_type") else {
        return Err("missing event_type".into());
    };
    if !EVENT_TYPES.contains(&event_type) {
        return Err("unknown event_type".into());
    }
    let Some(time) = field("timestamp") else {
        return Err("missing timestamp".into());
    };
    let Ok(time) = chrono::DateTime::parse_from_rfc3339(time) else {
        return Err("bad timestamp".into());
    };
    let revenue = present("revenue").and_then(Value::as_f64).unwrap_or(0.0);
    if revenue < 0.0 {
        return Err("negative revenue".into());
    }
    let event: CampaignEvent = serde_json::from_str(text).unwrap();
    Ok(Row {
        event_id: event.event_id,
        user_id: event.user_id,
        campaign_id: event.campaign_id,
        event_type: event.event_type,
        platform: event.platform,
        timestamp_micros: time.timestamp_micros(),
        revenue,
        country: event.country,
        device_type: event.device_type,
    })
}

fn run_until_caught_up(pipeline: &TestPipeline) -> String {
    let output = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(output.status.success(), "{}", text(&output));
    text(&output)
}

fn setup_and_generate(pipeline: &TestPipeline, args: &[&str]) -> Vec<Record> {
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    generate(pipeline, args)
}

fn generate(pipeline: &TestPipeline, args: &[&str]) -> Vec<Record> {
    let mut all = vec!["generate"];
    all.extend_from_slice(args);
    let output = pipeline.cli(&all);
    assert!(output.status.success(), "{}", text(&output));
    read_topic(&pipeline.brokers, &pipeline.topic)
}

async fn table_rows(pipeline: &TestPipeline) -> Vec<Row> {
    rows(&scan_table(&pipeline.config, "campaign_events").await)
}

fn dead_letters(pipeline: &TestPipeline) -> Vec<(Record, DeadLetter)> {
    read_topic(&pipeline.brokers, &pipeline.dlq_topic)
        .into_iter()
        .map(|r| {
            let letter: DeadLetter = serde_json::from_slice(&r.payload).expect("dead letter JSON");
            (r, letter)
        })
        .collect()
}

/// Valid rows by event_id, asserting that none appears twice.
fn by_event_id(rows: Vec<Row>) -> BTreeMap<String, Row> {
    let mut map = BTreeMap::new();
    for row in rows {
        let id = row.event_id.clone();
        assert!(
            map.insert(id.clone(), row).is_none(),
            "event {id} is in the table twice"
        );
    }
    map
}

/// A partition left on the consumer's own queue (as a forwarding to the source's queue that did
/// not take would leave it) is read beside the forwarded ones: every event lands once and every
/// invalid one is dead-lettered once.
#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_read_from_the_consumers_own_queue_lands_like_the_others() {
    let pipeline = TestPipeline::new();
    let sent = setup_and_generate(
        &pipeline,
        &["--count", "3000", "--seed", "11", "--invalid-ratio", "0.1"],
    );
    assert!(
        sent.iter().any(|r| r.partition == 1) && sent.iter().any(|r| r.partition != 1),
        "events in partition 1 and in others"
    );
    let output = pipeline
        .command(&["run", "--until-caught-up"])
        .env("CAMPAIGN_TEST_UNFORWARDED_PARTITIONS", "1")
        .output()
        .expect("run the runner");
    assert!(output.status.success(), "{}", text(&output));

    let mut want: BTreeMap<String, Row> = BTreeMap::new();
    let mut want_rejected: Vec<(i32, i64)> = Vec::new();
    for record in &sent {
        match expected(&record.payload) {
            Ok(row) => {
                want.insert(row.event_id.clone(), row);
            }
            Err(_) => want_rejected.push((record.partition, record.offset)),
        }
    }
    let got = by_event_id(table_rows(&pipeline).await);
    assert_eq!(got, want, "{}", text(&output));
    let mut rejected: Vec<(i32, i64)> = dead_letters(&pipeline)
        .iter()
        .map(|(_, letter)| (letter.source.partition, letter.source.offset))
        .collect();
    rejected.sort_unstable();
    want_rejected.sort_unstable();
    assert_eq!(rejected, want_rejected);
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_events_land_value_for_value_and_invalid_ones_in_the_dead_letter_queue() {
    let pipeline = TestPipeline::new();
    let sent = setup_and_generate(
        &pipeline,
        // 30 s of events across a minute's end: the run closes windows, so the metrics table
        // has data files beside the events table's.
        &[
            "--count",
            "3000",
            "--seed",
            "5",
            "--invalid-ratio",
            "0.2",
            "--start-time",
            "2026-01-01T00:00:45Z",
        ],
    );
    let out = run_until_caught_up(&pipeline);

    let mut want_rows = BTreeMap::new();
    let mut want_rejects: HashMap<(i32, i64), (&Record, String)> = HashMap::new();
    for record in &sent {
        match expected(&record.payload) {
            Ok(row) => {
                assert_eq!(record.key.as_deref(), Some(row.campaign_id.as_bytes()));
                want_rows.insert(row.event_id.clone(), row);
            }
            Err(reason) => {
                want_rejects.insert((record.partition, record.offset), (record, reason));
            }
        }
    }
    assert!(want_rejects.len() > 400, "{}", want_rejects.len());

    let got = by_event_id(table_rows(&pipeline).await);
    assert_eq!(got.len(), want_rows.len(), "{out}");
    assert_eq!(got, want_rows);

    let letters = dead_letters(&pipeline);
    assert_eq!(letters.len(), want_rejects.len(), "{out}");
    let mut categories: BTreeMap<String, u64> = BTreeMap::new();
    for (record, letter) in &letters {
        let (source, reason) = want_rejects
            .get(&(letter.source.partition, letter.source.offset))
            .unwrap_or_else(|| panic!("unexpected dead letter {letter:?}"));
        assert_eq!(letter.source.topic, pipeline.topic);
        assert!(
            letter.error.starts_with(reason.as_str()),
            "{} vs {reason}",
            letter.error
        );
        assert_eq!(
            letter.payload_bytes().unwrap(),
            source.payload,
            "payload intact"
        );
        assert_eq!(
            record.key, source.key,
            "dead letter keyed by the original key"
        );
        assert_eq!(letter.pipeline, "test");
        assert!(letter.source.timestamp.is_some());
        assert_eq!(
            letter.payload_encoding == PayloadEncoding::Base64,
            reason == "invalid utf-8"
        );
        *categories.entry(letter.category.clone()).or_default() += 1;
    }
    for category in [
        "broken_json",
        "invalid_utf_8",
        "unknown_event_type",
        "bad_timestamp",
        "negative_revenue",
        "wrong_type",
    ] {
        assert!(
            categories.get(category).copied().unwrap_or(0) > 20,
            "{category}: {categories:?}"
        );
    }

    // Every row sits in the data file of its partition (campaign_id, event_type). (The metrics
    // table's files, under their own folder, hold the windows the run closed.)
    let warehouse = pipeline
        .dir
        .path()
        .join("data/warehouse/campaigns/campaign_events");
    assert!(warehouse.is_dir(), "{}", warehouse.display());
    let mut files = 0;
    for entry in common::files_under(&warehouse) {
        if entry.extension().is_some_and(|e| e == "parquet") {
            files += 1;
            let path = entry.to_string_lossy().to_string();
            let file = std::fs::File::open(&entry).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 8192)
                    .unwrap();
            for batch in reader {
                for row in rows(&[batch.unwrap()]) {
                    assert!(
                        path.contains(&format!(
                            "campaign_id={}/event_type={}/",
                            row.campaign_id, row.event_type
                        )),
                        "{path}"
                    );
                }
            }
        }
    }
    assert!(files >= 10, "{files} data files");

    let properties = snapshot_properties(&pipeline.config, "campaign_events").await;
    let offsets: serde_json::Value =
        serde_json::from_str(&properties["campaign-pipeline.offsets"]).unwrap();
    let ends: BTreeMap<i32, i64> = sent.iter().fold(BTreeMap::new(), |mut m, r| {
        m.insert(r.partition, r.offset + 1);
        m
    });
    for (partition, end) in ends {
        assert_eq!(
            offsets[&pipeline.topic][partition.to_string()],
            end,
            "{properties:?}"
        );
    }
    assert_eq!(properties["campaign-pipeline.pipeline"], "test");
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_runs_add_only_new_events() {
    let pipeline = TestPipeline::new();
    let first = setup_and_generate(
        &pipeline,
        &["--count", "2000", "--seed", "1", "--invalid-ratio", "0.05"],
    );
    run_until_caught_up(&pipeline);
    let after_first = by_event_id(table_rows(&pipeline).await);
    let valid_first = first
        .iter()
        .filter(|r| expected(&r.payload).is_ok())
        .count();
    assert_eq!(after_first.len(), valid_first);

    let again = run_until_caught_up(&pipeline);
    assert!(again.contains("0 messages"), "{again}");
    assert_eq!(
        by_event_id(table_rows(&pipeline).await),
        after_first,
        "a second run adds nothing"
    );
    let letters_before = dead_letters(&pipeline).len();

    let all = generate(
        &pipeline,
        &["--count", "1500", "--seed", "2", "--invalid-ratio", "0.05"],
    );
    run_until_caught_up(&pipeline);
    let after_second = by_event_id(table_rows(&pipeline).await);
    let valid_all = all.iter().filter(|r| expected(&r.payload).is_ok()).count();
    assert_eq!(after_second.len(), valid_all);
    for (id, row) in &after_first {
        assert_eq!(after_second.get(id), Some(row));
    }
    let invalid_new = all.len() - first.len() - (valid_all - valid_first);
    assert_eq!(dead_letters(&pipeline).len(), letters_before + invalid_new);
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_tables_are_rebuilt_from_the_topic_although_the_group_is_at_its_end() {
    let pipeline = TestPipeline::new();
    setup_and_generate(&pipeline, &["--count", "3000", "--seed", "8"]);
    run_until_caught_up(&pipeline);
    let before = by_event_id(table_rows(&pipeline).await);
    assert_eq!(before.len(), 3000);

    // The tables go (catalog and warehouse), the consumer group keeps its committed offsets.
    std::fs::remove_dir_all(pipeline.dir.path().join("data")).unwrap();
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let rebuilt = run_until_caught_up(&pipeline);
    assert!(rebuilt.contains("3000 messages"), "{rebuilt}");
    assert_eq!(by_event_id(table_rows(&pipeline).await), before);
}

/// A source topic deleted and created again (what `docker compose down`/`up` did to a broker
/// that kept its data outside its volume) ends below the offsets the tables hold: the runner
/// stops before it reads anything of the new topic, naming the partition, the topic's end and
/// the tables' offset, instead of dropping the new events as already absorbed.
#[tokio::test]
async fn a_source_topic_created_again_stops_the_runner_naming_the_partition_and_both_offsets() {
    let pipeline = TestPipeline::new();
    let old = setup_and_generate(&pipeline, &["--count", "3000", "--seed", "31"]);
    run_until_caught_up(&pipeline);
    let before = by_event_id(table_rows(&pipeline).await);
    assert_eq!(before.len(), 3000);

    delete_topic(&pipeline.brokers, &pipeline.topic).await;
    let new = setup_and_generate(&pipeline, &["--count", "300", "--seed", "32"]);
    let end = |records: &[Record], partition: i32| {
        records
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| r.offset + 1)
            .max()
            .unwrap_or(0)
    };
    let output = pipeline.cli(&["run", "--until-caught-up"]);
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    let named = said
        .split(&format!("topic {} partition ", pipeline.topic))
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("no partition named: {said}"));
    let stopped = format!(
        "partition {named} ends at offset {}, but the tables hold its events up to offset {}",
        end(&new, named),
        end(&old, named)
    );
    assert!(said.contains(&stopped), "{stopped}\n{said}");
    assert_eq!(
        by_event_id(table_rows(&pipeline).await),
        before,
        "nothing of the new topic was written"
    );

    // Accepted, the new topic is read from its start into the same tables, and the snapshot
    // of each table that lowers the offsets says so; after it, runs are as usual.
    let output = pipeline.cli(&["run", "--until-caught-up", "--accept-offset-jumps"]);
    assert!(output.status.success(), "{}", text(&output));
    let rows = by_event_id(table_rows(&pipeline).await);
    let wanted: Vec<String> = old
        .iter()
        .chain(&new)
        .filter_map(|r| expected(&r.payload).ok())
        .map(|r| r.event_id)
        .collect();
    assert_eq!(rows.len(), wanted.len(), "every event of both topics once");
    assert!(wanted.iter().all(|id| rows.contains_key(id)));
    for table in ["campaign_events", "campaign_metrics"] {
        let loaded = common::load_table(&pipeline.config, table).await;
        let jumps: Vec<serde_json::Value> = loaded
            .metadata()
            .snapshots()
            .filter_map(|s| {
                let text = s
                    .summary()
                    .additional_properties
                    .get("campaign-pipeline.offset-jumps")?;
                Some(serde_json::from_str(text).expect("offset jumps JSON"))
            })
            .collect();
        assert_eq!(jumps.len(), 1, "{table}: one snapshot records the jump");
        assert_eq!(
            jumps[0][&pipeline.topic][named.to_string()],
            serde_json::json!({"from": end(&old, named), "to": 0, "skipped": 0}),
            "{table}"
        );
    }
    let again = run_until_caught_up(&pipeline);
    assert!(again.contains("0 messages"), "{again}");
}

async fn delete_topic(brokers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    for result in admin
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .expect("delete topics")
    {
        result.expect("topic deleted");
    }
}

/// A pipeline committing every 50ms in 2000-row batches, with 150,000 events (2% invalid) sent.
fn fast_committing_stream() -> (TestPipeline, Vec<Record>) {
    let pipeline = TestPipeline::new();
    pipeline.edit_config(|yaml| {
        yaml.replace("interval: 5s", "interval: 50ms")
            .replace("max_rows: 10000", "max_rows: 2000")
    });
    let sent = setup_and_generate(
        &pipeline,
        &[
            "--count",
            "150000",
            "--seed",
            "9",
            "--invalid-ratio",
            "0.02",
        ],
    );
    (pipeline, sent)
}

/// Asserts that the events table holds every valid sent event exactly once, value for value,
/// naming the source coordinates of any that is missing.
async fn assert_each_valid_event_once(pipeline: &TestPipeline, sent: &[Record], context: &str) {
    let rows = by_event_id(table_rows(pipeline).await);
    let missing: Vec<(i32, i64)> = sent
        .iter()
        .filter(|r| expected(&r.payload).is_ok_and(|row| !rows.contains_key(&row.event_id)))
        .map(|r| (r.partition, r.offset))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lost (partition, offset), first {:?}, last {:?}\n{context}",
        missing.len(),
        &missing[..missing.len().min(5)],
        missing.last()
    );
    let wanted: BTreeMap<String, Row> = sent
        .iter()
        .filter_map(|r| expected(&r.payload).ok())
        .map(|r| (r.event_id.clone(), r))
        .collect();
    assert_eq!(rows, wanted, "{context}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_runner_restarts_without_losing_or_duplicating_events() {
    let (pipeline, sent) = fast_committing_stream();
    let want: usize = sent.iter().filter(|r| expected(&r.payload).is_ok()).count();

    // Kill at several moments: after a commit, shortly after one, and between them; with
    // commits every 50ms some kills land while a commit is being written.
    let mut kills = 0;
    for (commits, extra_ms) in [(2i64, 0u64), (3, 7), (1, 23)] {
        let args = ["run", "--until-caught-up"];
        if pipeline
            .kill_after_commits(&args, commits, Duration::from_millis(extra_ms))
            .await
        {
            kills += 1;
        }
        let rows = table_rows(&pipeline).await;
        let unique = by_event_id(rows.clone());
        assert_eq!(unique.len(), rows.len(), "duplicates after kill {kills}");
    }
    assert!(
        kills >= 2,
        "the runner finished before it could be killed; make the stream longer"
    );
    let last = run_until_caught_up(&pipeline);
    assert_each_valid_event_once(&pipeline, &sent, &format!("after {kills} kills\n{last}")).await;
    // Dead letters may repeat after a crash, but none is lost.
    let letters = dead_letters(&pipeline);
    let coordinates: std::collections::HashSet<(i32, i64)> = letters
        .iter()
        .map(|(_, l)| (l.source.partition, l.source.offset))
        .collect();
    assert_eq!(coordinates.len(), sent.len() - want);
}

#[tokio::test(flavor = "multi_thread")]
async fn edited_parsing_sql_takes_effect_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let parse = dir.path().join("campaign_events.sql");
    std::fs::copy(repo_root().join("sql/campaign_events.sql"), &parse).unwrap();
    let pipeline = TestPipeline::with_sql(&parse, &repo_root().join("sql/campaign_metrics.sql"));
    setup_and_generate(&pipeline, &["--count", "1000", "--seed", "3"]);
    run_until_caught_up(&pipeline);
    let before = table_rows(&pipeline).await;
    assert_eq!(before.len(), 1000);
    assert!(before.iter().any(|r| r.country == "US"));

    let sql = std::fs::read_to_string(&parse).unwrap().replace(
        "    WHEN _revenue < 0 ",
        "    WHEN country = 'US'                              THEN 'blocked country: ' || country\n    WHEN _revenue < 0 ",
    );
    std::fs::write(&parse, sql).unwrap();
    let sent = generate(&pipeline, &["--count", "1000", "--seed", "4"]);
    run_until_caught_up(&pipeline);
    let after = table_rows(&pipeline).await;
    assert_eq!(sent.len(), 2000);
    let new_rows: Vec<&Row> = after.iter().filter(|r| !before.contains(r)).collect();
    assert!(!new_rows.is_empty());
    assert!(
        new_rows.iter().all(|r| r.country != "US"),
        "the new rule rejects US events"
    );
    let blocked: Vec<DeadLetter> = dead_letters(&pipeline)
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.category == "blocked_country")
        .collect();
    assert!(!blocked.is_empty());
    assert_eq!(new_rows.len() + blocked.len(), 1000);
    assert!(blocked.iter().all(|l| l.error == "blocked country: US"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_error_stops_run_before_anything_is_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let parse = dir.path().join("campaign_events.sql");
    std::fs::copy(repo_root().join("sql/campaign_events.sql"), &parse).unwrap();
    let pipeline = TestPipeline::with_sql(&parse, &repo_root().join("sql/campaign_metrics.sql"));
    setup_and_generate(&pipeline, &["--count", "100", "--seed", "3"]);
    let sql = std::fs::read_to_string(&parse)
        .unwrap()
        .replace("json_fields(value,", "json_fields(valeu,");
    let line = sql.lines().position(|l| l.contains("valeu")).unwrap() + 1;
    std::fs::write(&parse, sql).unwrap();

    let output = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains(&format!("{}:{line}:", parse.display())),
        "{}",
        text(&output)
    );
    assert!(
        snapshot_properties(&pipeline.config, "campaign_events")
            .await
            .is_empty(),
        "nothing committed"
    );
    assert!(scan_table(&pipeline.config, "campaign_events")
        .await
        .is_empty());
    assert!(dead_letters(&pipeline).is_empty(), "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread")]
async fn long_stream_in_small_batches_keeps_every_event() {
    let (pipeline, sent) = fast_committing_stream();
    let out = run_until_caught_up(&pipeline);
    assert_each_valid_event_once(&pipeline, &sent, &out).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_batch_in_hand_commits_and_exits_cleanly() {
    let pipeline = TestPipeline::new();
    // No commit is due before the signal: whatever the tables hold at the end, the shutdown
    // committed.
    pipeline.edit_config(|yaml| {
        assert!(yaml.contains("interval: 5s"), "{yaml}");
        yaml.replace("interval: 5s", "interval: 1h")
    });
    let sent = setup_and_generate(&pipeline, &["--count", "5000", "--seed", "21"]);
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut child, _logs) = pipeline.spawn_logged(&["run", "--dashboard", "--listen", &listen]);
    // The runner has read everything once its own count of consumed events says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let consumed = common::http_get(port, "/metrics").and_then(|(_, body)| {
            common::metric_sample(&body, "campaign_pipeline_events_consumed_total")
        });
        if consumed == Some(sent.len() as f64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the runner read {consumed:?} of {} events",
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        table_rows(&pipeline).await.is_empty(),
        "nothing committed before the signal"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let rows = by_event_id(table_rows(&pipeline).await);
    assert_eq!(
        rows.len(),
        sent.len(),
        "everything read before the signal was committed"
    );
}

#[test]
fn missing_tables_or_topic_stop_run_with_a_clear_message() {
    let pipeline = TestPipeline::new();
    let output = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("table campaigns.campaign_events: the table does not exist; run `campaign-pipeline setup` first"),
        "{}",
        text(&output)
    );

    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let renamed = common::unique("renamed");
    pipeline.edit_config(|yaml| yaml.replace(&pipeline.topic, &renamed));
    let output = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains(&format!(
            "topic {renamed}: does not exist; run `campaign-pipeline setup` first"
        )),
        "{}",
        text(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_added_to_the_parsing_sql_is_added_to_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let parse = dir.path().join("campaign_events.sql");
    std::fs::copy(repo_root().join("sql/campaign_events.sql"), &parse).unwrap();
    let pipeline = TestPipeline::with_sql(&parse, &repo_root().join("sql/campaign_metrics.sql"));
    setup_and_generate(&pipeline, &["--count", "100", "--seed", "3"]);
    let first = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(first.status.success(), "{}", text(&first));

    let sql = std::fs::read_to_string(&parse).unwrap().replacen(
        "  device_type,\n",
        "  device_type,\n  upper(country) AS country_code,\n",
        1,
    );
    assert!(sql.contains("country_code"));
    std::fs::write(&parse, sql).unwrap();
    let generate = pipeline.cli(&["generate", "--count", "50", "--seed", "4"]);
    assert!(generate.status.success(), "{}", text(&generate));
    let second = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(second.status.success(), "{}", text(&second));

    let batches = scan_table(&pipeline.config, "campaign_events").await;
    let mut filled = 0;
    let mut empty = 0;
    for batch in &batches {
        let codes = batch
            .column_by_name("country_code")
            .expect("the table gained country_code");
        let countries = batch.column_by_name("country").unwrap().as_string::<i32>();
        let codes = codes.as_string::<i32>();
        for i in 0..batch.num_rows() {
            if codes.is_null(i) {
                empty += 1;
            } else {
                assert_eq!(codes.value(i), countries.value(i).to_uppercase());
                filled += 1;
            }
        }
    }
    // Rows written before the change keep NULL; rows after it carry the new column.
    assert_eq!((empty, filled), (100, 50));
}

/// A valid event as JSON, for a test to break one field of.
fn valid_payload(n: usize) -> serde_json::Map<String, serde_json::Value> {
    let event = serde_json::json!({
        "event_id": format!("rule-{n}"),
        "user_id": "user_1",
        "campaign_id": "campaign_001",
        "event_type": "click",
        "platform": "web",
        "timestamp": (chrono::Utc::now() - chrono::TimeDelta::minutes(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "revenue": 0.0,
        "country": "US",
        "device_type": "desktop",
    });
    match event {
        serde_json::Value::Object(map) => map,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_parsing_rule_dead_letters_what_breaks_it_and_keeps_its_neighbours() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use serde_json::{json, Value};
    let pipeline = TestPipeline::new();
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let long = |n: usize| "x".repeat(n);
    let broken: Vec<(&str, Value, &str)> = vec![
        ("event_id", json!(1), "wrong type: event_id"),
        ("event_id", json!(1.5), "wrong type: event_id"),
        ("event_id", json!(true), "wrong type: event_id"),
        ("event_id", json!([]), "wrong type: event_id"),
        ("event_id", json!({}), "wrong type: event_id"),
        ("event_id", json!(" "), "blank event_id"),
        ("event_id", json!(long(257)), "too long: event_id"),
        ("event_id", json!(long(1_000_000)), "too large"),
        ("user_id", json!(7), "wrong type: user_id"),
        ("user_id", json!(""), "blank user_id"),
        ("campaign_id", json!([]), "wrong type: campaign_id"),
        ("campaign_id", json!(true), "wrong type: campaign_id"),
        ("campaign_id", json!(long(300)), "too long: campaign_id"),
        ("event_type", json!(1), "wrong type: event_type"),
        ("timestamp", json!(1_767_225_600), "wrong type: timestamp"),
        ("revenue", json!("12.50"), "wrong type: revenue"),
        ("platform", json!(["web"]), "wrong type: platform"),
        ("country", json!(false), "wrong type: country"),
        (
            "device_type",
            json!({ "kind": "phone" }),
            "wrong type: device_type",
        ),
        ("platform", json!(long(65)), "too long: platform"),
        ("extra", json!(long(70_000)), "too large"),
        (
            "timestamp",
            json!("2099-01-01T00:00:00Z"),
            "future timestamp: 2099-01-01T00:00:00.000000Z",
        ),
    ];
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &pipeline.brokers)
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    // Each broken event sits between two valid ones, all in one partition.
    let mut n = 0;
    let send = |payload: String| {
        producer
            .send(
                BaseRecord::to(&pipeline.topic)
                    .partition(0)
                    .key("campaign_001")
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)
            .expect("send");
        producer.poll(Duration::ZERO);
    };
    for (field, value, _) in &broken {
        send(Value::Object(valid_payload(n)).to_string());
        n += 1;
        let mut event = valid_payload(n);
        event.insert(field.to_string(), value.clone());
        send(Value::Object(event).to_string());
        n += 1;
    }
    send(Value::Object(valid_payload(n)).to_string());
    producer.flush(Duration::from_secs(30)).unwrap();
    run_until_caught_up(&pipeline);

    let letters = dead_letters(&pipeline);
    let reasons: Vec<&str> = letters.iter().map(|(_, l)| l.error.as_str()).collect();
    let want: Vec<&str> = broken.iter().map(|(_, _, reason)| *reason).collect();
    assert_eq!(reasons, want);
    for ((_, letter), offset) in letters.iter().zip((1..).step_by(2)) {
        assert_eq!(letter.source.offset, offset, "{}", letter.error);
    }
    let huge = &letters[7].1;
    assert!(huge.payload.len() > 1_000_000, "the payload is kept whole");
    let ids: std::collections::BTreeSet<String> = table_rows(&pipeline)
        .await
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    let neighbours: std::collections::BTreeSet<String> =
        (0..=n).step_by(2).map(|i| format!("rule-{i}")).collect();
    assert_eq!(ids, neighbours);
}

#[test]
fn a_broker_outage_is_logged_in_a_few_lines_and_loses_nothing() {
    let common::ProxiedPipeline {
        pipeline, proxy, ..
    } = common::pipeline_behind_proxy();
    pipeline.edit_config(|yaml| yaml.replace("interval: 5s", "interval: 1s"));
    // Two stretches of 5,000 events 10 ms apart, the second right after the first in event
    // time (so that none is late), both in the past.
    let t0 = chrono::Utc::now() - chrono::TimeDelta::minutes(2);
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    setup_and_generate(
        &pipeline,
        &[
            "--count",
            "5000",
            "--seed",
            "71",
            "--invalid-ratio",
            "0.02",
            "--start-time",
            &at(t0),
        ],
    );
    let (mut runner, lines) = pipeline.spawn_logged(&["run"]);
    let mut log = Vec::new();
    let wait_for = |what: &str, log: &mut Vec<String>, done: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = done(&line);
                    log.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no {what} within 120 s:\n{}", log.join("\n")),
            }
        }
    };
    wait_for("first commit", &mut log, &|l| l.contains("committed"));
    let outage_starts = log.len();
    proxy.cut();
    // 15 s without the broker, the runner logging all the while.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < until {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            log.push(line);
        }
    }
    proxy.restore();
    let sent = generate(
        &pipeline,
        &[
            "--count",
            "5000",
            "--seed",
            "72",
            "--invalid-ratio",
            "0.02",
            "--start-time",
            &at(t0 + chrono::TimeDelta::seconds(50)),
        ],
    );
    wait_for("recovery", &mut log, &|l| l.contains("recovered after"));
    // Stop once everything sent is in the table and the dead letter queue (a dead letter may be
    // repeated after a rebalance, see the README; its source coordinates identify it).
    let valid = sent.iter().filter(|r| expected(&r.payload).is_ok()).count();
    let invalid: std::collections::BTreeSet<(i32, i64)> = sent
        .iter()
        .filter(|r| expected(&r.payload).is_err())
        .map(|r| (r.partition, r.offset))
        .collect();
    let rejected = || -> std::collections::BTreeSet<(i32, i64)> {
        dead_letters(&pipeline)
            .iter()
            .map(|(_, letter)| (letter.source.partition, letter.source.offset))
            .collect()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while runtime.block_on(table_rows(&pipeline)).len() < valid || rejected().len() < invalid.len()
    {
        assert!(std::time::Instant::now() < deadline, "{}", log.join("\n"));
        while let Ok(line) = lines.try_recv() {
            log.push(line);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    unsafe { libc::kill(runner.id() as i32, libc::SIGTERM) };
    assert!(runner.wait().unwrap().success());
    log.extend(lines.try_iter());

    let rows = by_event_id(runtime.block_on(table_rows(&pipeline)));
    assert_eq!(rows.len(), valid, "every valid event once");
    assert_eq!(
        rejected(),
        invalid,
        "every invalid one in the dead letter queue"
    );
    let during: Vec<&String> = log[outage_starts..]
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    // One line per kind of error when it starts (librdkafka reports a few kinds), at most one
    // summary per kind in 15 s, then one `recovered` line each.
    assert!(
        (1..=10).contains(&during.len()),
        "{} warning and error lines:\n{}",
        during.len(),
        log.join("\n")
    );
    assert!(
        log.iter().all(|l| !l.contains('\u{1b}')),
        "no colour codes in a log that is not a terminal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_products_example_event_takes_its_record_time_and_lands_in_both_tables() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let pipeline = TestPipeline::new();
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    // What the product description shows an app sending: no timestamp, platform, country or
    // device_type. Its event time is the record's CreateTime, set here by the producer.
    let example = |id: &str, kind: &str| {
        format!(
            r#"{{"event_id": "{id}", "user_id": "user_456", "campaign_id": "camp_789", "event_type": "{kind}", "revenue": 0.0}}"#
        )
    };
    let minute = chrono::DurationRound::duration_trunc(
        chrono::Utc::now() - chrono::TimeDelta::minutes(5),
        chrono::TimeDelta::minutes(1),
    )
    .unwrap();
    let created_ms = (minute + chrono::TimeDelta::seconds(7)).timestamp_millis();
    let payloads = [
        (example("evt_123", "click"), "evt_123"),
        (example("evt_124", "impression"), "evt_124"),
        (example("evt_125", "impression"), "evt_125"),
        // A JSON null is no timestamp either.
        (
            r#"{"event_id": "evt_126", "user_id": "user_456", "campaign_id": "camp_789", "event_type": "impression", "timestamp": null}"#.to_string(),
            "evt_126",
        ),
        // A timestamp that is present but unreadable is still refused.
        (
            r#"{"event_id": "evt_127", "user_id": "user_456", "campaign_id": "camp_789", "event_type": "click", "timestamp": "yesterday"}"#.to_string(),
            "evt_127",
        ),
    ];
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &pipeline.brokers)
        .create()
        .unwrap();
    // A producer may stamp a record with any time: one in the year 3000, which no TIMESTAMPTZ
    // holds, is a dead letter that says so (it stopped the runner, batch after batch).
    let year_3000_ms = 32_503_680_000_000;
    let stamped = payloads
        .iter()
        .map(|(payload, _)| (payload.clone(), created_ms))
        .chain([(example("evt_128", "click"), year_3000_ms)]);
    for (payload, stamp) in stamped {
        producer
            .send(
                BaseRecord::to(&pipeline.topic)
                    .partition(0)
                    .key("camp_789")
                    .timestamp(stamp)
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)
            .expect("send");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let output = pipeline.cli(&["run", "--until-caught-up", "--flush-open-windows"]);
    assert!(output.status.success(), "{}", text(&output));

    let events = scan_table(&pipeline.config, "campaign_events").await;
    let rows = by_event_id(rows(&events));
    let ids: Vec<&str> = rows.keys().map(String::as_str).collect();
    assert_eq!(ids, ["evt_123", "evt_124", "evt_125", "evt_126"]);
    for row in rows.values() {
        assert_eq!(row.timestamp_micros, created_ms * 1000, "{row:?}");
        assert_eq!(row.revenue, 0.0);
    }
    // The descriptive fields the app left out are NULL, not empty text.
    for batch in &events {
        for name in ["platform", "country", "device_type"] {
            let column = batch.column_by_name(name).unwrap();
            assert_eq!(column.null_count(), batch.num_rows(), "{name}");
        }
    }
    let letters = dead_letters(&pipeline);
    let reasons: Vec<&str> = letters.iter().map(|(_, l)| l.error.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "bad timestamp: yesterday",
            "record timestamp out of range: 32503680000000 ms"
        ]
    );
    assert_eq!(letters[0].1.source.offset, 4);
    assert_eq!(letters[1].1.source.offset, 5);

    let metrics = scan_table(&pipeline.config, "campaign_metrics").await;
    let windows = common::windows::windows(&metrics, None);
    let window = &windows[&("camp_789".to_string(), minute.timestamp_micros())];
    assert_eq!(
        (window.impressions, window.clicks, window.conversions),
        (3, 1, 0),
        "{windows:?}"
    );
    assert_eq!(windows.len(), 1, "{windows:?}");
}

/// The codec of every column chunk of the table's data files, by file.
fn codecs_by_file(pipeline: &TestPipeline, table: &str) -> BTreeMap<String, Vec<String>> {
    pipeline
        .parquet_files(table)
        .into_iter()
        .map(|path| {
            let file = std::fs::File::open(&path).unwrap();
            let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
            use parquet::file::reader::FileReader;
            let codecs = reader
                .metadata()
                .row_groups()
                .iter()
                .flat_map(|g| g.columns().iter().map(|c| c.compression().to_string()))
                .collect();
            (path.display().to_string(), codecs)
        })
        .collect()
}

/// The codecs of the files `after` lists and `before` does not.
fn added<'a>(
    before: &BTreeMap<String, Vec<String>>,
    after: &'a BTreeMap<String, Vec<String>>,
) -> Vec<(&'a String, &'a Vec<String>)> {
    after
        .iter()
        .filter(|(path, _)| !before.contains_key(*path))
        .collect()
}

/// Sets one property of `table`, as another engine's `ALTER TABLE … SET TBLPROPERTIES` does.
async fn set_table_property(pipeline: &TestPipeline, table: &str, key: &str, value: &str) {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    let config = campaign_pipeline::config::Config::load(&pipeline.config).unwrap();
    let sink = &config.pipelines[0].sink;
    let catalog = campaign_pipeline::catalog::open_catalog(&config, sink)
        .await
        .unwrap();
    let loaded = common::load_table(&pipeline.config, table).await;
    let tx = Transaction::new(&loaded);
    let tx = tx
        .update_table_properties()
        .set(key.to_string(), value.to_string())
        .apply(tx)
        .unwrap();
    tx.commit(catalog.as_ref()).await.unwrap();
}

/// Rows of the events table, read back through the catalog.
async fn event_rows(pipeline: &TestPipeline) -> usize {
    scan_table(&pipeline.config, "campaign_events")
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn commits_write_the_file_codec_and_compaction_the_tables_codec_property() {
    let pipeline = TestPipeline::new();
    pipeline.edit_config(|yaml| format!("{yaml}    maintenance:\n      min_input_files: 2\n"));
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    // One campaign: three partitions, each given a file of about the same size by every run, so
    // that compaction takes them all.
    for seed in ["5", "6", "7"] {
        generate(
            &pipeline,
            &["--count", "90", "--seed", seed, "--campaigns", "1"],
        );
        let run = pipeline.cli(&["run", "--until-caught-up"]);
        assert!(run.status.success(), "{}", text(&run));
    }
    let committed = codecs_by_file(&pipeline, "campaign_events");
    assert!(committed.len() >= 6, "{committed:?}");
    // The default `sink.file_codec`.
    assert!(
        committed.values().flatten().all(|c| c == "UNCOMPRESSED"),
        "{committed:?}"
    );
    let rows = event_rows(&pipeline).await;
    assert!(rows > 0);

    // Compaction writes the table's codec, zstd as `setup` created it.
    let maintain = pipeline.cli(&["maintain"]);
    assert!(maintain.status.success(), "{}", text(&maintain));
    let after = codecs_by_file(&pipeline, "campaign_events");
    let compacted = added(&committed, &after);
    assert!(!compacted.is_empty(), "{}", text(&maintain));
    for (path, codecs) in &compacted {
        assert!(
            codecs.iter().all(|c| c.starts_with("ZSTD")),
            "{path}: {codecs:?}"
        );
    }
    assert_eq!(event_rows(&pipeline).await, rows);

    // `file_codec: table`: the runner writes the table's codec too, as another engine's
    // `ALTER TABLE … SET TBLPROPERTIES` changed it.
    pipeline.edit_config(|yaml| {
        yaml.replace(
            "        partition_by: [campaign_id]\n",
            "        partition_by: [campaign_id]\n      file_codec: table\n",
        )
    });
    set_table_property(
        &pipeline,
        "campaign_events",
        "write.parquet.compression-codec",
        "gzip",
    )
    .await;
    let before = codecs_by_file(&pipeline, "campaign_events");
    generate(&pipeline, &["--count", "50", "--seed", "8"]);
    let second = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(second.status.success(), "{}", text(&second));
    let after = codecs_by_file(&pipeline, "campaign_events");
    let new = added(&before, &after);
    assert!(!new.is_empty());
    for (path, codecs) in &new {
        assert!(
            codecs.iter().all(|c| c.starts_with("GZIP")),
            "{path}: {codecs:?}"
        );
    }
    assert_eq!(event_rows(&pipeline).await, rows + 50);
    let committed = snapshot_properties(&pipeline.config, "campaign_events").await;

    // A codec the writer does not have stops the next run before it reads an event.
    set_table_property(
        &pipeline,
        "campaign_events",
        "write.parquet.compression-codec",
        "lzo",
    )
    .await;
    let generate = pipeline.cli(&["generate", "--count", "10", "--seed", "7"]);
    assert!(generate.status.success(), "{}", text(&generate));
    let refused = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let message = text(&refused);
    assert!(
        message.contains("campaigns.campaign_events")
            && message.contains("write.parquet.compression-codec = \"lzo\""),
        "{message}"
    );
    // Nothing was committed: the table's offsets are where the second run left them.
    assert_eq!(
        snapshot_properties(&pipeline.config, "campaign_events").await,
        committed
    );
}
