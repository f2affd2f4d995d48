//! Line charts drawn as SVG on the server: one line per campaign over the windows, so the page
//! needs no chart library and works without internet access.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 36.0;
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// An SVG chart of `metric` per campaign over the windows in `rows` (as `/api/windows` gives).
pub fn render(rows: &[Value], metric: &str) -> String {
    let mut starts: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["window_start"].as_str())
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let mut lines: BTreeMap<&str, Vec<(usize, f64)>> = BTreeMap::new();
    for row in rows {
        let (Some(campaign), Some(start)) =
            (row["campaign_id"].as_str(), row["window_start"].as_str())
        else {
            continue;
        };
        let (Some(x), Some(y)) = (starts.binary_search(&start).ok(), row[metric].as_f64()) else {
            continue;
        };
        lines.entry(campaign).or_default().push((x, y));
    }
    let max = lines
        .values()
        .flatten()
        .map(|(_, y)| *y)
        .fold(0.0_f64, f64::max);
    let top = nice_ceiling(max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |i: usize| LEFT + plot_w * i as f64 / (starts.len().max(2) - 1) as f64;
    let y_of = |v: f64| TOP + plot_h * (1.0 - v / top);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{metric} per campaign" data-points="{points}" font-family="sans-serif" font-size="11">"#,
        points = lines.values().map(Vec::len).sum::<usize>()
    );
    for step in 0..=4 {
        let v = top * step as f64 / 4.0;
        let y = y_of(v);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            x2 = WIDTH - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0,
            label = format_value(v, metric)
        );
    }
    for (i, label) in [
        (0, starts.first()),
        (starts.len().saturating_sub(1), starts.last()),
    ] {
        if let Some(label) = label {
            let anchor = if i == 0 { "start" } else { "end" };
            let _ = write!(
                svg,
                r#"<text x="{x:.1}" y="{y}" text-anchor="{anchor}">{text}</text>"#,
                x = x_of(i),
                y = HEIGHT - 12.0,
                text = short_time(label)
            );
        }
    }
    if lines.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{y}" text-anchor="middle">no closed windows yet</text>"#,
            x = LEFT + plot_w / 2.0,
            y = TOP + plot_h / 2.0
        );
    }
    for (n, (campaign, points)) in lines.iter().enumerate() {
        let color = COLORS[n % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", x_of(*x), y_of(*y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="series" data-campaign="{campaign}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = TOP + 14.0 * n as f64 + 6.0;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{ry:.1}" width="10" height="10" fill="{color}"/><text x="{tx}" y="{ty:.1}">{campaign}</text>"#,
            x = WIDTH - RIGHT + 10.0,
            ry = ly - 8.0,
            tx = WIDTH - RIGHT + 24.0,
            ty = ly + 1.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// 1, 2 or 5 times a power of ten at or above `v` (at least 1).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * power)
}

fn format_value(v: f64, metric: &str) -> String {
    match metric {
        "revenue" => format!("{v:.0}"),
        _ => format!("{v:.1}%"),
    }
}

/// `HH:MM` of an RFC 3339 time, or the text as it is.
fn short_time(text: &str) -> String {
    text.get(11..16).unwrap_or(text).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn one_line_per_campaign_with_a_point_per_window() {
        let rows = vec![
            json!({"campaign_id": "a", "window_start": "2026-01-01T00:00:00Z", "ctr_percent": 10.0}),
            json!({"campaign_id": "a", "window_start": "2026-01-01T00:01:00Z", "ctr_percent": 12.0}),
            json!({"campaign_id": "b", "window_start": "2026-01-01T00:01:00Z", "ctr_percent": null}),
        ];
        let svg = super::render(&rows, "ctr_percent");
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains(r#"data-points="2""#));
        assert!(svg.contains("00:00") && svg.contains("00:01"));
        assert_eq!(super::nice_ceiling(12.0), 20.0);
    }
}
