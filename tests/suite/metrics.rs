//! Windowed metrics against a real broker and real Iceberg tables: campaign_metrics equals the
//! generator's truth window by window, late events are dead-lettered, a SIGKILL mid-window
//! changes nothing, an idle partition stops holding the watermark, and SQL edits evolve the
//! table or are refused.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use campaign_pipeline::common::summary::Checkpoints;
use campaign_pipeline::dlq::DeadLetter;
use campaign_pipeline::generator::Truth;
use common::windows::{assert_windows_equal, expected, windows, Window, MINUTE};
use common::{read_topic, repo_root, scan_table, snapshot_properties, text, TestPipeline};

fn cli_ok(pipeline: &TestPipeline, args: &[&str]) -> String {
    let output = pipeline.cli(args);
    assert!(output.status.success(), "{args:?}: {}", text(&output));
    text(&output)
}

/// Generates events; without `--start-time` they replay the fixed history the tests compare
/// windows of, from 2026-01-01T00:00:00Z.
fn generate(pipeline: &TestPipeline, truth: &Path, args: &[&str]) -> Truth {
    let mut all = vec!["generate", "--truth", truth.to_str().unwrap()];
    all.extend_from_slice(args);
    if !args.contains(&"--start-time") {
        all.extend_from_slice(&["--start-time", "2026-01-01T00:00:00Z"]);
    }
    cli_ok(pipeline, &all);
    serde_json::from_slice(&std::fs::read(truth).unwrap()).unwrap()
}

fn dead_letters(pipeline: &TestPipeline) -> Vec<DeadLetter> {
    read_topic(&pipeline.brokers, &pipeline.dlq_topic)
        .into_iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("dead letter JSON"))
        .collect()
}

