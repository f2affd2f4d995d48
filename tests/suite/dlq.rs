//! `dlq stats|monitor|export|replay` against a real broker: a known mix of bad events goes
//! through the pipeline, then the tools' reports, files and replays are checked against what the
//! topics and the events table hold.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::time::Duration;

use arrow::array::AsArray;
use campaign_pipeline::dlq::entry::Letter;
use campaign_pipeline::dlq::{DeadLetter, PayloadEncoding, SourceCoordinates};
use campaign_pipeline::generator::event::CampaignEvent;
use campaign_pipeline::kafka::client_config;
use campaign_pipeline::kafka::producer::EventProducer;
use common::{read_topic, repo_root, scan_table, text, Record, TestPipeline};
use serde_json::Value;

fn event(i: usize) -> CampaignEvent {
    CampaignEvent {
        event_id: format!("dlq-test-{i}"),
        user_id: format!("user-{i}"),
        campaign_id: format!("camp-{}", i % 3),
        event_type: "impression".into(),
        platform: "web".into(),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        revenue: 0.0,
        country: "FR".into(),
        device_type: "desktop".into(),
    }
}

fn with_field(i: usize, field: &str, value: &str) -> Vec<u8> {
    let mut json = serde_json::to_value(event(i)).unwrap();
    json[field] = Value::String(value.into());
    serde_json::to_vec(&json).unwrap()
}

