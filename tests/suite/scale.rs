//! Scale-out: several runners of one consumer group write the same tables exactly once while
//! partitions move between them (kills, concurrent commits). Paused runners whose partitions
//! moved (zombies) are covered by the simulation (`tests/simulation.rs`).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use campaign_pipeline::catalog::open_catalog;
use campaign_pipeline::common::Offsets;
use campaign_pipeline::config::TableConfig;
use campaign_pipeline::pipeline::progress::{Progress, TableRole};
use campaign_pipeline::sink::iceberg::{SnapshotContent, TableWriter};
use campaign_pipeline::sink::table::{ensure_namespace, ensure_table};
use campaign_pipeline::sink::SinkError;

/// A table writer of its own (its own catalog connection), as a second runner would have.
async fn writer(pipeline: &common::TestPipeline, schema: &Schema) -> TableWriter {
    let config = campaign_pipeline::config::Config::load(&pipeline.config).expect("config");
    let p = &config.pipelines[0];
    let catalog = open_catalog(&config, &p.sink).await.expect("catalog");
    TableWriter::open(catalog, &p.sink.namespace, "shared", &p.name, schema)
        .await
        .expect("open")
}

/// Creates the table `shared` (an event id and its offset) that the writers append to.
async fn shared_table(pipeline: &common::TestPipeline) -> Arc<Schema> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, true),
        Field::new("_offset", DataType::Int64, true),
    ]));
    let config = campaign_pipeline::config::Config::load(&pipeline.config).unwrap();
    let p = &config.pipelines[0];
    let catalog = open_catalog(&config, &p.sink).await.unwrap();
    ensure_namespace(catalog.as_ref(), &p.sink.namespace)
        .await
        .unwrap();
    let shared = TableConfig {
        name: "shared".to_string(),
        partition_by: Vec::new(),
        properties: Default::default(),
    };
    ensure_table(catalog.as_ref(), &p.sink.namespace, &shared, &schema)
        .await
        .unwrap();
    schema
}

fn rows(schema: &Arc<Schema>, partition: i32, offsets: std::ops::Range<i64>) -> RecordBatch {
    let ids: Vec<String> = offsets
        .clone()
        .map(|o| format!("{partition}-{o}"))
        .collect();
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Int64Array::from(offsets.collect::<Vec<_>>())),
        ],
    )
    .expect("batch")
}

fn offsets(topic: &str, pairs: &[(i32, i64)]) -> Offsets {
    let mut offsets = Offsets::new();
    for (partition, next) in pairs {
        offsets.set(topic, *partition, *next);
    }
    offsets
}

/// Commits what `writer` holds with the offsets `progress` decides on the state it lands on.
async fn commit(
    writer: &mut TableWriter,
    progress: &mut Progress,
) -> Result<campaign_pipeline::sink::iceberg::CommitStats, SinkError> {
    let stats = writer
        .commit(|state| {
            Ok(SnapshotContent {
                offsets: progress.decide(TableRole::Events, &state.offsets)?,
                checkpoints: None,
                jumps: Default::default(),
            })
        })
        .await?;
    progress.committed(TableRole::Events, &writer.state().offsets);
    Ok(stats)
}

