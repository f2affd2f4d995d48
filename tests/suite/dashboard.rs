//! The dashboard in real headless Chromium (through chromedriver) on a running pipeline's
//! tables: the shown totals equal the table's, the charts draw a line per campaign, a
//! screenshot is saved; and `/metrics` parses as Prometheus exposition matching the run.

use crate::common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, read_topic, text, TestPipeline};
use fantoccini::{ClientBuilder, Locator};

use common::http_get as get;

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `name{labels} value` lines of a Prometheus text exposition, checking its shape.
fn parse_exposition(body: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.split_whitespace();
            match words.next() {
                Some("HELP" | "TYPE" | "UNIT") => {
                    helped.insert(words.next().expect("metric name").to_string());
                }
                Some("EOF") => {}
                other => panic!("unexpected comment {other:?} in {line}"),
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let family = name.split('{').next().unwrap();
        assert!(
            helped.iter().any(|h| family.starts_with(h.as_str())),
            "{family} has no HELP/TYPE"
        );
        samples.insert(name.to_string(), value);
    }
    assert!(
        body.trim_end().ends_with("# EOF"),
        "exposition ends with # EOF"
    );
    samples
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn number(text: &str) -> f64 {
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("number: {text:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_chromium_shows_the_tables_totals_and_metrics_match_the_run() {
    let pipeline = TestPipeline::new();
    pipeline.edit_config(|yaml| yaml.replace("interval: 5s", "interval: 1s"));
    assert!(pipeline.cli(&["setup"]).status.success());
    let generate = pipeline.cli(&[
        "generate",
        "--count",
        "20000",
        "--seed",
        "61",
        "--campaigns",
        "4",
        "--invalid-ratio",
        "0.05",
        "--out-of-order-ratio",
        "0.05",
    ]);
    assert!(generate.status.success(), "{}", text(&generate));

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let runner = KillOnDrop(
        pipeline
            .command(&["run", "--dashboard", "--listen", &listen])
            .stderr(Stdio::null())
            .spawn()
            .expect("start runner"),
    );
    // Everything consumed and committed, as the running pipeline reports it.
    wait_for("the pipeline to commit every message", || {
        get(port, "/api/health").is_some_and(|(_, body)| {
            serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|h| h["messages"] == 20000 && h["last_commit"].is_string())
        })
    });

    // Totals the table holds over the dashboard's default range (the last 30 windows).
    let totals = pipeline.cli(&[
        "query",
        "--format",
        "json",
        "SELECT sum(impressions) AS impressions, sum(clicks) AS clicks, \
         sum(conversions) AS conversions, round(sum(revenue), 2) AS revenue, \
         count(DISTINCT campaign_id) AS campaigns FROM campaign_metrics \
         WHERE window_start IN (SELECT DISTINCT window_start FROM campaign_metrics \
         ORDER BY window_start DESC LIMIT 30)",
    ]);
    assert!(totals.status.success(), "{}", text(&totals));
    let totals: Vec<serde_json::Value> = serde_json::from_slice(&totals.stdout).unwrap();
    let want = &totals[0];
    assert!(
        want["impressions"].as_f64().unwrap() > 0.0,
        "closed windows exist: {want}"
    );

    // A range shorter than the history: the API's newest 2 windows are the table's.
    let newest = pipeline.cli(&[
        "query",
        "--format",
        "json",
        "SELECT count(DISTINCT window_start) AS windows, sum(impressions) AS impressions, \
         sum(clicks) AS clicks FROM campaign_metrics \
         WHERE window_start IN (SELECT DISTINCT window_start FROM campaign_metrics \
         ORDER BY window_start DESC LIMIT 2)",
    ]);
    assert!(newest.status.success(), "{}", text(&newest));
    let newest: Vec<serde_json::Value> = serde_json::from_slice(&newest.stdout).unwrap();
    let (status, body) = get(port, "/api/totals?windows=2").expect("totals of 2 windows");
    assert!(status.contains("200"), "{status}: {body}");
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        newest[0]["windows"], 2,
        "the history is longer than 2 windows"
    );
    for field in ["windows", "impressions", "clicks"] {
        assert_eq!(
            api[field].as_f64(),
            newest[0][field].as_f64(),
            "{field}: {api} vs {}",
            newest[0]
        );
    }

    let driver_port = free_port();
    let _driver = KillOnDrop(
        Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/test.sh installs it)"),
    );
    wait_for("chromedriver", || {
        TcpStream::connect(("127.0.0.1", driver_port)).is_ok()
    });
    let profile = tempfile::tempdir().unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1100",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    let client = ClientBuilder::native()
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("WebDriver session in headless Chromium");
    client.goto(&format!("http://{listen}/")).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("body[data-refreshes]"))
        .await
        .expect("the page refreshed from the API");
    let shown = |id: &'static str| {
        let client = client.clone();
        async move {
            number(
                &client
                    .find(Locator::Id(id))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            )
        }
    };
    assert_eq!(
        shown("total-impressions").await,
        want["impressions"].as_f64().unwrap()
    );
    assert_eq!(
        shown("total-clicks").await,
        want["clicks"].as_f64().unwrap()
    );
    assert_eq!(
        shown("total-conversions").await,
        want["conversions"].as_f64().unwrap()
    );
    assert!((shown("total-revenue").await - want["revenue"].as_f64().unwrap()).abs() < 0.006);
    let campaigns = want["campaigns"].as_u64().unwrap() as usize;
    for chart in ["ctr_percent", "cvr_percent", "revenue"] {
        let lines = client
            .find_all(Locator::Css(&format!("#chart-{chart} polyline.series")))
            .await
            .unwrap();
        assert_eq!(lines.len(), campaigns, "one {chart} line per campaign");
    }
    let top = client
        .find_all(Locator::Css("#top tbody tr"))
        .await
        .unwrap();
    assert_eq!(top.len(), campaigns);
    // Picking a campaign narrows the totals to it.
    let first = top[0].attr("data-campaign").await.unwrap().unwrap();
    client
        .find(Locator::Css(&format!("#campaign option[value='{first}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let picked = pipeline.cli(&[
        "query", "--format", "json",
        &format!(
            "SELECT sum(impressions) AS impressions FROM campaign_metrics WHERE campaign_id = '{first}' \
             AND window_start IN (SELECT DISTINCT window_start FROM campaign_metrics \
             ORDER BY window_start DESC LIMIT 30)"
        ),
    ]);
    let picked: Vec<serde_json::Value> = serde_json::from_slice(&picked.stdout).unwrap();
    let want_picked = picked[0]["impressions"].as_f64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while shown("total-impressions").await != want_picked {
        assert!(
            Instant::now() < deadline,
            "totals follow the campaign picker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let folder = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&folder).unwrap();
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(folder.join("dashboard.png"), png).unwrap();
    client.close().await.unwrap();

    // /metrics: valid exposition whose counters match the run.
    let (status, body) = get(port, "/metrics").expect("/metrics answers");
    assert!(status.contains("200"), "{status}");
    let samples = parse_exposition(&body);
    assert_eq!(samples["campaign_pipeline_events_consumed_total"], 20000.0);
    let events_rows: f64 = common::scan_table(&pipeline.config, "campaign_events")
        .await
        .iter()
        .map(|b| b.num_rows() as f64)
        .sum();
    assert_eq!(
        samples["campaign_pipeline_rows_written_total{table=\"campaign_events\"}"],
        events_rows
    );
    let windows: f64 = common::scan_table(&pipeline.config, "campaign_metrics")
        .await
        .iter()
        .map(|b| b.num_rows() as f64)
        .sum();
    assert_eq!(
        samples["campaign_pipeline_rows_written_total{table=\"campaign_metrics\"}"],
        windows
    );
    let dead: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("campaign_pipeline_dead_letters_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        dead as usize,
        read_topic(&pipeline.brokers, &pipeline.dlq_topic).len()
    );
    assert_eq!(dead + events_rows, 20000.0);
    assert!(samples.contains_key("campaign_pipeline_late_events_total"));
    assert!(samples["campaign_pipeline_commit_seconds_count"] >= 1.0);
    // The events end at the present: the watermark trails the clock by the allowed lateness
    // and the time the test has taken, neither stalled nor ahead.
    let delay = samples["campaign_pipeline_watermark_delay_seconds"];
    assert!((10.0..600.0).contains(&delay), "{delay}");
    let health: serde_json::Value =
        serde_json::from_str(&get(port, "/api/health").expect("health").1).unwrap();
    let shown = health["watermark_delay_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("{health}"));
    assert!(shown >= delay && shown < 600.0, "{shown} after {delay}");
    // The only runner of the group holds every partition, and says so.
    assert_eq!(
        health["partitions"],
        serde_json::json!([0, 1, 2]),
        "{health}"
    );
    assert_eq!(samples["campaign_pipeline_partitions_held"], 3.0);
    drop(runner);
}
