//! campaign_metrics rows as the tests compare them, and the generator truth's windows.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use campaign_pipeline::generator::Truth;

pub const MINUTE: i64 = 60_000_000;

/// One row of campaign_metrics (processed_at left out: it is the time of processing).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub campaign_id: String,
    pub start: i64,
    pub end: i64,
    pub impressions: i64,
    pub clicks: i64,
    pub conversions: i64,
    pub revenue: f64,
    pub ctr: Option<f64>,
    pub cvr: Option<f64>,
    pub extra: Option<f64>,
}

pub fn windows(batches: &[RecordBatch], extra: Option<&str>) -> BTreeMap<(String, i64), Window> {
    let mut out = BTreeMap::new();
    for batch in batches {
        let column = |name: &str, data_type: &DataType| {
            cast(
                batch
                    .column_by_name(name)
                    .unwrap_or_else(|| panic!("{name}")),
                data_type,
            )
            .unwrap()
        };
        let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
        let campaigns = column("campaign_id", &DataType::Utf8);
        let campaigns = campaigns.as_string::<i32>();
        let starts = column("window_start", &micros);
        let starts = starts.as_primitive::<TimestampMicrosecondType>();
        let ends = column("window_end", &micros);
        let ends = ends.as_primitive::<TimestampMicrosecondType>();
        let ints: Vec<_> = ["impressions", "clicks", "conversions"]
            .iter()
            .map(|name| column(name, &DataType::Int64))
            .collect();
        let floats: Vec<_> = ["revenue", "ctr_percent", "cvr_percent"]
            .iter()
            .chain(extra.iter())
            .map(|name| column(name, &DataType::Float64))
            .collect();
        let int = |c: usize, i: usize| ints[c].as_primitive::<Int64Type>().value(i);
        let float = |c: usize, i: usize| {
            let a = floats[c].as_primitive::<Float64Type>();
            a.is_valid(i).then(|| a.value(i))
        };
        for i in 0..batch.num_rows() {
            let window = Window {
                campaign_id: campaigns.value(i).to_string(),
                start: starts.value(i),
                end: ends.value(i),
                impressions: int(0, i),
                clicks: int(1, i),
                conversions: int(2, i),
                revenue: float(0, i).unwrap_or(f64::NAN),
                ctr: float(1, i),
                cvr: float(2, i),
                extra: extra.and_then(|_| float(3, i)),
            };
            let key = (window.campaign_id.clone(), window.start);
            assert!(
                out.insert(key.clone(), window).is_none(),
                "window {key:?} written twice"
            );
        }
    }
    out
}

/// The truth files' windows merged (a window may straddle two generator runs).
pub fn expected(truths: &[Truth]) -> BTreeMap<(String, i64), Window> {
    let mut counts: BTreeMap<(String, i64), (i64, i64, i64, i64)> = BTreeMap::new();
    for truth in truths {
        for w in &truth.windows {
            let entry = counts
                .entry((w.campaign_id.clone(), w.window_start.timestamp_micros()))
                .or_default();
            entry.0 += w.counts.impressions as i64;
            entry.1 += w.counts.clicks as i64;
            entry.2 += w.counts.conversions as i64;
            entry.3 += w.counts.revenue_cents;
        }
    }
    let rate = |a: i64, b: i64| (b > 0).then(|| a as f64 * 100.0 / b as f64);
    counts
        .into_iter()
        .map(
            |((campaign_id, start), (impressions, clicks, conversions, cents))| {
                let window = Window {
                    campaign_id: campaign_id.clone(),
                    start,
                    end: start + MINUTE,
                    impressions,
                    clicks,
                    conversions,
                    revenue: cents as f64 / 100.0,
                    ctr: rate(clicks, impressions),
                    cvr: rate(conversions, clicks),
                    extra: None,
                };
                ((campaign_id, start), window)
            },
        )
        .collect()
}

pub fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        (None, None) => true,
        _ => false,
    }
}

pub fn assert_windows_equal(
    got: &BTreeMap<(String, i64), Window>,
    want: &BTreeMap<(String, i64), Window>,
) {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the same windows: {} of {} missing {missing:?}, {} not expected {:?}",
        missing.len(),
        want.len(),
        extra.len(),
        extra.iter().map(|k| (k, &got[*k])).collect::<Vec<_>>()
    );
    for (key, w) in want {
        let g = &got[key];
        assert_eq!(
            (g.end, g.impressions, g.clicks, g.conversions),
            (w.end, w.impressions, w.clicks, w.conversions),
            "{key:?}"
        );
        assert!(
            close(Some(g.revenue), Some(w.revenue)),
            "{key:?}: {g:?} vs {w:?}"
        );
        assert!(close(g.ctr, w.ctr), "{key:?} ctr: {g:?} vs {w:?}");
        assert!(close(g.cvr, w.cvr), "{key:?} cvr: {g:?} vs {w:?}");
    }
}