/// The offsets map of every snapshot of the table, oldest first.
async fn offsets_history(pipeline: &common::TestPipeline) -> Vec<Offsets> {
    let table = common::load_table(&pipeline.config, "shared").await;
    let metadata = table.metadata();
    let mut chain = Vec::new();
    let mut next = metadata.current_snapshot().cloned();
    while let Some(snapshot) = next {
        let text = &snapshot.summary().additional_properties["campaign-pipeline.offsets"];
        chain.push(Offsets::from_json(text).expect("offsets"));
        next = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id).cloned());
    }
    chain.reverse();
    chain
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runners_committing_on_each_others_snapshots_both_land_never_doubled() {
    let pipeline = common::TestPipeline::new();
    let schema = shared_table(&pipeline).await;
    let topic = "events";
    let mut a = writer(&pipeline, &schema).await;
    let mut b = writer(&pipeline, &schema).await;
    let mut pa = Progress::new(topic);
    let mut pb = Progress::new(topic);
    pa.hold(&BTreeSet::from([0]), &Offsets::new(), &Offsets::new());
    pb.hold(&BTreeSet::from([1, 2]), &Offsets::new(), &Offsets::new());

    // Round after round both commit, taking turns to go first: the second one's commit was
    // built on the table state before the first one's snapshot, so it meets that snapshot,
    // decides again on it and lands; neither is fenced (they hold different partitions).
    for round in 0..5_i64 {
        let range = round * 100..(round + 1) * 100;
        a.write(&rows(&schema, 0, range.clone())).await.unwrap();
        b.write(&rows(&schema, 1, range.clone())).await.unwrap();
        b.write(&rows(&schema, 2, range.clone())).await.unwrap();
        pa.handed_on(&offsets(topic, &[(0, range.end)]));
        pb.handed_on(&offsets(topic, &[(1, range.end), (2, range.end)]));
        let (sa, sb) = if round % 2 == 0 {
            let sa = commit(&mut a, &mut pa).await.expect("a lands");
            (sa, commit(&mut b, &mut pb).await.expect("b lands"))
        } else {
            let sb = commit(&mut b, &mut pb).await.expect("b lands");
            (commit(&mut a, &mut pa).await.expect("a lands"), sb)
        };
        assert_eq!((sa.rows, sb.rows), (100, 200));
        let (first, second) = if round % 2 == 0 {
            (&sa, &sb)
        } else {
            (&sb, &sa)
        };
        assert_eq!(
            (first.conflicts, second.conflicts),
            (0, 1),
            "round {round}: the second decides again on the first's snapshot"
        );
    }
    let history = offsets_history(&pipeline).await;
    assert_eq!(history.len(), 10, "every commit landed once");
    for pair in history.windows(2) {
        for (t, p, next) in pair[0].iter() {
            assert!(
                pair[1].get(t, p).is_some_and(|n| n >= next),
                "offsets never go back: {} then {}",
                pair[0].to_json(),
                pair[1].to_json()
            );
        }
    }
    assert_eq!(
        history.last().unwrap(),
        &offsets(topic, &[(0, 500), (1, 500), (2, 500)])
    );

    // Both believe they hold partition 0 (a zombie and the new owner): the first commit lands,
    // the second is fenced and its rows never reach the table.
    let mut zombie = Progress::new(topic);
    let mut owner = Progress::new(topic);
    let table = offsets(topic, &[(0, 500)]);
    zombie.hold(&BTreeSet::from([0]), &table, &table);
    owner.hold(&BTreeSet::from([0]), &table, &table);
    a.write(&rows(&schema, 0, 500..550)).await.unwrap();
    b.write(&rows(&schema, 0, 500..600)).await.unwrap();
    zombie.handed_on(&offsets(topic, &[(0, 550)]));
    owner.handed_on(&offsets(topic, &[(0, 600)]));
    let (first, second) = tokio::join!(commit(&mut b, &mut owner), commit(&mut a, &mut zombie));
    let landed = [first.is_ok(), second.is_ok()];
    assert_eq!(
        landed.iter().filter(|l| **l).count(),
        1,
        "exactly one lands"
    );
    let refused = if first.is_ok() { second } else { first };
    assert!(
        matches!(refused, Err(SinkError::Fenced { .. })),
        "{refused:?}"
    );
    let discarded = a.discard().await + b.discard().await;
    assert!(discarded == 50 || discarded == 100);

    let batches = common::scan_table(&pipeline.config, "shared").await;
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for batch in &batches {
        let column = batch.column_by_name("event_id").unwrap();
        let column = column.as_any().downcast_ref::<StringArray>().unwrap();
        for id in column.iter().flatten() {
            *ids.entry(id.to_string()).or_default() += 1;
        }
    }
    assert!(ids.values().all(|n| *n == 1), "no row doubled");
    let zero = ids.keys().filter(|id| id.starts_with("0-")).count();
    let last = history_last(&pipeline).await;
    assert_eq!(
        zero as i64,
        last.get(topic, 0).unwrap(),
        "partition 0's rows are exactly those below its offset"
    );
}

