//! `collect`, the apps' way in, against a real broker and with real HTTP on the wire: what a
//! 202 promises (every event in the topic as sent, keyed by campaign, once), what each kind of
//! bad request gets, a broker outage while apps keep posting, and SIGTERM with a request in
//! flight. A part of the `stream` module, whose process shares its broker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, read_topic, scan_table, text, TestPipeline};
use arrow::array::AsArray;
use campaign_pipeline::dlq::DeadLetter;

const TOKEN: &str = "app-secret";

/// A collector process, killed when dropped.
struct Collector {
    child: Child,
    port: u16,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds a `collector:` block on a free port to the pipeline's configuration, starts `collect`
/// and waits until it answers.
fn start_collector(pipeline: &TestPipeline, settings: &str) -> Collector {
    let port = common::free_port();
    pipeline
        .edit_config(|yaml| format!("{yaml}collector:\n  listen: 127.0.0.1:{port}\n{settings}"));
    let mut command = pipeline.command(&["collect"]);
    command.env("CAMPAIGN_COLLECTOR_TOKENS", format!("other-token, {TOKEN}"));
    let child = common::spawn_tied(command);
    let mut collector = Collector { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::http_get(port, "/healthz").is_none() {
        if let Ok(Some(status)) = collector.child.try_wait() {
            panic!("collect exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "collect did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    collector
}

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then_some(value.trim())
        })
    }
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Sends one request as `curl` would (`Connection: close`) and reads the whole answer.
fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    // A server that answers before reading the body may close while it is still being sent.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_reply(&raw)
}

fn post(port: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let bearer = format!("Bearer {TOKEN}");
    let mut all = vec![("Authorization", bearer.as_str())];
    all.extend_from_slice(headers);
    send(port, "POST", "/v1/events", &all, body)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A valid event of `campaign`, as an app would write it (its own spacing and key order).
fn event(id: &str, campaign: &str, event_type: &str) -> String {
    let at = (chrono::Utc::now() - chrono::TimeDelta::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{ "event_type":"{event_type}", "event_id": "{id}", "campaign_id": "{campaign}", "user_id": "u-{id}", "platform": "ios", "timestamp": "{at}", "revenue": 1.25, "country": "DE", "device_type": "mobile" }}"#
    )
}

fn accepted(reply: &Reply) -> usize {
    assert_eq!(reply.status, 202, "{reply:?}");
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON answer");
    body["accepted"].as_u64().expect("accepted count") as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn events_posted_in_each_body_form_land_as_sent_keyed_by_campaign() {
    let pipeline = TestPipeline::new();
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let collector = start_collector(&pipeline, "");
    let port = collector.port;

    let one = event("e1", "campaign_a", "impression");
    let array = [
        event("e2", "campaign_a", "click"),
        event("e3", "campaign_b", "impression"),
    ];
    let lines = [
        event("e4", "campaign_b", "click"),
        event("e5", "campaign_c", "conversion"),
    ];
    // No campaign: produced unkeyed, dead-lettered by the parsing SQL with the bytes as sent.
    let broken = r#"{"event_id": "e6", "event_type": "click"}"#.to_string();
    let zipped = [
        event("e7", "campaign_c", "impression"),
        event("e8", "campaign_a", "impression"),
    ];
    // Over the parsing SQL's 64 KiB limit and under the body's: produced, dead-lettered whole.
    let oversized = event("e9", "campaign_b", "click").replacen(
        "{ ",
        &format!("{{ \"note\": \"{}\", ", "x".repeat(100 * 1024)),
        1,
    );
    let mut sent = 0;
    sent += accepted(&post(
        port,
        &[("Content-Type", "application/json")],
        one.as_bytes(),
    ));
    sent += accepted(&post(
        port,
        &[("Content-Type", "application/json")],
        format!("[{}, {}]", array[0], array[1]).as_bytes(),
    ));
    sent += accepted(&post(
        port,
        &[("Content-Type", "application/x-ndjson")],
        format!("{}\n{}\r\n{broken}\n", lines[0], lines[1]).as_bytes(),
    ));
    sent += accepted(&post(
        port,
        &[("Content-Encoding", "gzip")],
        &gzip(format!("{}\n{}\n", zipped[0], zipped[1]).as_bytes()),
    ));
    sent += accepted(&post(port, &[], oversized.as_bytes()));
    assert_eq!(sent, 9);

    // In the topic: each event byte for byte, keyed by its campaign, a campaign on one partition.
    let records = read_topic(&pipeline.brokers, &pipeline.topic);
    let posted: Vec<&String> = std::iter::once(&one)
        .chain(&array)
        .chain(&lines)
        .chain(std::iter::once(&broken))
        .chain(&zipped)
        .chain(std::iter::once(&oversized))
        .collect();
    let mut in_topic: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone()).collect();
    let mut want: Vec<Vec<u8>> = posted.iter().map(|p| p.as_bytes().to_vec()).collect();
    in_topic.sort();
    want.sort();
    assert_eq!(in_topic, want);
    let mut partitions: BTreeMap<Vec<u8>, BTreeSet<i32>> = BTreeMap::new();
    for record in &records {
        let value: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        match value["campaign_id"].as_str() {
            Some(campaign) => {
                assert_eq!(record.key.as_deref(), Some(campaign.as_bytes()));
                partitions
                    .entry(campaign.as_bytes().to_vec())
                    .or_default()
                    .insert(record.partition);
            }
            None => assert_eq!(record.key, None),
        }
    }
    assert_eq!(partitions.len(), 3);
    assert!(partitions.values().all(|p| p.len() == 1), "{partitions:?}");

    // Through the pipeline: the valid events in the table, the broken one in the dead letters.
    let run = pipeline.cli(&["run", "--until-caught-up"]);
    assert!(run.status.success(), "{}", text(&run));
    let mut ids: Vec<String> = scan_table(&pipeline.config, "campaign_events")
        .await
        .iter()
        .flat_map(|batch| {
            let column = batch.column_by_name("event_id").unwrap().as_string::<i32>();
            (0..batch.num_rows())
                .map(|i| column.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["e1", "e2", "e3", "e4", "e5", "e7", "e8"]);
    let letters: Vec<DeadLetter> = read_topic(&pipeline.brokers, &pipeline.dlq_topic)
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    let mut rejected: Vec<Vec<u8>> = letters.iter().map(|l| l.payload_bytes().unwrap()).collect();
    rejected.sort();
    let mut want_rejected = vec![broken.as_bytes().to_vec(), oversized.as_bytes().to_vec()];
    want_rejected.sort();
    assert_eq!(rejected, want_rejected);

    let metrics = common::http_get(port, "/metrics").unwrap().1;
    assert_eq!(
        common::metric_sample(&metrics, "campaign_collector_events_accepted_total"),
        Some(9.0),
        "{metrics}"
    );
    assert_eq!(
        common::metric_sample(
            &metrics,
            "campaign_collector_requests_total{status=\"202\"}"
        ),
        Some(5.0),
        "{metrics}"
    );
}

#[test]
fn each_bad_request_gets_its_status_and_the_collector_stays_well() {
    let pipeline = TestPipeline::new();
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let collector = start_collector(
        &pipeline,
        "  read_timeout: 2s\n  cors_origins: [\"https://app.example.com\"]\n",
    );
    let port = collector.port;
    let valid = event("ok", "campaign_a", "click");

    let no_token = send(port, "POST", "/v1/events", &[], valid.as_bytes());
    assert_eq!(no_token.status, 401, "{no_token:?}");
    assert_eq!(no_token.header("www-authenticate"), Some("Bearer"));
    let wrong = send(
        port,
        "POST",
        "/v1/events",
        &[("Authorization", "Bearer app-secreT")],
        valid.as_bytes(),
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");

    let not_json = post(port, &[], b"event=click&campaign=a");
    assert_eq!(not_json.status, 400, "{not_json:?}");
    assert!(not_json.body.contains("line 1"), "{not_json:?}");
    let invalid_utf8 = post(port, &[], b"{\"campaign_id\": \"caf\xe9\"}");
    assert_eq!(invalid_utf8.status, 400, "{invalid_utf8:?}");
    let zipped = gzip(valid.as_bytes());
    let truncated = post(
        port,
        &[("Content-Encoding", "gzip")],
        &zipped[..zipped.len() / 2],
    );
    assert_eq!(truncated.status, 400, "{truncated:?}");
    assert!(truncated.body.contains("gzip"), "{truncated:?}");
    let brotli = post(port, &[("Content-Encoding", "br")], valid.as_bytes());
    assert_eq!(brotli.status, 415, "{brotli:?}");

    // 10 MB announced: refused from its headers, as curl sends large bodies (100-continue).
    let huge = vec![b' '; 10 << 20];
    let too_large = post(port, &[("Expect", "100-continue")], &huge);
    assert_eq!(too_large.status, 413, "{too_large:?}");
    // A gzip body small on the wire and over the limit once decoded.
    let bomb = gzip(&vec![b' '; 4 << 20]);
    assert!(bomb.len() < 1 << 20);
    let bomb = post(port, &[("Content-Encoding", "gzip")], &bomb);
    assert_eq!(bomb.status, 413, "{bomb:?}");
    // 100,000 tiny events in one array: over collector.max_events.
    let tiny = format!("[{}{{}}]", "{},".repeat(99_999));
    let many = post(port, &[], tiny.as_bytes());
    assert_eq!(many.status, 413, "{many:?}");
    assert!(many.body.contains("100000 events"), "{many:?}");

    // A client sending its body a byte a second gets 408 once read_timeout passes, and its
    // connection is freed.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        slow,
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
    )
    .unwrap();
    let mut slow_writer = slow.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..60 {
            if slow_writer.write_all(b" ").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let mut raw = Vec::new();
    let _ = slow.read_to_end(&mut raw);
    let answer = parse_reply(&raw);
    assert_eq!(answer.status, 408, "{answer:?}");
    drop(slow);
    trickle.join().unwrap();

    // CORS: the allowed origin's preflight is answered without a token; another origin's is not
    // allowed.
    let preflight = |origin: &str| {
        send(
            port,
            "OPTIONS",
            "/v1/events",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization,content-type",
                ),
            ],
            b"",
        )
    };
    let allowed = preflight("https://app.example.com");
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(allowed
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("authorization")));
    let other = preflight("https://evil.example.com");
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{other:?}"
    );