async fn metrics_table(
    pipeline: &TestPipeline,
    extra: Option<&str>,
) -> BTreeMap<(String, i64), Window> {
    windows(
        &scan_table(&pipeline.config, "campaign_metrics").await,
        extra,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_equal_the_truth_and_late_events_are_dead_lettered() {
    let pipeline = TestPipeline::new();
    cli_ok(&pipeline, &["setup"]);
    let dir = tempfile::tempdir().unwrap();
    // Phase 1: 200 s of traffic, some of it out of order within the lateness (10 s).
    let first = generate(
        &pipeline,
        &dir.path().join("t1.json"),
        &[
            "--count",
            "20000",
            "--seed",
            "21",
            "--campaigns",
            "5",
            "--out-of-order-ratio",
            "0.1",
            "--invalid-ratio",
            "0.02",
        ],
    );
    cli_ok(&pipeline, &["run", "--until-caught-up"]);
    // The watermark stands at about 190 s: the minute before the start (out-of-order events
    // of the first seconds) and the first three minutes are closed and final; 00:03 is open.
    let closed = metrics_table(&pipeline, None).await;
    let want_first = expected(std::slice::from_ref(&first));
    let starts: std::collections::BTreeSet<i64> = closed.keys().map(|k| k.1).collect();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .timestamp_micros();
    let minutes: Vec<i64> = starts.iter().map(|s| (s - t0) / MINUTE).collect();
    assert_eq!(minutes, vec![-1, 0, 1, 2]);
    let want_closed: BTreeMap<_, _> = want_first
        .into_iter()
        .filter(|(k, _)| starts.contains(&k.1))
        .collect();
    assert_windows_equal(&closed, &want_closed);
    let properties = snapshot_properties(&pipeline.config, "campaign_metrics").await;
    assert!(
        properties.contains_key("campaign-pipeline.offsets"),
        "{properties:?}"
    );
    let checkpoints = Checkpoints::from_json(&properties["campaign-pipeline.checkpoint"]).unwrap();
    assert_eq!(
        checkpoints.0.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2],
        "one checkpoint per source partition"
    );
    assert!(checkpoints.0.values().all(|c| c.file.ends_with(".arrow")));
    assert!(properties["campaign-pipeline.watermark"].contains("\"watermark\""));

    // Phase 2: 100 s more, with late events 5-10 windows behind: all behind the watermark
    // whatever order the partitions are read in.
    let second = generate(
        &pipeline,
        &dir.path().join("t2.json"),
        &[
            "--count",
            "10000",
            "--seed",
            "22",
            "--campaigns",
            "5",
            "--start-time",
            "2026-01-01T00:03:20Z",
            "--out-of-order-ratio",
            "0.1",
            "--late-ratio",
            "0.05",
            "--invalid-ratio",
            "0.02",
        ],
    );
    assert!(second.late_events > 100, "{}", second.late_events);
    cli_ok(
        &pipeline,
        &["run", "--until-caught-up", "--flush-open-windows"],
    );
    let got = metrics_table(&pipeline, None).await;
    assert_windows_equal(&got, &expected(&[first.clone(), second.clone()]));

    let letters = dead_letters(&pipeline);
    let late = letters.iter().filter(|l| l.error == "late").count() as u64;
    assert_eq!(late, second.late_events);
    assert_eq!(
        letters.len() as u64,
        first.invalid_events + second.invalid_events + second.late_events
    );
    // Late events are valid events: the events table has them, the windows do not.
    let events: usize = scan_table(&pipeline.config, "campaign_events")
        .await
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(events as u64, first.valid_events + second.valid_events);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_open_windows_leaves_the_table_an_uninterrupted_run_writes() {
    let args = [
        "--count",
        "100000",
        "--seed",
        "31",
        "--campaigns",
        "4",
        "--start-time",
        "2026-01-01T00:00:00Z",
        "--out-of-order-ratio",
        "0.2",
        "--invalid-ratio",
        "0.01",
    ];
    let quick = |p: &TestPipeline| {
        p.edit_config(|yaml| {
            // A commit every 2000 rows whatever the machine's speed: many commits to kill between.
            yaml.replace("interval: 5s", "interval: 100ms")
                .replace("max_rows: 10000", "max_rows: 1000")
                .replace("max_rows: 500000", "max_rows: 2000")
        })
    };
    let baseline = TestPipeline::new();
    quick(&baseline);
    cli_ok(&baseline, &["setup"]);
    cli_ok(
        &baseline,
        &["generate"]
            .iter()
            .chain(&args)
            .copied()
            .collect::<Vec<_>>(),
    );
    let run = cli_ok(
        &baseline,
        &["run", "--until-caught-up", "--flush-open-windows"],
    );
    assert!(run.contains(" 100000 messages"), "{run}");

    let killed = TestPipeline::new();
    quick(&killed);
    cli_ok(&killed, &["setup"]);
    cli_ok(
        &killed,
        &["generate"]
            .iter()
            .chain(&args)
            .copied()
            .collect::<Vec<_>>(),
    );
    let mut kills = 0;
    for (commits, extra_ms) in [(3i64, 0u64), (2, 37), (4, 11)] {
        let args = ["run", "--until-caught-up", "--flush-open-windows"];
        if killed
            .kill_after_commits(&args, commits, Duration::from_millis(extra_ms))
            .await
        {
            kills += 1;
        }
    }
    assert!(kills >= 2, "the runner finished before it could be killed");
    // The kills left windows open in checkpointed state.
    let properties = snapshot_properties(&killed.config, "campaign_metrics").await;
    assert!(properties.contains_key("campaign-pipeline.checkpoint"));
    cli_ok(
        &killed,
        &["run", "--until-caught-up", "--flush-open-windows"],
    );

    let want = metrics_table(&baseline, None).await;
    let got = metrics_table(&killed, None).await;
    // 4 campaigns × 17 minutes (1,000 s), and the minute before the start (out-of-order first
    // events).
    assert_eq!(want.len(), 4 * 18);
    assert_windows_equal(&got, &want);
    let total: i64 = got
        .values()
        .map(|w| w.impressions + w.clicks + w.conversions)
        .sum();
    let events: usize = scan_table(&killed.config, "campaign_events")
        .await
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(total as usize, events, "every event counted once");
    // Superseded checkpoints are deleted: the newest of each partition remains, and at most one
    // more per kill (written for a commit that the kill stopped).
    let folder = killed.dir.path().join("data/warehouse");
    let checkpoints: Vec<_> = common::files_under(&folder)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .collect();
    let properties = snapshot_properties(&killed.config, "campaign_metrics").await;
    let current = Checkpoints::from_json(&properties["campaign-pipeline.checkpoint"]).unwrap();
    assert_eq!(current.0.len(), 3, "one checkpoint per partition");
    for saved in current.0.values() {
        assert!(checkpoints
            .iter()
            .any(|p| p.to_str() == Some(saved.file.as_str())));
    }
    assert!(checkpoints.len() <= 3 + 3 * kills, "{checkpoints:?}");
}

/// Each snapshot's `campaign-pipeline.offsets` of `table`, oldest first.
async fn offsets_history(pipeline: &TestPipeline, table: &str) -> Vec<BTreeMap<String, i64>> {
    let table = common::load_table(&pipeline.config, table).await;
    let mut snapshots: Vec<_> = table.metadata().snapshots().cloned().collect();
    snapshots.sort_by_key(|s| s.sequence_number());
    snapshots
        .iter()
        .filter_map(|s| {
            s.summary()
                .additional_properties
                .get("campaign-pipeline.offsets")
                .cloned()
        })
        .map(|text| {
            let by_topic: BTreeMap<String, BTreeMap<String, i64>> =
                serde_json::from_str(&text).unwrap();
            by_topic.into_values().flatten().collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_ahead_of_the_other_never_records_offsets_behind_its_own() {
    let pipeline = TestPipeline::new();
    cli_ok(&pipeline, &["setup"]);
    cli_ok(&pipeline, &["generate", "--count", "3000", "--seed", "5"]);
    cli_ok(&pipeline, &["run", "--until-caught-up"]);
    // The events table moves on while the metrics table stays behind (as after a crash between
    // the two commits): the metrics SQL writes to another table for one run.
    cli_ok(&pipeline, &["generate", "--count", "3000", "--seed", "6"]);
    pipeline.edit_config(|yaml| {
        yaml.replace("name: campaign_metrics", "name: campaign_metrics_detour")
    });
    cli_ok(&pipeline, &["setup"]);
    cli_ok(&pipeline, &["run", "--until-caught-up"]);
    // Back on the metrics table that is behind, committing after every small batch: the run
    // re-reads what the events table holds, and commits while doing so.
    pipeline.edit_config(|yaml| {
        yaml.replace("name: campaign_metrics_detour", "name: campaign_metrics")
            .replace("max_rows: 10000", "max_rows: 300")
            .replace("interval: 5s", "interval: 1ms")
    });
    cli_ok(&pipeline, &["run", "--until-caught-up"]);

    let history = offsets_history(&pipeline, "campaign_events").await;
    assert!(history.len() > 5, "{history:?}");
    for pair in history.windows(2) {
        for (partition, before) in &pair[0] {
            let after = pair[1].get(partition).copied().unwrap_or(i64::MAX);
            assert!(
                after >= *before,
                "partition {partition} went back from {before} to {after}: {history:?}"
            );
        }
    }
    let rows: usize = scan_table(&pipeline.config, "campaign_events")
        .await
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(rows, 6000, "each event once");
}

/// Sends one event to a given partition.
fn send_to(
    producer: &rdkafka::producer::BaseProducer,
    topic: &str,
    partition: i32,
    campaign: &str,
    at: chrono::DateTime<chrono::Utc>,
    n: u64,
) {
    let payload = serde_json::json!({
        "event_id": format!("{campaign}-{partition}-{n}"),
        "user_id": "u1",
        "campaign_id": campaign,
        "event_type": "impression",
        "platform": "web",
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "revenue": 0.0,
        "country": "US",
        "device_type": "desktop",
    })
    .to_string();
    producer
        .send(
            rdkafka::producer::BaseRecord::to(topic)
                .partition(partition)
                .key(campaign)
                .payload(&payload),
        )
        .map_err(|(e, _)| e)
        .expect("send");
}

#[tokio::test(flavor = "multi_thread")]
async fn event_times_far_from_the_clock_neither_move_a_watermark_nor_open_a_window() {
    use rdkafka::producer::Producer;
    let pipeline = TestPipeline::new();
    // The shipped bounds: 5 minutes ahead of the clock, 7 days behind it.
    pipeline.edit_config(|yaml| yaml.replace("max_past: 36500d", "max_past: 7d"));
    cli_ok(&pipeline, &["setup"]);
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &pipeline.brokers)
        .create()
        .unwrap();
    let year_2099: chrono::DateTime<chrono::Utc> = "2099-01-01T00:00:00Z".parse().unwrap();
    let year_1970: chrono::DateTime<chrono::Utc> = "1970-01-01T00:00:30Z".parse().unwrap();
    let in_an_hour = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    let bad_clocks = |n: u64| {
        for partition in 0..3 {
            send_to(
                &producer,
                &pipeline.topic,
                partition,
                "campaign_001",
                year_2099,
                n,
            );
            send_to(
                &producer,
                &pipeline.topic,
                partition,
                "campaign_002",
                year_1970,
                n + 1,
            );
            send_to(
                &producer,
                &pipeline.topic,
                partition,
                "campaign_003",
                in_an_hour,
                n + 2,
            );
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    };
    // Each partition starts with a device in 2099, one in 1970 and one an hour ahead, and
    // meets them again between two stretches of normal traffic.
    bad_clocks(0);
    let minute = chrono::TimeDelta::minutes(1);
    let t0 =
        chrono::DurationRound::duration_trunc(chrono::Utc::now() - minute * 5, minute).unwrap();
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let dir = tempfile::tempdir().unwrap();
    let normal = |name: &str, seed: &str, start: String| {
        generate(
            &pipeline,
            &dir.path().join(name),
            &[
                "--count",
                "6000",
                "--seed",
                seed,
                "--campaigns",
                "4",
                "--start-time",
                &start,
                "--out-of-order-ratio",
                "0.05",
            ],
        )
    };
    let first = normal("t1.json", "31", at(t0));
    bad_clocks(10);
    let second = normal("t2.json", "32", at(t0 + minute));
    cli_ok(
        &pipeline,
        &["run", "--until-caught-up", "--flush-open-windows"],
    );

    let got = metrics_table(&pipeline, None).await;
    assert_windows_equal(&got, &expected(&[first, second]));
    let letters = dead_letters(&pipeline);
    let future: Vec<&str> = letters
        .iter()
        .filter(|l| l.error.starts_with("future timestamp: "))
        .map(|l| l.error.as_str())
        .collect();
    assert_eq!(future.len(), 12, "{letters:?}");
    assert_eq!(
        future
            .iter()
            .filter(|e| **e == "future timestamp: 2099-01-01T00:00:00.000000Z")
            .count(),
        6
    );
    let late: Vec<&DeadLetter> = letters.iter().filter(|l| l.error == "late").collect();
    assert_eq!(late.len(), 6, "the 1970 events: {letters:?}");
    assert!(late.iter().all(|l| l.payload.contains("1970-01-01")));
    assert_eq!(letters.len(), 18, "nothing else is rejected");
    let rows: usize = scan_table(&pipeline.config, "campaign_events")
        .await
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(
        rows,
        12_000 + 6,
        "the 1970 events are valid events; 2099's are not"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_partition_stops_holding_the_watermark_back() {
    use rdkafka::producer::Producer;
    let pipeline = TestPipeline::new();
    pipeline.edit_config(|yaml| {
        yaml.replace("interval: 5s", "interval: 500ms").replace(
            "    window:\n",
            "    window:\n      allowed_lateness: 10s\n      idle_timeout: 2s\n",
        )
    });
    cli_ok(&pipeline, &["setup"]);
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &pipeline.brokers)
        .create()
        .unwrap();
    let t0: chrono::DateTime<chrono::Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
    // Partition 2 gets one event and then nothing; partitions 0 and 1 keep going.
    send_to(
        &producer,
        &pipeline.topic,
        2,
        "quiet",
        t0 + chrono::TimeDelta::seconds(5),
        0,
    );
    let mut n = 0;
    let busy = |second: i64, n: &mut u64| {
        for p in [0, 1] {
            let at = t0 + chrono::TimeDelta::seconds(second);
            // One campaign per partition: the topic is keyed by campaign.
            send_to(&producer, &pipeline.topic, p, &format!("busy-{p}"), at, *n);
            *n += 1;
        }
    };
    for second in 0..180 {
        busy(second, &mut n);
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let (mut child, _lines) = pipeline.spawn_logged(&["run"]);
    // Live traffic on partitions 0 and 1 only, one event-second per 100 ms.
    let started = Instant::now();
    let mut second = 180;
    let mut found = BTreeMap::new();
    while started.elapsed() < Duration::from_secs(40) {
        busy(second, &mut n);
        producer.flush(Duration::from_secs(10)).unwrap();
        second += 1;
        std::thread::sleep(Duration::from_millis(100));
        if second % 10 == 0 {
            found = metrics_table(&pipeline, None).await;
            if found.contains_key(&("quiet".to_string(), t0.timestamp_micros())) {
                break;
            }
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    // Without the idle timeout the watermark would stay at partition 2's 00:00:05 - 10 s and
    // no window would ever close.
    let quiet = found
        .get(&("quiet".to_string(), t0.timestamp_micros()))
        .expect("the idle partition's window was emitted while the runner ran");
    assert_eq!(quiet.impressions, 1);
    for p in [0, 1] {
        let busy = &found[&(format!("busy-{p}"), t0.timestamp_micros())];
        assert_eq!(busy.impressions, 60, "60 seconds in partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_metric_added_to_the_sql_becomes_a_column_and_a_type_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("campaign_metrics.sql");
    let original = std::fs::read_to_string(repo_root().join("sql/campaign_metrics.sql")).unwrap();
    std::fs::write(&metrics, &original).unwrap();
    let pipeline = TestPipeline::with_sql(&repo_root().join("sql/campaign_events.sql"), &metrics);
    cli_ok(&pipeline, &["setup"]);
    let truths = dir.path();
    // 0-120 s, then a run: the first minute closes, the second stays open in the checkpoint.
    let first = generate(
        &pipeline,
        &truths.join("a.json"),
        &["--count", "12000", "--seed", "41", "--campaigns", "3"],
    );
    cli_ok(&pipeline, &["run", "--until-caught-up"]);
    assert_eq!(metrics_table(&pipeline, None).await.len(), 3);

    let with_avg = original
        .replace(
            "  FROM campaign_events\n",
            "  , avg(revenue) FILTER (WHERE event_type = 'conversion') AS avg_revenue\n  FROM campaign_events\n",
        )
        .replace(
            "  now()                                                       AS processed_at",
            "  avg_revenue,\n  now()                                                       AS processed_at",
        );
    assert!(with_avg.contains("AS avg_revenue") && with_avg.contains("  avg_revenue,"));
    std::fs::write(&metrics, &with_avg).unwrap();
    let second = generate(
        &pipeline,
        &truths.join("b.json"),
        &[
            "--count",
            "12000",
            "--seed",
            "42",
            "--campaigns",
            "3",
            "--start-time",
            "2026-01-01T00:02:00Z",
        ],
    );
    cli_ok(
        &pipeline,
        &["run", "--until-caught-up", "--flush-open-windows"],
    );
    let table = scan_table(&pipeline.config, "campaign_metrics").await;
    assert!(table[0].schema().field_with_name("avg_revenue").is_ok());
    let got = windows(&table, Some("avg_revenue"));
    assert_windows_equal(&got, &expected(&[first, second]));
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .timestamp_micros();
    for ((campaign, start), w) in &got {
        let start = start - t0;
        if start < MINUTE {
            assert_eq!(
                w.extra, None,
                "{campaign} {start}: written before the column existed"
            );
        } else if start >= 2 * MINUTE && w.conversions > 0 {
            let avg = w
                .extra
                .unwrap_or_else(|| panic!("rows after the change fill the column: {w:?}"));
            assert!(
                (avg - w.revenue / w.conversions as f64).abs() < 1e-9,
                "{w:?}"
            );
        }
    }

    // A type change is refused before anything is consumed.
    let retyped = with_avg.replace(
        "  impressions,\n",
        "  CAST(impressions AS DOUBLE) AS impressions,\n",
    );
    assert_ne!(retyped, with_avg);
    std::fs::write(&metrics, &retyped).unwrap();
    cli_ok(&pipeline, &["generate", "--count", "100", "--seed", "43"]);
    let before = snapshot_properties(&pipeline.config, "campaign_metrics").await;
    let output = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message
            .contains("column `impressions` is long in the table but the SQL now returns double"),
        "{message}"
    );
    assert!(message.contains("CAST(... AS BIGINT)"), "{message}");
    assert_eq!(
        snapshot_properties(&pipeline.config, "campaign_metrics").await,
        before
    );
}
