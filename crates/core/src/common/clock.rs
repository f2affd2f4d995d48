//! Where the runner reads time: the system's clocks in production, a simulated clock that only
//! moves when told in the deterministic simulation tests.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

/// The runner's time: a monotonic clock for intervals, a wall clock for event-time limits and
/// dead letter stamps, and waiting.
pub trait Clock: Send + Sync + Debug {
    /// The monotonic clock now.
    fn now(&self) -> Instant;
    /// The wall clock now, in microseconds since the epoch.
    fn wall_micros(&self) -> i64;
    /// Waits `duration` on this clock.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_micros(&self) -> i64 {
        chrono::Utc::now().timestamp_micros()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A wall-clock reading as dead letters stamp it (RFC 3339, milliseconds, UTC).
pub fn wall_text(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