/// One committer lands other runners' shares in its own snapshots: a runner's data files
/// written on its side, sent in the form they travel in, each claim checked on the state the
/// snapshot lands on. A zombie's share is refused and its rows never reach the table; two
/// shares of one runner chain in one snapshot; a checkpoint a share replaces is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn one_committer_lands_other_runners_shares_once_and_refuses_a_zombies() {
    use campaign_pipeline::common::summary::PartitionCheckpoint;
    use campaign_pipeline::sink::iceberg::ShareOutcome;
    let pipeline = common::TestPipeline::new();
    let schema = shared_table(&pipeline).await;
    let topic = "events";
    let mut committer = writer(&pipeline, &schema).await;
    let mut runner = writer(&pipeline, &schema).await;
    let mut zombie = writer(&pipeline, &schema).await;
    let mut own = Progress::new(topic);
    let mut theirs = Progress::new(topic);
    own.hold(&BTreeSet::from([0]), &Offsets::new(), &Offsets::new());
    theirs.hold(&BTreeSet::from([1, 2]), &Offsets::new(), &Offsets::new());
    // A checkpoint file per share, so that replacing one can be seen deleting it.
    let location = runner.location().to_string();
    let checkpoint = |name: &str| PartitionCheckpoint {
        file: format!("{location}/checkpoints/{name}"),
        max_event: None,
        watermark: None,
    };
    for name in ["r0", "r1", "r2", "r2a", "r2b"] {
        let output = runner.file_io().new_output(&checkpoint(name).file).unwrap();
        output
            .write(bytes::Bytes::from_static(b"state"))
            .await
            .unwrap();
    }

    for round in 0..3_i64 {
        let range = round * 100..(round + 1) * 100;
        committer
            .write(&rows(&schema, 0, range.clone()))
            .await
            .unwrap();
        runner
            .write(&rows(&schema, 1, range.clone()))
            .await
            .unwrap();
        runner
            .write(&rows(&schema, 2, range.clone()))
            .await
            .unwrap();
        own.handed_on(&offsets(topic, &[(0, range.end)]));
        theirs.handed_on(&offsets(topic, &[(1, range.end), (2, range.end)]));
        let mut claim = theirs.claim(TableRole::Events);
        claim.checkpoints = Some(BTreeMap::from([(1, checkpoint(&format!("r{round}")))]));
        let share = runner.share(claim.clone()).await.unwrap();
        // What a control topic carries: Iceberg's JSON of each data file, and the claim.
        let sent = serde_json::to_string(&runner.encode(share).unwrap()).unwrap();
        let received = committer
            .decode(serde_json::from_str(&sent).unwrap())
            .unwrap();
        if round == 1 {
            // Partition 1's old owner, paused since before the first commit, read it from the
            // start and shares that too.
            zombie.write(&rows(&schema, 1, 0..50)).await.unwrap();
        }
        let mut shares = vec![received];
        if round == 1 {
            let mut stale = Progress::new(topic);
            stale.hold(&BTreeSet::from([1]), &Offsets::new(), &Offsets::new());
            stale.handed_on(&offsets(topic, &[(1, 50)]));
            shares.push(zombie.share(stale.claim(TableRole::Events)).await.unwrap());
        }
        let (stats, outcomes) = committer
            .commit_with(
                |state| {
                    Ok(SnapshotContent {
                        offsets: own.decide(TableRole::Events, &state.offsets)?,
                        checkpoints: None,
                        jumps: Default::default(),
                    })
                },
                &shares,
            )
            .await
            .expect("the committer lands");
        own.committed(TableRole::Events, &committer.state().offsets);
        assert_eq!(stats.rows, 100, "the committer's own rows");
        assert!(
            matches!(outcomes[0], ShareOutcome::Landed { snapshot_id } if snapshot_id == stats.snapshot_id),
            "{outcomes:?}"
        );
        if round == 1 {
            let ShareOutcome::Fenced(fenced) = &outcomes[1] else {
                panic!("the zombie's share landed: {outcomes:?}");
            };
            assert_eq!(fenced.partitions[0].partition, 1);
            assert_eq!(
                fenced.partitions[0].table_stands,
                Some(200),
                "checked after the runner's share in the same snapshot"
            );
        }
        let recorded = claim.decide(theirs.table(TableRole::Events)).unwrap();
        theirs.committed(TableRole::Events, &recorded);
    }
    // The runner's next two shares chain in one snapshot: the second starts where the first
    // records, and replaces its checkpoint, which the committer deletes once it has landed.
    let mut chained = Vec::new();
    for (name, end) in [("r2a", 350), ("r2b", 400)] {
        runner
            .write(&rows(&schema, 2, end - 50..end))
            .await
            .unwrap();
        theirs.handed_on(&offsets(topic, &[(2, end)]));
        let mut claim = theirs.claim(TableRole::Events);
        claim.checkpoints = Some(BTreeMap::from([(2, checkpoint(name))]));
        chained.push(runner.share(claim.clone()).await.unwrap());
        let recorded = claim.decide(theirs.table(TableRole::Events)).unwrap();
        theirs.committed(TableRole::Events, &recorded);
    }
    let (stats, outcomes) = committer
        .commit_with(|state| Ok(SnapshotContent::unchanged(state)), &chained)
        .await
        .unwrap();
    assert_eq!(stats.rows, 0);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, ShareOutcome::Landed { .. })),
        "{outcomes:?}"
    );
    let exists = |name: &str| {
        let file = checkpoint(name).file;
        let io = committer.file_io().clone();
        async move { io.exists(&file).await.unwrap() }
    };
    assert!(!exists("r2a").await, "the replaced checkpoint is deleted");
    assert!(exists("r2b").await && exists("r2").await);
    assert!(!exists("r1").await && !exists("r0").await);
    let state = committer.state().checkpoints.clone();
    assert_eq!(state.0[&1].file, checkpoint("r2").file);
    assert_eq!(state.0[&2].file, checkpoint("r2b").file);

    let history = offsets_history(&pipeline).await;
    assert_eq!(history.len(), 4, "one snapshot per landing");
    assert_eq!(
        history.last().unwrap(),
        &offsets(topic, &[(0, 300), (1, 300), (2, 400)])
    );
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for batch in common::scan_table(&pipeline.config, "shared").await {
        let column = batch.column_by_name("event_id").unwrap();
        let column = column.as_any().downcast_ref::<StringArray>().unwrap();
        for id in column.iter().flatten() {
            *ids.entry(id.to_string()).or_default() += 1;
        }
    }
    assert!(ids.values().all(|n| *n == 1), "no row doubled");
    for (partition, end) in [(0, 300), (1, 300), (2, 400)] {
        let count = ids
            .keys()
            .filter(|id| id.starts_with(&format!("{partition}-")))
            .count();
        assert_eq!(
            count as i64, end,
            "partition {partition}: every row below its offset"
        );
    }
}