    // Still well: a good request goes through, and the refusals were counted by reason.
    assert_eq!(accepted(&post(port, &[], valid.as_bytes())), 1);
    let metrics = common::http_get(port, "/metrics").unwrap().1;
    for (reason, count) in [
        ("unauthorized", 2.0),
        ("not_json", 3.0),
        ("encoding", 1.0),
        ("too_large", 3.0),
        ("slow_body", 1.0),
    ] {
        let series = format!("campaign_collector_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(
            common::metric_sample(&metrics, &series),
            Some(count),
            "{series}\n{metrics}"
        );
    }
    let records = read_topic(&pipeline.brokers, &pipeline.topic);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, valid.as_bytes());
}

#[test]
fn a_broker_outage_gets_503_and_every_acknowledged_event_is_in_the_topic_once() {
    let common::ProxiedPipeline {
        pipeline, proxy, ..
    } = common::pipeline_behind_proxy();
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let collector = start_collector(&pipeline, "  produce_timeout: 2s\n");
    let port = collector.port;

    /// What the apps saw: each request's event ids and its answer.
    #[derive(Default)]
    struct Seen {
        answers: Vec<(u16, Vec<String>)>,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let apps: Vec<_> = (0..4)
        .map(|app| {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let ids: Vec<String> = (0..10).map(|i| format!("a{app}-r{n}-{i}")).collect();
                    let body: Vec<String> = ids
                        .iter()
                        .map(|id| event(id, &format!("campaign_{}", n % 5), "impression"))
                        .collect();
                    let reply = post(port, &[], body.join("\n").as_bytes());
                    if reply.status == 503 {
                        assert!(reply.header("retry-after").is_some(), "{reply:?}");
                    }
                    seen.lock().unwrap().answers.push((reply.status, ids));
                    n += 1;
                }
            })
        })
        .collect();
    let count = |status: u16| {
        seen.lock()
            .unwrap()
            .answers
            .iter()
            .filter(|(s, _)| *s == status)
            .count()
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "waited in vain for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("acknowledged requests", &|| count(202) >= 20);
    proxy.cut();
    wait_for("refused requests while the broker is away", &|| {
        count(503) >= 8
    });
    let acknowledged_before = count(202);
    proxy.restore();
    wait_for("requests acknowledged after the broker came back", &|| {
        count(202) >= acknowledged_before + 20
    });
    stop.store(true, Ordering::SeqCst);
    for app in apps {
        app.join().unwrap();
    }

    let mut in_topic: HashMap<String, usize> = HashMap::new();
    for record in read_topic(&pipeline.brokers, &pipeline.topic) {
        let value: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        *in_topic
            .entry(value["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let seen = seen.lock().unwrap();
    let statuses: BTreeSet<u16> = seen.answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, BTreeSet::from([202, 503]));
    for (status, ids) in &seen.answers {
        for id in ids {
            let copies = in_topic.get(id).copied().unwrap_or(0);
            match status {
                // Acknowledged: in the topic, once.
                202 => assert_eq!(copies, 1, "{id} was acknowledged"),
                // Refused: perhaps in the topic (the app retries it under its event_id),
                // never twice.
                _ => assert!(copies <= 1, "{id} is in the topic {copies} times"),
            }
        }
    }
    assert!(common::http_get(port, "/healthz").is_some());
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits() {
    // The broker behind a proxy: cut, a request's events wait for Kafka, in flight.
    let common::ProxiedPipeline {
        pipeline, proxy, ..
    } = common::pipeline_behind_proxy();
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let mut collector = start_collector(&pipeline, "  produce_timeout: 20s\n");
    let port = collector.port;
    assert_eq!(
        accepted(&post(
            port,
            &[],
            event("warm", "campaign_a", "click").as_bytes()
        )),
        1
    );

    proxy.cut();
    let body = event("in-flight", "campaign_a", "click");
    let request = std::thread::spawn(move || post(port, &[], body.as_bytes()));
    // In flight once the collector holds its bytes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = common::http_get(port, "/metrics").map(|(_, m)| m);
        let held = metrics
            .as_deref()
            .and_then(|m| common::metric_sample(m, "campaign_collector_in_flight_bytes"));
        if held.is_some_and(|bytes| bytes > 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no request in flight: {metrics:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill only sends a signal to the collector's process id.
    unsafe { libc::kill(collector.child.id() as i32, libc::SIGTERM) };
    // Stopped taking connections, and still finishing the one in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "still taking connections");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(collector.child.try_wait().unwrap().is_none());
    proxy.restore();
    let reply = request.join().unwrap();
    assert_eq!(accepted(&reply), 1);
    let status = collector.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let ids: BTreeSet<String> = read_topic(&pipeline.brokers, &pipeline.topic)
        .iter()
        .map(|r| {
            let value: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            value["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids, BTreeSet::from(["warm".into(), "in-flight".into()]));
}
