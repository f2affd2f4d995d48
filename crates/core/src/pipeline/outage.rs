//! The schedule on which a runner tries the object store and the catalog again after they
//! failed: exponential backoff, bounded by `commit.retry_for` from the first failure.

use std::time::{Duration, Instant};

/// The first wait after a failure.
const FIRST_WAIT: Duration = Duration::from_millis(500);

/// The longest wait between two attempts: an outage that ends is noticed within this.
const LONGEST_WAIT: Duration = Duration::from_secs(8);

/// An object store or catalog failure being ridden out, from its first error until a commit
/// lands again.
#[derive(Debug, Clone)]
pub struct Outage {
    /// When the first error came.
    pub since: Instant,
    limit: Duration,
    attempts: u32,
    wait: Duration,
}

impl Outage {
    /// An outage that began now and may last `limit`.
    pub fn begin(limit: Duration) -> Self {
        Self {
            since: Instant::now(),
            limit,
            attempts: 0,
            wait: FIRST_WAIT,
        }
    }

    /// How long to wait before the next attempt, doubling up to [`LONGEST_WAIT`]; `None` once
    /// the next attempt would come after `limit`.
    pub fn next_wait(&mut self) -> Option<Duration> {
        let wait = self.wait;
        if self.since.elapsed() + wait > self.limit {
            return None;
        }
        self.attempts += 1;
        self.wait = (wait * 2).min(LONGEST_WAIT);
        Some(wait)
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_longest_and_stop_at_the_limit() {
        let mut outage = Outage::begin(Duration::from_secs(60));
        let secs: Vec<f64> = (0..7)
            .map_while(|_| outage.next_wait())
            .map(|wait| wait.as_secs_f64())
            .collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]);
        assert_eq!(outage.attempts(), 7);
        // The limit counts from the first failure: a wait that would end past it is refused.
        let mut short = Outage::begin(Duration::from_millis(600));
        assert_eq!(short.next_wait(), Some(FIRST_WAIT));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(short.next_wait(), None);
    }
}