async fn history_last(pipeline: &common::TestPipeline) -> Offsets {
    offsets_history(pipeline).await.pop().unwrap_or_default()
}

/// A runner process and the lines it logs.
struct Runner {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
    /// Its dashboard's port: the health figures say which partitions it holds.
    port: u16,
}

impl Runner {
    fn start(pipeline: &common::TestPipeline, args: &[&str]) -> Self {
        let port = common::free_port();
        let listen = format!("127.0.0.1:{port}");
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--dashboard", "--listen", &listen])
            .collect();
        let (child, lines) = pipeline.spawn_logged(&args);
        Self {
            child,
            lines,
            log: Vec::new(),
            port,
        }
    }

    /// The partitions it holds, as its health figures say (none while it does not answer).
    fn holding(&self) -> Option<BTreeSet<i32>> {
        let (status, body) = common::http_get(self.port, "/api/health")?;
        if !status.contains(" 200 ") {
            return None;
        }
        let health: serde_json::Value = serde_json::from_str(&body).ok()?;
        serde_json::from_value(health.get("partitions")?.clone()).ok()
    }

    /// Waits until the partitions it holds satisfy `wanted`, up to `timeout`.
    fn wait_holding(
        &mut self,
        wanted: impl Fn(&BTreeSet<i32>) -> bool,
        timeout: std::time::Duration,
    ) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.holding().is_some_and(|held| wanted(&held)) {
                return true;
            }
            self.drain();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    /// Collects what the runner logged so far (terminal colours removed).
    fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(without_colours(&line));
        }
        &self.log
    }

    /// Waits until a line containing all of `needles` was logged, up to `timeout`.
    fn wait_for(&mut self, needles: &[&str], timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let found = |log: &[String]| log.iter().any(|l| needles.iter().all(|n| l.contains(n)));
        while std::time::Instant::now() < deadline {
            if found(self.drain()) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        found(self.drain())
    }

    /// Waits for the process to exit on its own, at most `timeout`; panics naming `what` after.
    fn wait_exit(&mut self, timeout: std::time::Duration, what: &str) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("status") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGKILL, then the whole log.
    fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain();
        self.log
    }

    /// SIGTERM (finish the batch in hand and commit), then the whole log.
    fn stop(mut self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("runner exit");
        self.drain();
        assert!(
            status.success(),
            "runner exit {status}:\n{}",
            self.log.join("\n")
        );
        self.log
    }
}