async fn produce(brokers: &str, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
    let producer = EventProducer::new(&client_config(brokers, &BTreeMap::new()), topic).unwrap();
    producer
        .send_records(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
        .await
        .unwrap();
}

fn ok(pipeline: &TestPipeline, args: &[&str]) -> String {
    let output = pipeline.cli(args);
    assert!(output.status.success(), "{args:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(pipeline: &TestPipeline, args: &[&str]) -> Value {
    let out = ok(pipeline, args);
    let start = out.find("\n{").map_or(0, |i| i + 1);
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

async fn event_ids(pipeline: &TestPipeline) -> Vec<String> {
    let mut ids = Vec::new();
    for batch in scan_table(&pipeline.config, "campaign_events").await {
        let column = arrow::compute::cast(
            batch.column_by_name("event_id").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        ids.extend(column.as_string::<i32>().iter().flatten().map(String::from));
    }
    ids
}

/// The known mix: 30 bad timestamps with 30 different values, 20 unknown event types, 10 broken
/// JSON, 5 non-UTF-8, around 100 valid events; plus 2 unreadable messages and 1 repeated dead
/// letter written straight to the dead letter topic.
async fn known_mix(pipeline: &TestPipeline) {
    ok(pipeline, &["setup"]);
    let mut records = Vec::new();
    for i in 0..100 {
        records.push((b"camp".to_vec(), event(i).to_payload()));
    }
    for i in 0..30 {
        records.push((
            b"camp".to_vec(),
            with_field(100 + i, "timestamp", &format!("day {i}")),
        ));
    }
    for i in 0..20 {
        let kind = if i % 2 == 0 { "view" } else { "hover" };
        records.push((b"camp".to_vec(), with_field(200 + i, "event_type", kind)));
    }
    for i in 0..10 {
        let payload = event(300 + i).to_payload();
        records.push((
            format!("k{i}").into_bytes(),
            payload[..payload.len() - 3].to_vec(),
        ));
    }
    for i in 0..5 {
        let mut payload = event(400 + i).to_payload();
        payload.splice(5..5, [0xff, 0xfe, 0xc3]);
        records.push((vec![0xf0, i as u8], payload));
    }
    produce(&pipeline.brokers, &pipeline.topic, &records).await;
    ok(pipeline, &["run", "--until-caught-up"]);

    let letters = read_topic(&pipeline.brokers, &pipeline.dlq_topic);
    assert_eq!(letters.len(), 65, "the runner dead-lettered the mix");
    let first = &letters[0];
    produce(
        &pipeline.brokers,
        &pipeline.dlq_topic,
        &[
            (first.key.clone().unwrap_or_default(), first.payload.clone()),
            (b"x".to_vec(), b"this is not a dead letter".to_vec()),
            (b"y".to_vec(), b"{\"error\": 1}".to_vec()),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_export_and_monitor_report_the_known_mix() {
    let pipeline = TestPipeline::new();
    known_mix(&pipeline).await;

    let stats = json(&pipeline, &["dlq", "stats", "--format", "json"]);
    let categories: BTreeMap<String, u64> =
        serde_json::from_value(stats["by_category"].clone()).unwrap();
    assert_eq!(
        categories,
        BTreeMap::from([
            ("bad_timestamp".into(), 30),
            ("unknown_event_type".into(), 20),
            ("broken_json".into(), 10),
            ("invalid_utf_8".into(), 5),
            ("unreadable".into(), 2),
        ])
    );
    assert_eq!(stats["total"], 67);
    assert_eq!(stats["messages"], 68);
    assert_eq!(stats["repeats"], 1);
    let patterns = stats["top_patterns"].as_array().unwrap();
    let pattern = |p: &str| patterns.iter().find(|x| x["pattern"] == p).cloned();
    let timestamps = pattern("bad timestamp: <value>").expect("folded timestamps");
    assert_eq!(timestamps["count"], 30);
    assert!(timestamps["example"]
        .as_str()
        .unwrap()
        .starts_with("bad timestamp: day "));
    assert_eq!(pattern("unknown event_type: <value>").unwrap()["count"], 20);
    let sum = |v: &Value| {
        v.as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum(&stats["by_source_partition"]), 65);
    assert_eq!(sum(&stats["per_minute"]), 65);
    assert_eq!(stats["unreadable"].as_array().unwrap().len(), 2);

    let table = ok(&pipeline, &["dlq", "stats"]);
    for line in [
        "bad timestamp: <value>",
        "unknown_event_type",
        "unreadable",
        "per minute",
    ] {
        assert!(table.contains(line), "{line} in\n{table}");
    }
    let only = json(
        &pipeline,
        &[
            "dlq",
            "stats",
            "--category",
            "broken_json",
            "--format",
            "json",
        ],
    );
    assert_eq!(only["total"], 10);
    let recent = json(
        &pipeline,
        &["dlq", "stats", "--since", "1h", "--format", "json"],
    );
    assert_eq!(recent["total"], 67);
    let future = ok(
        &pipeline,
        &["dlq", "stats", "--since", "2099-01-01T00:00:00Z"],
    );
    assert!(future.contains("no dead letters"), "{future}");

    // Export: every readable record, byte for byte.
    let out = pipeline.dir.path().join("dlq.jsonl");
    let report = ok(
        &pipeline,
        &["dlq", "export", "--out", out.to_str().unwrap()],
    );
    assert!(report.contains("66 dead letters written"), "{report}");
    assert!(report.contains("2 unreadable messages"), "{report}");
    let in_topic: BTreeMap<i64, Record> = read_topic(&pipeline.brokers, &pipeline.dlq_topic)
        .into_iter()
        .map(|r| (r.offset, r))
        .collect();
    let sources: BTreeMap<(i32, i64), Record> = read_topic(&pipeline.brokers, &pipeline.topic)
        .into_iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(&out).unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    assert_eq!(lines.len(), 66);
    let mut base64_sources = BTreeSet::new();
    for line in &lines {
        let letter: Letter = serde_json::from_str(line).unwrap();
        let original = &in_topic[&letter.dlq.as_ref().unwrap().offset];
        assert_eq!(
            serde_json::to_vec(&letter.record).unwrap(),
            original.payload
        );
        assert_eq!(letter.key_bytes().unwrap(), original.key);
        let source = &sources[&(letter.record.source.partition, letter.record.source.offset)];
        assert_eq!(letter.record.payload_bytes().unwrap(), source.payload);
        assert_eq!(letter.key_bytes().unwrap(), source.key);
        let is_base64 = letter.record.payload_encoding == PayloadEncoding::Base64;
        assert_eq!(is_base64, std::str::from_utf8(&source.payload).is_err());
        if is_base64 {
            base64_sources.insert(letter.coordinate());
        }
    }
    assert_eq!(
        base64_sources.len(),
        5,
        "the non-UTF-8 payloads stay base64"
    );

    let csv_out = pipeline.dir.path().join("dlq.csv");
    ok(
        &pipeline,
        &[
            "dlq",
            "export",
            "--out",
            csv_out.to_str().unwrap(),
            "--format",
            "csv",
            "--category",
            "broken_json",
        ],
    );
    let mut reader = csv::Reader::from_path(&csv_out).unwrap();
    let headers = reader.headers().unwrap().clone();
    let payload_at = headers.iter().position(|h| h == "payload").unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 10);
    for row in &rows {
        let partition: i32 = row[headers
            .iter()
            .position(|h| h == "source_partition")
            .unwrap()]
        .parse()
        .unwrap();
        let offset: i64 = row[headers.iter().position(|h| h == "source_offset").unwrap()]
            .parse()
            .unwrap();
        assert_eq!(
            row[payload_at].as_bytes(),
            sources[&(partition, offset)].payload
        );
    }

    // Monitor: ends by itself with the same totals.
    let started = std::time::Instant::now();
    let summary = json(
        &pipeline,
        &["dlq", "monitor", "--duration", "2", "--format", "json"],
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(summary["seconds"].as_f64().unwrap() >= 2.0);
    assert_eq!(summary["stats"]["total"], 67);
    assert_eq!(summary["stats"]["by_category"]["bad_timestamp"], 30);
    assert_eq!(summary["new_by_category"], serde_json::json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_counts_what_arrives_while_it_runs() {
    let pipeline = TestPipeline::new();
    ok(&pipeline, &["setup"]);
    let (mut child, lines) = {
        let mut command = pipeline.command(&[
            "dlq",
            "monitor",
            "--duration",
            "8",
            "--refresh",
            "0.2",
            "--format",
            "json",
        ]);
        command.stdout(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        // Wait until the backlog (none: the topic is empty) has been read.
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("monitor refreshes");
            if line.starts_with("dlq monitor") && !line.contains("backlog") {
                break;
            }
        }
        let source = SourceCoordinates {
            topic: pipeline.topic.clone(),
            partition: 1,
            offset: 7,
            timestamp: None,
        };
        let letter = DeadLetter::new(
            "bad timestamp: soon",
            b"{}",
            source,
            "test",
            &chrono::Utc::now().to_rfc3339(),
        );
        produce(
            &pipeline.brokers,
            &pipeline.dlq_topic,
            &[
                (b"k".to_vec(), letter.to_json()),
                (b"k".to_vec(), b"garbage".to_vec()),
            ],
        )
        .await;
        (child, rx)
    };
    let status = child.wait().unwrap();
    assert!(status.success());
    let out: Vec<String> = lines.iter().collect();
    let start = out
        .iter()
        .position(|l| l.starts_with('{'))
        .expect("summary");
    let summary: Value = serde_json::from_str(&out[start..].join("\n")).unwrap();
    assert_eq!(
        summary["new_by_category"],
        serde_json::json!({"bad_timestamp": 1, "unreadable": 1})
    );
    assert_eq!(summary["stats"]["total"], 2);
    assert_eq!(summary["newest"][0]["category"], "unreadable");
}

#[test]
fn empty_and_missing_topics_are_reported_clearly() {
    let pipeline = TestPipeline::new();
    let missing = pipeline.cli(&["dlq", "stats"]);
    assert!(!missing.status.success());
    let message = text(&missing);
    assert!(
        message.contains(&format!(
            "dead letter topic {} does not exist",
            pipeline.dlq_topic
        )) && message.contains("campaign-pipeline setup"),
        "{message}"
    );
    ok(&pipeline, &["setup"]);
    assert!(ok(&pipeline, &["dlq", "stats"]).contains("no dead letters"));
    let out = pipeline.dir.path().join("empty.jsonl");
    assert!(ok(
        &pipeline,
        &["dlq", "export", "--out", out.to_str().unwrap()]
    )
    .contains("0 dead letters written"));
    assert_eq!(std::fs::read(&out).unwrap(), b"");
    assert!(ok(&pipeline, &["dlq", "replay"]).contains("nothing to replay"));
}

fn replay_headers(record: &Record) -> Option<String> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == "campaign-pipeline.replay-of")
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
}

/// A copy of the shipped parsing SQL that a test edits, as a user edits the file.
struct EditedParseSql {
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
    /// The shipped file's text.
    shipped: String,
}

impl EditedParseSql {
    /// The copy, with the shipped text until [`Self::write`].
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("campaign_events.sql");
        let shipped = std::fs::read_to_string(repo_root().join("sql/campaign_events.sql")).unwrap();
        std::fs::write(&path, &shipped).unwrap();
        Self { dir, path, shipped }
    }

    /// Replaces the copy's text.
    fn write(&self, sql: &str) {
        std::fs::write(&self.path, sql).unwrap();
    }

    /// A pipeline that parses with the copy (and the shipped metrics SQL).
    fn pipeline(&self) -> TestPipeline {
        TestPipeline::with_sql(&self.path, &repo_root().join("sql/campaign_metrics.sql"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_after_fixing_the_rule_lands_each_event_once() {
    let sql = EditedParseSql::new();
    let original = &sql.shipped;
    let blocking = original.replace(
        "    WHEN _revenue < 0 ",
        "    WHEN country = 'US'                              THEN 'blocked country: ' || country\n    WHEN _revenue < 0 ",
    );
    assert_ne!(&blocking, original);
    sql.write(&blocking);
    let pipeline = sql.pipeline();
    ok(&pipeline, &["setup"]);
    ok(&pipeline, &["generate", "--count", "1000", "--seed", "3"]);
    ok(&pipeline, &["run", "--until-caught-up"]);
    let letters = read_topic(&pipeline.brokers, &pipeline.dlq_topic);
    let blocked = letters.len();
    assert!(blocked > 20, "the rule blocked some events");
    assert_eq!(event_ids(&pipeline).await.len(), 1000 - blocked);
    // A runner that crashed after writing a dead letter writes it again: the repeat counts once.
    let first = &letters[0];
    produce(
        &pipeline.brokers,
        &pipeline.dlq_topic,
        &[(first.key.clone().unwrap(), first.payload.clone())],
    )
    .await;

    let dry = ok(
        &pipeline,
        &[
            "dlq",
            "replay",
            "--category",
            "blocked_country",
            "--dry-run",
        ],
    );
    assert!(
        dry.contains(&format!("would send {blocked} payloads")),
        "{dry}"
    );
    assert!(dry.contains("1 repeats"), "{dry}");
    assert_eq!(
        read_topic(&pipeline.brokers, &pipeline.topic).len(),
        1000,
        "a dry run sends nothing"
    );

    // Replayed before the rule is fixed: every replay fails again, and says so.
    let early = ok(
        &pipeline,
        &["dlq", "replay", "--category", "blocked_country"],
    );
    assert!(
        early.contains(&format!("{blocked} payloads sent")),
        "{early}"
    );
    ok(&pipeline, &["run", "--until-caught-up"]);
    assert_eq!(event_ids(&pipeline).await.len(), 1000 - blocked);
    let stats = json(&pipeline, &["dlq", "stats", "--format", "json"]);
    assert_eq!(stats["total"], 2 * blocked);
    assert_eq!(stats["replays_failed_again"], blocked);

    // Fixed: the replays that failed again are new dead letters and go back once more; the
    // originals, replayed already, do not.
    sql.write(original);
    let replay = ok(
        &pipeline,
        &["dlq", "replay", "--category", "blocked_country"],
    );
    assert!(
        replay.contains(&format!("{blocked} payloads sent")),
        "{replay}"
    );
    assert!(
        replay.contains(&format!("{blocked} already replayed")),
        "{replay}"
    );
    let source = read_topic(&pipeline.brokers, &pipeline.topic);
    assert_eq!(source.len(), 1000 + 2 * blocked);
    // Same key and payload as the original, with the original coordinates in a header.
    let by_coordinate: BTreeMap<String, &Record> = source
        .iter()
        .map(|r| {
            (
                format!("{}/{}/{}", pipeline.topic, r.partition, r.offset),
                r,
            )
        })
        .collect();
    let replays: Vec<&Record> = source
        .iter()
        .filter(|r| replay_headers(r).is_some())
        .collect();
    assert_eq!(replays.len(), 2 * blocked);
    for replayed in &replays {
        let original = by_coordinate[&replay_headers(replayed).unwrap()];
        assert_eq!(
            (&replayed.key, &replayed.payload),
            (&original.key, &original.payload)
        );
    }

    ok(&pipeline, &["run", "--until-caught-up"]);
    let ids = event_ids(&pipeline).await;
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 1000, "every event once");
    assert_eq!(distinct.len(), 1000);

    let again = ok(
        &pipeline,
        &["dlq", "replay", "--category", "blocked_country"],
    );
    assert!(
        again.contains(&format!("{} already replayed", 2 * blocked)),
        "{again}"
    );
    assert!(again.contains("nothing to replay"), "{again}");
    assert_eq!(
        read_topic(&pipeline.brokers, &pipeline.topic).len(),
        1000 + 2 * blocked
    );
    ok(&pipeline, &["run", "--until-caught-up"]);
    assert_eq!(event_ids(&pipeline).await.len(), 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_settles_a_replay_killed_between_sending_and_recording() {
    let pipeline = TestPipeline::new();
    ok(&pipeline, &["setup"]);
    // Two dead letters for messages that never made it (offsets far past the topic's end).
    let letters: Vec<DeadLetter> = (0..2)
        .map(|i| {
            let source = SourceCoordinates {
                topic: pipeline.topic.clone(),
                partition: 0,
                offset: 1_000_000 + i,
                timestamp: None,
            };
            DeadLetter::new(
                "manual hold: ops",
                &event(500 + i as usize).to_payload(),
                source,
                "test",
                &chrono::Utc::now().to_rfc3339(),
            )
        })
        .collect();
    let coordinates: Vec<String> = letters
        .iter()
        .map(|l| format!("{}/0/{}", l.source.topic, l.source.offset))
        .collect();
    produce(
        &pipeline.brokers,
        &pipeline.dlq_topic,
        &letters
            .iter()
            .map(|l| (b"camp".to_vec(), l.to_json()))
            .collect::<Vec<_>>(),
    )
    .await;
    // A replay announced both, sent the first, and was killed before recording it.
    let intent = serde_json::json!({
        "replay_id": "killed-1", "stage": "intent", "coordinates": coordinates, "at": "2026-11-26T00:00:00Z"
    });
    produce(
        &pipeline.brokers,
        &format!("{}.replayed", pipeline.dlq_topic),
        &[(b"killed-1".to_vec(), serde_json::to_vec(&intent).unwrap())],
    )
    .await;
    let producer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &pipeline.brokers)
        .create::<rdkafka::producer::FutureProducer>()
        .unwrap();
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: "campaign-pipeline.replay-of",
            value: Some(coordinates[0].as_bytes()),
        })
        .insert(rdkafka::message::Header {
            key: "campaign-pipeline.replay-id",
            value: Some("killed-1".as_bytes()),
        });
    let payload = letters[0].payload_bytes().unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&pipeline.topic)
                .key(b"camp")
                .payload(&payload)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .unwrap();

    let replay = ok(&pipeline, &["dlq", "replay", "--category", "manual_hold"]);
    assert!(
        replay.contains("an interrupted replay had sent 1"),
        "{replay}"
    );
    assert!(replay.contains("1 payloads sent"), "{replay}");
    let replayed: Vec<String> = read_topic(&pipeline.brokers, &pipeline.topic)
        .iter()
        .filter_map(replay_headers)
        .collect();
    assert_eq!(replayed, coordinates, "each coordinate sent once");
    ok(&pipeline, &["run", "--until-caught-up"]);
    let mut ids = event_ids(&pipeline).await;
    ids.sort();
    assert_eq!(
        ids,
        vec!["dlq-test-500".to_string(), "dlq-test-501".to_string()]
    );
}

#[test]
fn monitor_without_a_duration_runs_until_interrupted_then_summarises() {
    let pipeline = TestPipeline::new();
    ok(&pipeline, &["setup"]);
    let mut child = pipeline
        .command(&["dlq", "monitor", "--duration", "0", "--refresh", "0.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // Without a duration it keeps following: refresh after refresh.
    for _ in 0..3 {
        let mut refresh = String::new();
        stdout.read_line(&mut refresh).unwrap();
        assert!(refresh.starts_with("dlq monitor"), "{refresh}");
    }
    assert!(child.try_wait().unwrap().is_none(), "still following");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let rest: String = stdout
        .lines()
        .map_while(Result::ok)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("monitor summary"), "{rest}");
    assert!(rest.contains("0 new dead letters"), "{rest}");
}

/// An app sends `revenue` as a string ("12.50"), and a user edits the parsing SQL to take it:
/// drops the rule that wants a number and writes `CAST` where the shipped file has `try_cast`.
/// Then another event's "twelve" makes that cast fail. The events it fails on go to the dead
/// letter queue with the SQL's error (the runner neither stops at that micro-batch nor drops it),
/// `check --sample` names the line, and once the SQL is fixed a replay lands them.
#[tokio::test(flavor = "multi_thread")]
async fn events_the_parsing_sql_fails_on_are_dead_lettered_and_land_when_replayed_after_a_fix() {
    let sql = EditedParseSql::new();
    let original = &sql.shipped;
    let lenient = original.replace(
        "    WHEN t['revenue'] <> 'number'                    THEN 'wrong type: revenue'\n",
        "",
    );
    let strict = lenient.replace(
        "try_cast(f['revenue'] AS DOUBLE)",
        "CAST(f['revenue'] AS DOUBLE)",
    );
    assert!(&lenient != original && strict != lenient);
    sql.write(&strict);
    let pipeline = sql.pipeline();
    ok(&pipeline, &["setup"]);
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = (0..40)
        .map(|i| (b"camp".to_vec(), event(i).to_payload()))
        .collect();
    // Among the others, so that each fails a micro-batch that also holds good events.
    for (at, i, revenue) in [
        (5, 100, "12.50"),
        (12, 101, "twelve"),
        (30, 102, "12.50"),
        (31, 103, "n/a"),
    ] {
        records.insert(at, (b"camp".to_vec(), with_field(i, "revenue", revenue)));
    }
    produce(&pipeline.brokers, &pipeline.topic, &records).await;
    ok(&pipeline, &["run", "--until-caught-up"]);

    let mut ids = event_ids(&pipeline).await;
    ids.sort();
    let mut want: Vec<String> = (0..40).map(|i| event(i).event_id).collect();
    want.extend(["dlq-test-100".to_string(), "dlq-test-102".to_string()]);
    want.sort();
    assert_eq!(ids, want, "every event the SQL takes, once");
    let letters = read_topic(&pipeline.brokers, &pipeline.dlq_topic);
    let source = read_topic(&pipeline.brokers, &pipeline.topic);
    let mut failed: Vec<(i64, String)> = letters
        .iter()
        .map(|r| {
            let letter: DeadLetter = serde_json::from_slice(&r.payload).unwrap();
            let sent = source
                .iter()
                .find(|s| {
                    s.partition == letter.source.partition && s.offset == letter.source.offset
                })
                .expect("the letter names a message of the topic");
            assert_eq!(
                letter.payload_bytes().unwrap(),
                sent.payload,
                "the raw payload"
            );
            assert!(
                letter.error.starts_with("parsing SQL failed: ") && letter.error.contains("Cast"),
                "{}",
                letter.error
            );
            let id: Value = serde_json::from_slice(&sent.payload).unwrap();
            (
                letter.source.offset,
                id["revenue"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    failed.sort();
    let revenues: Vec<&str> = failed.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        revenues,
        vec!["twelve", "n/a"],
        "one letter per failed event"
    );
    let stats = json(&pipeline, &["dlq", "stats", "--format", "json"]);
    assert_eq!(stats["total"], 2, "{stats}");

    // `check --sample` says which line the SQL fails on and why.
    let sample = sql.dir.path().join("sample.jsonl");
    let mut lines = event(200).to_payload();
    lines.push(b'\n');
    lines.extend(with_field(201, "revenue", "twelve"));
    std::fs::write(&sample, &lines).unwrap();
    let checked = ok(&pipeline, &["check", "--sample", sample.to_str().unwrap()]);
    assert!(
        checked.contains("  line 2: parsing SQL failed: "),
        "{checked}"
    );

    // Fixed (`try_cast`: a revenue that is no number counts 0), the replays land once.
    sql.write(&lenient);
    let replay = ok(
        &pipeline,
        &["dlq", "replay", "--category", "parsing_sql_failed"],
    );
    assert!(replay.contains("2 payloads sent"), "{replay}");
    ok(&pipeline, &["run", "--until-caught-up"]);
    let ids = event_ids(&pipeline).await;
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (44, 44), "every event once");
    assert_eq!(read_topic(&pipeline.brokers, &pipeline.dlq_topic).len(), 2);
}
