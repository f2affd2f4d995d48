//! The live view of `dlq monitor`: the statistics of everything read, plus what arrived while
//! the monitor ran (rates per category over the last minute, the newest examples).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::entry::{preview, Entry, Filter};
use super::stats::{DlqStats, StatsBuilder};

/// How many newest examples the view keeps.
const NEWEST: usize = 5;
/// The window of the rates.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// One recent dead letter, for the "newest" list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    /// Its category.
    pub category: String,
    /// Its reason.
    pub error: String,
    /// Its payload, shortened.
    pub payload: String,
}

/// The summary a monitor ends with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitorSummary {
    /// How long it followed the topic, in seconds.
    pub seconds: f64,
    /// Distinct dead letters that arrived while it ran, by category.
    pub new_by_category: BTreeMap<String, u64>,
    /// The newest dead letters, newest first.
    pub newest: Vec<Example>,
    /// Statistics over everything read (the backlog and the new arrivals).
    pub stats: DlqStats,
}

/// The monitor's state.
pub struct Monitor {
    stats: StatsBuilder,
    started: Instant,
    caught_up: bool,
    recent: VecDeque<(Instant, String)>,
    new_by_category: BTreeMap<String, u64>,
    newest: VecDeque<Example>,
}

impl Monitor {
    /// A monitor counting what `filter` passes.
    pub fn new(filter: Filter) -> Self {
        Self {
            stats: StatsBuilder::new(filter),
            started: Instant::now(),
            caught_up: false,
            recent: VecDeque::new(),
            new_by_category: BTreeMap::new(),
            newest: VecDeque::new(),
        }
    }

    /// Marks the end of the backlog: what comes next counts as new.
    pub fn caught_up(&mut self) {
        self.caught_up = true;
    }

    /// Counts one entry.
    pub fn add(&mut self, entry: &Entry) {
        let Some(category) = self.stats.add(entry) else {
            return;
        };
        let example = match entry {
            Entry::Letter(letter) => Example {
                category: category.clone(),
                error: letter.record.error.clone(),
                payload: preview(letter.record.payload.as_bytes()),
            },
            Entry::Unreadable(u) => Example {
                category: category.clone(),
                error: u.reason.clone(),
                payload: u.preview.clone(),
            },
        };
        self.newest.push_front(example);
        self.newest.truncate(NEWEST);
        if self.caught_up {
            *self.new_by_category.entry(category.clone()).or_default() += 1;
            self.recent.push_back((Instant::now(), category));
        }
    }

    /// New dead letters per minute by category, over the last minute.
    fn rates(&mut self) -> BTreeMap<String, f64> {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
        let window = now
            .duration_since(self.started)
            .min(RATE_WINDOW)
            .as_secs_f64();
        let mut rates = BTreeMap::new();
        for (_, category) in &self.recent {
            *rates.entry(category.clone()).or_default() += 1.0;
        }
        for rate in rates.values_mut() {
            *rate *= 60.0 / window.max(1.0);
        }
        rates
    }

    /// The live screen: rates, newest examples, then the statistics.
    pub fn screen(&mut self, topic: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "dlq monitor: {topic}, following for {:.0}s{}",
            self.started.elapsed().as_secs_f64(),
            if self.caught_up {
                ""
            } else {
                " (reading the backlog)"
            }
        );
        let rates = self.rates();
        if rates.is_empty() {
            let _ = writeln!(out, "no new dead letters in the last minute");
        } else {
            let _ = writeln!(out, "new dead letters per minute (last minute):");
            for (category, rate) in &rates {
                let _ = writeln!(out, "  {category:<24} {rate:.1}");
            }
        }
        if !self.newest.is_empty() {
            let _ = writeln!(out, "newest:");
            for example in &self.newest {
                let _ = writeln!(
                    out,
                    "  [{}] {} | {}",
                    example.category, example.error, example.payload
                );
            }
        }
        out.push_str(&self.stats.report().render(topic));
        out
    }

    /// The final summary.
    pub fn summary(&self) -> MonitorSummary {
        MonitorSummary {
            seconds: self.started.elapsed().as_secs_f64(),
            new_by_category: self.new_by_category.clone(),
            newest: self.newest.iter().cloned().collect(),
            stats: self.stats.report(),
        }
    }
}

impl MonitorSummary {
    /// The summary as text.
    pub fn render(&self, topic: &str) -> String {
        let new: u64 = self.new_by_category.values().sum();
        let mut out = format!(
            "monitor summary: followed {topic} for {:.1}s; {new} new dead letters while it ran",
            self.seconds
        );
        for (category, count) in &self.new_by_category {
            let _ = write!(out, "\n  {category:<24} {count}");
        }
        out.push_str("\n\n");
        out.push_str(&self.stats.render(topic));
        out
    }
}