/// A log line without its ANSI colour sequences.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The commit conflicts (retried after validation) that the commit log lines report.
fn conflicts(log: &[String]) -> u64 {
    log.iter()
        .filter(|l| l.contains("committed"))
        .filter_map(|l| {
            l.split("conflicts=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn cli_ok(pipeline: &common::TestPipeline, args: &[&str]) -> String {
    let output = pipeline.cli(args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        common::text(&output)
    );
    common::text(&output)
}

/// Event ids in the events table, with the number of events per campaign; asserts that no
/// event_id appears twice.
async fn events_per_campaign(
    pipeline: &common::TestPipeline,
) -> (BTreeMap<String, u64>, std::collections::HashSet<String>) {
    use arrow::array::AsArray;
    let mut seen = std::collections::HashSet::new();
    let mut per_campaign = BTreeMap::new();
    for batch in common::scan_table(&pipeline.config, "campaign_events").await {
        let ids = arrow::compute::cast(batch.column_by_name("event_id").unwrap(), &DataType::Utf8)
            .unwrap();
        let campaigns = arrow::compute::cast(
            batch.column_by_name("campaign_id").unwrap(),
            &DataType::Utf8,
        )
        .unwrap();
        for (id, campaign) in ids
            .as_string::<i32>()
            .iter()
            .zip(campaigns.as_string::<i32>())
        {
            let id = id.unwrap().to_string();
            assert!(seen.insert(id.clone()), "event {id} is in the table twice");
            *per_campaign
                .entry(campaign.unwrap().to_string())
                .or_default() += 1;
        }
    }
    (per_campaign, seen)
}

/// The source offsets of the valid events the table lacks, as ranges per partition (the
/// topic's events whose id is missing), for a failure to say where they were lost.
fn missing_offsets(
    pipeline: &common::TestPipeline,
    in_table: &std::collections::HashSet<String>,
) -> String {
    let mut missing: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for record in common::read_topic(&pipeline.brokers, &pipeline.topic) {
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(&record.payload) else {
            continue;
        };
        let Some(id) = event.get("event_id").and_then(|id| id.as_str()) else {
            continue;
        };
        if !in_table.contains(id) {
            missing
                .entry(record.partition)
                .or_default()
                .push(record.offset);
        }
    }
    // Invalid and late events are missing by design: only runs of several in a row stand out.
    missing
        .iter()
        .map(|(partition, offsets)| {
            let mut ranges: Vec<(i64, i64)> = Vec::new();
            for &offset in offsets {
                match ranges.last_mut() {
                    Some((_, end)) if *end + 1 == offset => *end = offset,
                    _ => ranges.push((offset, offset)),
                }
            }
            let runs: Vec<String> = ranges
                .iter()
                .filter(|(start, end)| end - start >= 3)
                .map(|(start, end)| format!("{start}..={end}"))
                .collect();
            format!(
                "partition {partition}: {} missing, runs of 4 or more: {runs:?}",
                offsets.len()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The events table, the metrics table and the dead letter topic equal the generator's truths.
async fn assert_tables_equal_the_truth(
    pipeline: &common::TestPipeline,
    truths: &[campaign_pipeline::generator::Truth],
    context: &str,
) {
    let (per_campaign, in_table) = events_per_campaign(pipeline).await;
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for truth in truths {
        for (campaign, n) in &truth.campaigns {
            *want.entry(campaign.clone()).or_default() += n.impressions + n.clicks + n.conversions;
        }
    }
    if per_campaign != want {
        let missing = missing_offsets(pipeline, &in_table);
        assert_eq!(
            per_campaign, want,
            "events per campaign\n{context}\nevents of the topic not in the table:\n{missing}"
        );
    }
    let got = common::windows::windows(
        &common::scan_table(&pipeline.config, "campaign_metrics").await,
        None,
    );
    common::windows::assert_windows_equal(&got, &common::windows::expected(truths));
    let letters: std::collections::HashSet<(i32, i64)> =
        common::read_topic(&pipeline.brokers, &pipeline.dlq_topic)
            .into_iter()
            .map(|r| {
                let letter: campaign_pipeline::dlq::DeadLetter =
                    serde_json::from_slice(&r.payload).expect("dead letter JSON");
                (letter.source.partition, letter.source.offset)
            })
            .collect();
    let invalid_and_late: u64 = truths
        .iter()
        .map(|t| t.invalid_events + t.late_events)
        .sum();
    assert_eq!(
        letters.len() as u64,
        invalid_and_late,
        "every invalid and late message is in the dead letter topic\n{context}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_runners_with_kills_and_restarts_write_every_event_and_window_once() {
    three_runners_with_kills_and_restarts("each_runner").await;
}

/// The same with one committer: the runner holding partition 0 lands the others' shares, and
/// the kills take the committer away too (its shares' runners then land them themselves).
#[tokio::test(flavor = "multi_thread")]
async fn three_runners_handing_their_commits_to_one_committer_write_every_event_and_window_once() {
    let pipeline = three_runners_with_kills_and_restarts("one_committer").await;
    let table = common::load_table(&pipeline.config, "campaign_events").await;
    let shared = table
        .metadata()
        .snapshots()
        .filter(|s| {
            s.summary()
                .additional_properties
                .contains_key(campaign_pipeline::common::summary::SHARES)
        })
        .count();
    assert!(shared > 0, "no snapshot took another runner's share");
}

async fn three_runners_with_kills_and_restarts(mode: &str) -> common::TestPipeline {
    let pipeline = common::TestPipeline::new();
    pipeline.edit_config(|yaml| {
        yaml.replace(
            "    commit:\n      interval: 5s",
            &format!("    commit:\n      mode: {mode}\n      interval: 1s"),
        )
        .replace("max_rows: 10000", "max_rows: 5000")
    });
    cli_ok(&pipeline, &["setup"]);
    // The first 3,000 events have no late ones: a partition's first event has no watermark to
    // be late against, while the generator counts its far-past events as late from the start.
    let warm_up = pipeline.dir.path().join("warm-up.json");
    cli_ok(
        &pipeline,
        &[
            "generate",
            "--count",
            "3000",
            "--seed",
            "10",
            "--campaigns",
            "12",
            "--start-time",
            "2026-01-01T00:00:00Z",
            "--invalid-ratio",
            "0.02",
            "--truth",
            warm_up.to_str().unwrap(),
        ],
    );
    let truth_path = pipeline.dir.path().join("truth.json");
    // 297,000 more arrive over about a minute while the runners run.
    let mut generator = pipeline
        .command(&[
            "generate",
            "--count",
            "297000",
            "--rate",
            "5000",
            "--seed",
            "11",
            "--campaigns",
            "12",
            "--start-time",
            "2026-01-01T00:00:30Z",
            "--invalid-ratio",
            "0.02",
            "--out-of-order-ratio",
            "0.05",
            "--late-ratio",
            "0.01",
            "--truth",
            truth_path.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("generator");
    let mut runners: Vec<Runner> = (0..3).map(|_| Runner::start(&pipeline, &["run"])).collect();
    let mut logs: Vec<String> = Vec::new();
    let mut kills = 0;
    let started = std::time::Instant::now();
    // A kill every 8 s (more than the 6 s session timeout), cycling through the runners.
    while kills < 7 || generator.try_wait().expect("generator").is_none() {
        std::thread::sleep(std::time::Duration::from_secs(8));
        let victim = kills % runners.len();
        let replacement = Runner::start(&pipeline, &["run"]);
        logs.extend(std::mem::replace(&mut runners[victim], replacement).kill());
        kills += 1;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(600),
            "the generator hangs"
        );
    }
    assert!(generator.wait().expect("generator").success());
    // The runners left running catch up on their own: wait until the events table holds the
    // whole topic (every record, valid or not, moves its partition's offset), or a while (the
    // last runner below catches up in any case, and the tables are checked against the truth).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let summary = common::snapshot_properties(&pipeline.config, "campaign_events").await;
        let held: i64 = summary
            .get("campaign-pipeline.offsets")
            .and_then(|json| Offsets::from_json(json).ok())
            .map_or(0, |offsets| {
                (0..3).filter_map(|p| offsets.get(&pipeline.topic, p)).sum()
            });
        if held >= 300_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    for runner in runners {
        logs.extend(runner.stop());
    }
    let assignments = logs
        .iter()
        .filter(|l| l.contains("holding partitions"))
        .count();
    assert!(assignments >= 5, "partitions moved {assignments} times");
    // One last runner catches up and closes the windows still open.
    let last = cli_ok(
        &pipeline,
        &["run", "--until-caught-up", "--flush-open-windows"],
    );
    let truths: Vec<campaign_pipeline::generator::Truth> = [&warm_up, &truth_path]
        .iter()
        .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
        .collect();
    assert_eq!(truths[0].records + truths[1].records, 300_000);
    let fenced = logs.iter().filter(|l| l.contains("commit refused")).count();
    // Runners committing to the same tables at the same moment: the later one decides again
    // on the table state the other left (the table contents below prove nothing doubled).
    let conflicts = conflicts(&logs);
    // What the runners said of their partitions' positions, for a failure to show.
    let positions: Vec<&String> = logs
        .iter()
        .filter(|l| {
            l.contains(" WARN ") || l.contains("seeking back") || l.contains("holding partitions")
        })
        .collect();
    let context = format!(
        "{kills} kills, {assignments} assignments, {conflicts} commit conflicts, {fenced} fenced commits\n{last}\nthe runners' positions:\n{}",
        positions.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
    );
    assert_tables_equal_the_truth(&pipeline, &truths, &context).await;
    pipeline
}

/// A batch run beside a runner that stopped moving (SIGSTOP: its partitions stay assigned to it
/// until its session times out, and tansu 0.6 may never move them): `--until-caught-up` does
/// not end 0 once the partitions it was given are read; the others making no progress past
/// `--max-unassigned`, it exits non-zero naming each with the tables' offset and its end.
#[tokio::test(flavor = "multi_thread")]
async fn until_caught_up_does_not_end_well_while_partitions_it_lacks_stay_behind() {
    let pipeline = common::TestPipeline::new();
    cli_ok(&pipeline, &["setup"]);
    cli_ok(&pipeline, &["generate", "--count", "3000", "--seed", "41"]);
    let mut stalled = Runner::start(&pipeline, &["run"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while events_per_campaign(&pipeline).await.0.values().sum::<u64>() < 2_900 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first runner never committed: {}",
            stalled.drain().join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut batch = Runner::start(
        &pipeline,
        &["run", "--until-caught-up", "--max-unassigned", "10s"],
    );
    // The group splits the partitions between the two.
    assert!(
        batch.wait_holding(|held| !held.is_empty(), std::time::Duration::from_secs(60)),
        "{}",
        batch.drain().join("\n")
    );
    stalled.signal(libc::SIGSTOP);
    cli_ok(&pipeline, &["generate", "--count", "3000", "--seed", "42"]);
    let sent = common::read_topic(&pipeline.brokers, &pipeline.topic);
    let status = batch.wait_exit(
        std::time::Duration::from_secs(180),
        "the batch run never ended",
    );
    stalled.signal(libc::SIGCONT);
    let said = batch.kill().join("\n");
    stalled.kill();
    let summary = common::snapshot_properties(&pipeline.config, "campaign_events").await;
    let tables = Offsets::from_json(&summary["campaign-pipeline.offsets"]).expect("offsets");
    let ends: BTreeMap<i32, i64> = sent.iter().fold(BTreeMap::new(), |mut ends, r| {
        let end = ends.entry(r.partition).or_insert(0);
        *end = (*end).max(r.offset + 1);
        ends
    });
    let behind: Vec<String> = ends
        .iter()
        .filter_map(|(partition, end)| {
            let at = tables.get(&pipeline.topic, *partition)?;
            (at < *end).then(|| format!("partition {partition} (tables at {at} of {end})"))
        })
        .collect();
    assert!(
        !behind.is_empty(),
        "the stalled runner's partitions are behind\n{said}"
    );
    assert!(!status.success(), "ended 0 with {behind:?} behind\n{said}");
    for partition in &behind {
        assert!(said.contains(partition.as_str()), "{partition}\n{said}");
    }
    assert!(said.contains("made no progress for"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_without_partitions_says_so_and_until_caught_up_gives_up() {
    let pipeline = common::TestPipeline::new();
    // One partition for two runners: one of them holds nothing.
    pipeline.edit_config(|yaml| yaml.replace("partitions: 3", "partitions: 1"));
    cli_ok(&pipeline, &["setup"]);
    cli_ok(&pipeline, &["generate", "--count", "2000", "--seed", "4"]);
    let mut first = Runner::start(&pipeline, &["run"]);
    assert!(
        first.wait_holding(|held| held.contains(&0), std::time::Duration::from_secs(60)),
        "{}",
        first.drain().join("\n")
    );
    let mut second = Runner::start(
        &pipeline,
        &["run", "--until-caught-up", "--max-unassigned", "8s"],
    );
    let status = second.wait_exit(
        std::time::Duration::from_secs(120),
        "the second runner waits forever",
    );
    let second_log = second.kill();
    // The group gave the partition to the newcomer: the first runner was left idle, and says
    // so once its hand has stayed empty a while (the newcomer may have caught up sooner).
    let first_idle = status.success()
        && first.wait_for(
            &["this runner holds no partition", "member(s)"],
            std::time::Duration::from_secs(30),
        );
    let first_log = first.stop();
    let idle = |log: &[String]| {
        log.iter()
            .any(|l| l.contains("this runner holds no partition") && l.contains("member(s)"))
    };
    if status.success() {
        assert!(first_idle, "{}", first_log.join("\n"));
    } else {
        assert!(idle(&second_log), "{}", second_log.join("\n"));
        let error = second_log.join("\n");
        assert!(error.contains("held no partition of"), "{error}");
        assert!(error.contains("has 2 member(s)"), "{error}");
        assert!(error.contains("nothing for it to catch up"), "{error}");
    }
}
