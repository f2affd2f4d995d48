//! Outages of production storage in the middle of a run: the object store (SeaweedFS's S3 API)
//! or the catalog (SeaweedFS's REST catalog, PostgreSQL) unreachable for 20 s. The runner rides
//! them out and the tables end up holding every event once, read back through the catalog.

use crate::common;

use std::collections::BTreeSet;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use common::production::{
    assert_every_event_once, generate_20k, on_postgres_catalog, on_rest_catalog, small_commits,
};
use common::proxy::Proxy;
use common::seaweed::proxied_seaweed;
use common::{read_topic, text, TestPipeline};

/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(20);

/// The tests cut proxies that all of them go through: one at a time.
static ONE_OUTAGE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn an_object_store_outage_loses_and_duplicates_nothing() {
    let seaweed = proxied_seaweed();
    let logs = survive(on_rest_catalog(&seaweed.server), &seaweed.s3).await;
    assert!(
        logs.contains("dropped what was not committed"),
        "the runner said what failed and what it dropped:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rest_catalog_outage_loses_and_duplicates_nothing() {
    let seaweed = proxied_seaweed();
    let logs = survive(on_rest_catalog(&seaweed.server), &seaweed.catalog).await;
    assert!(
        logs.contains("still failing after"),
        "the runner retried while the catalog was away:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_catalog_outage_loses_and_duplicates_nothing() {
    let seaweed = proxied_seaweed();
    let postgres = common::postgres::postgres();
    let address = format!("127.0.0.1:{}", common::free_port());
    let proxy = Proxy::start(&address, &postgres.address);
    let uri = postgres.uri.replace(&postgres.address, &address);
    let logs = survive(on_postgres_catalog(&seaweed.server, &uri), &proxy).await;
    // The catalog's connection pool waits for a connection by itself: the runner says so.
    assert!(
        logs.contains("waiting for the catalog or the object store")
            || logs.contains("still failing after"),
        "the runner said what it waited for:\n{logs}"
    );
}

/// Runs 20,000 events through `pipeline`, cutting `proxy` for [`OUTAGE`] right after the
/// first commit; then checks that both tables and the dead letter topic hold every event
/// exactly once. Returns the runner's log.
async fn survive(pipeline: TestPipeline, proxy: &Proxy) -> String {
    let _alone = ONE_OUTAGE_AT_A_TIME.lock().await;
    small_commits(&pipeline);
    cli_ok(&pipeline, &["setup"]);
    let truth = generate_20k(&pipeline, 83);

    let started = Instant::now();
    let (mut runner, lines) =
        pipeline.spawn_logged(&["run", "--until-caught-up", "--flush-open-windows"]);
    let mut log = Vec::new();
    let first = Instant::now() + Duration::from_secs(60);
    assert!(
        read_log(&lines, &mut log, Some(": committed "), first),
        "no first commit:\n{}",
        log.join("\n")
    );
    proxy.cut();
    let cut_at = log.len();
    read_log(&lines, &mut log, None, Instant::now() + OUTAGE);
    proxy.restore();
    let restored_at = log.len();
    read_log(
        &lines,
        &mut log,
        None,
        Instant::now() + Duration::from_secs(240),
    );
    let status = runner.wait().expect("runner exit");
    let logs = log.join("\n");
    // Shown when an assertion below fails.
    eprintln!("runner log:\n{logs}");
    assert!(status.success(), "the runner failed:\n{logs}");
    assert!(
        started.elapsed() >= OUTAGE,
        "the run ended before the outage did"
    );
    assert!(
        log[restored_at..]
            .iter()
            .any(|l| l.contains(": committed ") || l.contains("final commit")),
        "nothing was committed after the outage, so it did not fall in the middle of the run:\n{}",
        log[cut_at..].join("\n")
    );

    assert_every_event_once(&pipeline, &truth).await;
    // Every rejected event dead-lettered once.
    let letters = read_topic(&pipeline.brokers, &pipeline.dlq_topic);
    let coordinates: BTreeSet<(i64, i64)> = letters
        .iter()
        .map(|record| {
            let letter: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
            let source = &letter["source"];
            (
                source["partition"].as_i64().unwrap(),
                source["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let rejected = truth.invalid_events + truth.late_events;
    assert_eq!(coordinates.len() as u64, rejected, "every rejected event");
    assert_eq!(letters.len() as u64, rejected, "no dead letter twice");
    logs
}

/// Collects the runner's log lines into `log` until one contains `wanted` (then `true`), the
/// runner exits, or `until`.
fn read_log(
    lines: &Receiver<String>,
    log: &mut Vec<String>,
    wanted: Option<&str>,
    until: Instant,
) -> bool {
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) => {
                let found = wanted.is_some_and(|w| line.contains(w));
                log.push(line);
                if found {
                    return true;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
    false
}

fn cli_ok(pipeline: &TestPipeline, args: &[&str]) -> String {
    let output = pipeline.cli(args);
    assert!(output.status.success(), "{}", text(&output));
    text(&output)
}
