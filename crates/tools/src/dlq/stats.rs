//! Statistics over dead letters: totals by category and reason, folded error patterns, counts by
//! source partition and a per-minute histogram; repeats of a source coordinate count once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use super::entry::{preview, Entry, Filter, Letter, Unreadable, UNREADABLE};
use super::pattern::pattern_of;

/// How many patterns, reasons and unreadable examples a report shows.
const TOP: usize = 10;

/// One error pattern with its count and an example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatternCount {
    /// The reason with its variable parts folded.
    pub pattern: String,
    /// Its category.
    pub category: String,
    /// Distinct dead letters with this pattern.
    pub count: u64,
    /// The first reason seen with this pattern.
    pub example: String,
    /// That dead letter's payload, shortened.
    pub example_payload: String,
}

/// A statistics report.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct DlqStats {
    /// Messages read from the topic that passed the filter (repeats and unreadable included).
    pub messages: u64,
    /// Distinct dead letters: messages with a source coordinate not seen before, plus unreadable.
    pub total: u64,
    /// Messages whose source coordinate had been seen already (a runner restarted after
    /// writing them and before committing), counted once.
    pub repeats: u64,
    /// Distinct dead letters that were replays (`dlq replay`) failing again.
    pub replays_failed_again: u64,
    /// Distinct dead letters by category (`unreadable` for messages not in the DLQ format).
    pub by_category: BTreeMap<String, u64>,
    /// The most frequent reasons, exactly as given.
    pub top_reasons: Vec<(String, u64)>,
    /// The most frequent error patterns.
    pub top_patterns: Vec<PatternCount>,
    /// Distinct dead letters by source `topic/partition`.
    pub by_source_partition: BTreeMap<String, u64>,
    /// Distinct dead letters by the minute they failed (`YYYY-MM-DDTHH:MMZ`).
    pub per_minute: BTreeMap<String, u64>,
    /// Unreadable messages, the first few.
    pub unreadable: Vec<Unreadable>,
    /// Earliest and latest failure time seen.
    pub first_failed_at: Option<String>,
    /// Latest failure time seen.
    pub last_failed_at: Option<String>,
}

/// Accumulates entries into a [`DlqStats`].
#[derive(Debug, Default)]
pub struct StatsBuilder {
    filter: Filter,
    seen: HashSet<String>,
    messages: u64,
    repeats: u64,
    replays_failed_again: u64,
    by_category: BTreeMap<String, u64>,
    by_reason: HashMap<String, u64>,
    patterns: HashMap<String, PatternCount>,
    by_source_partition: BTreeMap<String, u64>,
    per_minute: BTreeMap<String, u64>,
    unreadable: Vec<Unreadable>,
    first_failed_at: Option<String>,
    last_failed_at: Option<String>,
}

impl StatsBuilder {
    /// A builder counting only what `filter` passes.
    pub fn new(filter: Filter) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }

    /// Counts one entry; returns the category it was counted under, or `None` when the filter
    /// dropped it or it repeats a coordinate already counted.
    pub fn add(&mut self, entry: &Entry) -> Option<String> {
        match entry {
            Entry::Letter(letter) => self.add_letter(letter),
            Entry::Unreadable(unreadable) => {
                if !self.filter.matches_unreadable(unreadable) {
                    return None;
                }
                self.messages += 1;
                *self.by_category.entry(UNREADABLE.into()).or_default() += 1;
                if self.unreadable.len() < TOP {
                    self.unreadable.push(unreadable.clone());
                }
                Some(UNREADABLE.into())
            }
        }
    }

    fn add_letter(&mut self, letter: &Letter) -> Option<String> {
        if !self.filter.matches(letter) {
            return None;
        }
        self.messages += 1;
        if !self.seen.insert(letter.coordinate()) {
            self.repeats += 1;
            return None;
        }
        let record = &letter.record;
        self.replays_failed_again += u64::from(record.replay_of.is_some());
        *self.by_category.entry(record.category.clone()).or_default() += 1;
        *self.by_reason.entry(record.error.clone()).or_default() += 1;
        let pattern = pattern_of(&record.error);
        self.patterns
            .entry(pattern.clone())
            .or_insert_with(|| PatternCount {
                pattern,
                category: record.category.clone(),
                count: 0,
                example: record.error.clone(),
                example_payload: preview(record.payload.as_bytes()),
            })
            .count += 1;
        let source = format!("{}/{}", record.source.topic, record.source.partition);
        *self.by_source_partition.entry(source).or_default() += 1;
        if let Some(failed_at) = letter.failed_at() {
            let minute = failed_at.format("%Y-%m-%dT%H:%MZ").to_string();
            *self.per_minute.entry(minute).or_default() += 1;
            let text = failed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            if self.first_failed_at.as_ref().is_none_or(|f| &text < f) {
                self.first_failed_at = Some(text.clone());
            }
            if self.last_failed_at.as_ref().is_none_or(|l| &text > l) {
                self.last_failed_at = Some(text);
            }
        }
        Some(record.category.clone())
    }

    /// The report so far.
    pub fn report(&self) -> DlqStats {
        let mut reasons: Vec<(String, u64)> = self
            .by_reason
            .iter()
            .map(|(reason, count)| (reason.clone(), *count))
            .collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        reasons.truncate(TOP);
        let mut patterns: Vec<PatternCount> = self.patterns.values().cloned().collect();
        patterns.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.pattern.cmp(&b.pattern))
        });
        patterns.truncate(TOP);
        DlqStats {
            messages: self.messages,
            total: self.by_category.values().sum(),
            repeats: self.repeats,
            replays_failed_again: self.replays_failed_again,
            by_category: self.by_category.clone(),
            top_reasons: reasons,
            top_patterns: patterns,
            by_source_partition: self.by_source_partition.clone(),
            per_minute: self.per_minute.clone(),
            unreadable: self.unreadable.clone(),
            first_failed_at: self.first_failed_at.clone(),
            last_failed_at: self.last_failed_at.clone(),
        }
    }
}

