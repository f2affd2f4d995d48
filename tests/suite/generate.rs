//! `generate` against a real broker: reproducible payloads, campaign_id keys, and a truth file
//! that matches what was actually sent.

use crate::common;

use std::collections::BTreeMap;

use campaign_pipeline::generator::event::{CampaignEvent, EVENT_TYPES};
use campaign_pipeline::generator::truth::Counts;
use campaign_pipeline::generator::Truth;
use common::{read_topic, text, Record, TestPipeline};

fn generate(pipeline: &TestPipeline, extra: &[&str]) -> Vec<Record> {
    let setup = pipeline.cli(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let mut args = vec!["generate"];
    args.extend_from_slice(extra);
    let output = pipeline.cli(&args);
    assert!(output.status.success(), "{}", text(&output));
    read_topic(&pipeline.brokers, &pipeline.topic)
}

/// The event a payload carries when it passes the shipped validation rules.
fn valid_event(payload: &[u8]) -> Option<CampaignEvent> {
    let event: CampaignEvent = serde_json::from_slice(payload).ok()?;
    let ok = !event.event_id.is_empty()
        && !event.user_id.is_empty()
        && !event.campaign_id.is_empty()
        && EVENT_TYPES.contains(&event.event_type.as_str())
        && chrono::DateTime::parse_from_rfc3339(&event.timestamp).is_ok()
        && event.revenue >= 0.0;
    ok.then_some(event)
}

#[test]
fn same_seed_gives_identical_payloads_keyed_by_campaign() {
    let args = [
        "--count",
        "10000",
        "--seed",
        "7",
        "--start-time",
        "2026-01-01T00:00:00Z",
        "--invalid-ratio",
        "0.05",
        "--out-of-order-ratio",
        "0.05",
        "--late-ratio",
        "0.05",
    ];
    let first = generate(&TestPipeline::new(), &args);
    let second = generate(&TestPipeline::new(), &args);
    assert_eq!(first.len(), 10_000);
    // Partitioning follows the key, so equal keys and payloads land identically.
    assert_eq!(first, second, "same seed must give the same records");

    let partitions: std::collections::HashSet<i32> = first.iter().map(|r| r.partition).collect();
    assert_eq!(
        partitions.len(),
        3,
        "10 campaigns spread over the 3 partitions"
    );
    let mut checked = 0;
    for record in &first {
        if let Some(event) = valid_event(&record.payload) {
            assert_eq!(record.key.as_deref(), Some(event.campaign_id.as_bytes()));
            checked += 1;
        } else {
            let key =
                String::from_utf8(record.key.clone().expect("every record has a key")).unwrap();
            assert!(key.starts_with("campaign_"), "{key}");
        }
    }
    assert!(checked > 9_000, "{checked}");

    let other_seed = generate(&TestPipeline::new(), &["--count", "100", "--seed", "8"]);
    assert_ne!(
        first[..100],
        other_seed[..],
        "another seed gives other events"
    );
}

#[test]
fn truth_file_matches_what_was_sent() {
    let pipeline = TestPipeline::new();
    let truth_path = pipeline.dir.path().join("truth.json");
    let records = generate(
        &pipeline,
        &[
            "--count",
            "10000",
            "--seed",
            "11",
            "--campaigns",
            "5",
            "--invalid-ratio",
            "0.1",
            "--out-of-order-ratio",
            "0.1",
            "--late-ratio",
            "0.1",
            "--truth",
            truth_path.to_str().unwrap(),
        ],
    );
    let truth: Truth = serde_json::from_slice(&std::fs::read(&truth_path).unwrap()).unwrap();
    assert_eq!(truth.records, 10_000);
    assert_eq!(records.len(), 10_000);

    let valid: Vec<CampaignEvent> = records
        .iter()
        .filter_map(|r| valid_event(&r.payload))
        .collect();
    assert_eq!(truth.valid_events, valid.len() as u64);
    assert_eq!(truth.invalid_events, 10_000 - valid.len() as u64);
    assert_eq!(
        truth.invalid_by_kind.values().sum::<u64>(),
        truth.invalid_events
    );
    for kind in [
        "broken_json",
        "missing_field",
        "wrong_type",
        "unknown_event_type",
        "negative_revenue",
        "bad_timestamp",
        "non_utf8",
    ] {
        assert!(
            truth.invalid_by_kind.get(kind).copied().unwrap_or(0) > 50,
            "{kind}: {:?}",
            truth.invalid_by_kind
        );
    }
    let non_utf8 = records
        .iter()
        .filter(|r| std::str::from_utf8(&r.payload).is_err())
        .count();
    assert_eq!(truth.invalid_by_kind["non_utf8"], non_utf8 as u64);

    let mut per_campaign: BTreeMap<String, Counts> = BTreeMap::new();
    for event in &valid {
        let counts = per_campaign.entry(event.campaign_id.clone()).or_default();
        match event.event_type.as_str() {
            "impression" => counts.impressions += 1,
            "click" => counts.clicks += 1,
            _ => {
                counts.conversions += 1;
                counts.revenue_cents += (event.revenue * 100.0).round() as i64;
            }
        }
        if event.event_type != "conversion" {
            assert_eq!(event.revenue, 0.0, "revenue only on conversions");
        }
    }
    assert_eq!(truth.campaigns, per_campaign);
    assert_eq!(per_campaign.len(), 5);
    let totals = per_campaign.values().fold(Counts::default(), |mut t, c| {
        t.impressions += c.impressions;
        t.clicks += c.clicks;
        t.conversions += c.conversions;
        t
    });
    assert!(totals.impressions > 5 * totals.clicks, "{totals:?}");
    assert!(totals.clicks > 2 * totals.conversions, "{totals:?}");
    assert!(totals.conversions > 0, "{totals:?}");

    // Windows hold the on-time and out-of-order events; late ones are only in the totals.
    let windowed: u64 = truth
        .windows
        .iter()
        .map(|w| w.counts.impressions + w.counts.clicks + w.counts.conversions)
        .sum();
    assert_eq!(windowed, truth.valid_events - truth.late_events);
    assert!(
        truth.late_events > 0 && truth.out_of_order_events > 0,
        "{truth:?}"
    );
    for w in &truth.windows {
        assert_eq!((w.window_end - w.window_start).num_seconds(), 60);
        let expected = (w.counts.impressions > 0)
            .then(|| w.counts.clicks as f64 / w.counts.impressions as f64 * 100.0);
        match (w.ctr_percent, expected) {
            (Some(got), Some(want)) => assert!((got - want).abs() < 1e-9, "{got} vs {want}"),
            (got, want) => assert_eq!(got, want),
        }
    }
}

#[test]
fn event_times_end_at_the_present_by_default() {
    let before = chrono::Utc::now();
    let records = generate(&TestPipeline::new(), &["--count", "2000", "--seed", "3"]);
    let after = chrono::Utc::now();
    let times: Vec<chrono::DateTime<chrono::Utc>> = records
        .iter()
        .filter_map(|r| valid_event(&r.payload))
        .map(|e| e.timestamp.parse().unwrap())
        .collect();
    let last = times.iter().max().unwrap();
    let first = times.iter().min().unwrap();
    // 2,000 events 10 ms apart: 20 s of event time ending when the command ran.
    assert!(
        *last >= before && *last <= after,
        "{last} not in {before}..{after}"
    );
    assert!(
        *last - *first >= chrono::TimeDelta::seconds(19),
        "{first}..{last}"
    );
}
