//! Repeated errors, summarized: while a broker is down librdkafka reports every reconnect
//! attempt of every client, hundreds of lines in seconds that bury what matters. An error of a
//! kind is logged the first time; while it keeps coming, one line per interval counts the
//! repeats; when the clients work again one line says how long the trouble lasted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How often a continuing kind of error is summarized.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(30);

/// How long a kind of error must have stopped before a sign of health ends its episode: a
/// connection can be up while another request keeps failing, and that must stay one episode.
pub const QUIET: Duration = Duration::from_secs(5);

/// One kind of error while it keeps coming.
#[derive(Debug)]
struct Episode {
    started: Instant,
    summarized: Instant,
    since_summary: u64,
    total: u64,
    last: String,
    last_at: Instant,
}

/// The open episodes of repeated errors, by kind.
#[derive(Debug)]
pub struct RepeatedErrors {
    episodes: Mutex<BTreeMap<String, Episode>>,
    /// Open episodes, so that [`Self::recovered`] costs one load when there are none.
    open: AtomicUsize,
    interval: Duration,
}

/// The process's repeated-error log, shared by every Kafka client.
pub fn repeated_errors() -> &'static RepeatedErrors {
    static GLOBAL: OnceLock<RepeatedErrors> = OnceLock::new();
    GLOBAL.get_or_init(|| RepeatedErrors::new(SUMMARY_INTERVAL))
}

impl RepeatedErrors {
    /// An empty log summarizing every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            episodes: Mutex::new(BTreeMap::new()),
            open: AtomicUsize::new(0),
            interval,
        }
    }

    /// Reports an error of `kind` (for example a librdkafka error code): logged when it is the
    /// first of its kind since the last recovery, else counted and summarized once per
    /// interval. Returns whether it was logged.
    pub fn error(&self, kind: &str, message: &str) -> bool {
        self.error_at(kind, message, Instant::now())
    }

    fn error_at(&self, kind: &str, message: &str, now: Instant) -> bool {
        let mut episodes = self.episodes.lock().unwrap_or_else(PoisonError::into_inner);
        match episodes.get_mut(kind) {
            None => {
                episodes.insert(
                    kind.to_string(),
                    Episode {
                        started: now,
                        summarized: now,
                        since_summary: 0,
                        total: 1,
                        last: message.to_string(),
                        last_at: now,
                    },
                );
                self.open.store(episodes.len(), Ordering::Relaxed);
                tracing::error!(
                    kind,
                    "{message} (repeats are summarized every {}s until it recovers)",
                    self.interval.as_secs()
                );
                true
            }
            Some(episode) => {
                episode.total += 1;
                episode.since_summary += 1;
                episode.last_at = now;
                episode.last.clear();
                episode.last.push_str(message);
                if now.duration_since(episode.summarized) < self.interval {
                    return false;
                }
                tracing::warn!(
                    kind,
                    "{} more in the last {}s, for {}s now; the last: {}",
                    episode.since_summary,
                    now.duration_since(episode.summarized).as_secs(),
                    now.duration_since(episode.started).as_secs(),
                    episode.last
                );
                episode.summarized = now;
                episode.since_summary = 0;
                true
            }
        }
    }

    /// A client just worked: ends every episode whose errors stopped at least [`QUIET`] ago,
    /// logging for each how long it lasted.
    pub fn recovered(&self) {
        // Called for every message read: the usual case (nothing failing) reads no clock.
        if self.open.load(Ordering::Relaxed) > 0 {
            self.recovered_at(Instant::now());
        }
    }

    fn recovered_at(&self, now: Instant) {
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut episodes = self.episodes.lock().unwrap_or_else(PoisonError::into_inner);
        episodes.retain(|kind, episode| {
            if now.duration_since(episode.last_at) < QUIET {
                return true;
            }
            tracing::info!(
                kind,
                "recovered after {}s ({} errors of this kind)",
                now.duration_since(episode.started).as_secs(),
                episode.total
            );
            false
        });
        self.open.store(episodes.len(), Ordering::Relaxed);
    }

    /// Kinds of error still coming.
    #[cfg(test)]
    fn open_kinds(&self) -> Vec<String> {
        let episodes = self.episodes.lock().unwrap_or_else(PoisonError::into_inner);
        episodes.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_error_is_logged_repeats_are_summarized_once_per_interval() {
        let log = RepeatedErrors::new(Duration::from_secs(30));
        let start = Instant::now();
        assert!(log.error_at("transport", "connect failed", start));
        let logged = (1..=100)
            .filter(|i| {
                log.error_at(
                    "transport",
                    "connect failed",
                    start + Duration::from_millis(i * 400),
                )
            })
            .count();
        assert_eq!(logged, 1, "40 s of repeats: one summary at 30 s");
        assert!(
            log.error_at("timeout", "request timed out", start),
            "another kind"
        );
        assert_eq!(log.open_kinds(), ["timeout", "transport"]);
        // The transport errors went on until 40 s; the timeout stopped at the start.
        log.recovered_at(start + Duration::from_secs(42));
        assert_eq!(log.open_kinds(), ["transport"], "still failing 2 s ago");
        log.recovered_at(start + Duration::from_secs(46));
        assert!(log.open_kinds().is_empty());
        assert!(
            log.error_at("transport", "connect failed", start),
            "a new episode"
        );
    }
}