impl DlqStats {
    /// The report as text tables for a terminal.
    pub fn render(&self, topic: &str) -> String {
        let mut out = String::new();
        if self.messages == 0 {
            let _ = writeln!(out, "{topic}: no dead letters");
            return out;
        }
        let _ = writeln!(
            out,
            "{topic}: {} dead letters ({} messages, {} repeats of a source offset counted once)",
            self.total, self.messages, self.repeats
        );
        if self.replays_failed_again > 0 {
            let _ = writeln!(
                out,
                "{} of them are replays (dlq replay) that failed again",
                self.replays_failed_again
            );
        }
        if let (Some(first), Some(last)) = (&self.first_failed_at, &self.last_failed_at) {
            let _ = writeln!(out, "failed between {first} and {last}");
        }
        section(&mut out, "by category", ["category", "count"], {
            let mut rows: Vec<_> = self.by_category.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
            rows.into_iter()
                .map(|(c, n)| vec![c.clone(), n.to_string()])
                .collect()
        });
        section(
            &mut out,
            "top error patterns",
            ["count", "pattern", "example"],
            self.top_patterns
                .iter()
                .map(|p| vec![p.count.to_string(), p.pattern.clone(), p.example.clone()])
                .collect(),
        );
        section(
            &mut out,
            "top reasons",
            ["count", "reason"],
            self.top_reasons
                .iter()
                .map(|(r, n)| vec![n.to_string(), r.clone()])
                .collect(),
        );
        section(
            &mut out,
            "by source partition",
            ["partition", "count"],
            self.by_source_partition
                .iter()
                .map(|(p, n)| vec![p.clone(), n.to_string()])
                .collect(),
        );
        let peak = self.per_minute.values().copied().max().unwrap_or(1).max(1);
        section(
            &mut out,
            "per minute",
            ["minute", "count", ""],
            self.per_minute
                .iter()
                .map(|(m, n)| {
                    let bar = "#".repeat(((n * 40).div_ceil(peak)) as usize);
                    vec![m.clone(), n.to_string(), bar]
                })
                .collect(),
        );
        if !self.unreadable.is_empty() {
            section(
                &mut out,
                "unreadable messages (first few)",
                ["at", "why", "starts with"],
                self.unreadable
                    .iter()
                    .map(|u| {
                        vec![
                            format!("{}@{}", u.dlq.partition, u.dlq.offset),
                            u.reason.clone(),
                            u.preview.clone(),
                        ]
                    })
                    .collect(),
            );
        }
        out
    }
}

/// Appends a titled, left-aligned text table.
fn section<const N: usize>(
    out: &mut String,
    title: &str,
    header: [&str; N],
    rows: Vec<Vec<String>>,
) {
    if rows.is_empty() {
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let _ = writeln!(out, "\n{title}");
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        text.trim_end().to_string()
    };
    let _ = writeln!(out, "  {}", line(header.to_vec()));
    for row in &rows {
        let _ = writeln!(out, "  {}", line(row.iter().map(String::as_str).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::record::{DeadLetter, SourceCoordinates};

    fn letter(error: &str, offset: i64, minute: u32) -> Entry {
        let source = SourceCoordinates {
            topic: "t".into(),
            partition: (offset % 3) as i32,
            offset,
            timestamp: None,
        };
        let at = format!("2026-11-26T10:{minute:02}:30Z");
        Entry::Letter(Box::new(Letter {
            record: DeadLetter::new(error, b"{}", source, "p", &at),
            key: None,
            key_encoding: crate::dlq::PayloadEncoding::Text,
            dlq: None,
        }))
    }

    #[test]
    fn counts_fold_patterns_and_count_repeats_once() {
        let mut builder = StatsBuilder::new(Filter::default());
        for i in 0..100 {
            builder.add(&letter(&format!("bad timestamp: x{i}"), i, (i % 2) as u32));
        }
        builder.add(&letter("bad timestamp: x0", 0, 0));
        builder.add(&letter("late", 500, 1));
        let stats = builder.report();
        assert_eq!(stats.messages, 102);
        assert_eq!(stats.total, 101);
        assert_eq!(stats.repeats, 1);
        assert_eq!(stats.by_category["bad_timestamp"], 100);
        assert_eq!(stats.top_patterns[0].pattern, "bad timestamp: <value>");
        assert_eq!(stats.top_patterns[0].count, 100);
        assert_eq!(stats.top_patterns[0].example, "bad timestamp: x0");
        assert_eq!(stats.per_minute["2026-11-26T10:00Z"], 50);
        assert_eq!(stats.per_minute["2026-11-26T10:01Z"], 51);
        assert_eq!(stats.by_source_partition.values().sum::<u64>(), 101);
        let text = stats.render("dlq");
        assert!(text.contains("bad timestamp: <value>"), "{text}");
    }

    #[test]
    fn filters_apply_before_counting() {
        let mut builder = StatsBuilder::new(Filter {
            category: Some("late".into()),
            ..Filter::default()
        });
        builder.add(&letter("bad timestamp: x", 1, 0));
        builder.add(&letter("late", 2, 0));
        assert_eq!(builder.report().by_category.len(), 1);
        assert_eq!(builder.report().total, 1);
    }
}
