//! Says what the sink waits for when the catalog or the object store stops answering: their
//! clients retry on their own (a SQL catalog's pool waits up to 30 s for a connection, the
//! object store client retries each request), and without this the runner would just go quiet.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long an operation may take before the log says it is waiting, and how often it says so.
const QUIET_FOR: Duration = Duration::from_secs(5);

/// Awaits `operation`, logging a warning every [`QUIET_FOR`] while it has not finished.
pub async fn logged<T>(what: impl Fn() -> String, operation: impl Future<Output = T>) -> T {
    logged_every(QUIET_FOR, what, operation).await
}

async fn logged_every<T>(
    every: Duration,
    what: impl Fn() -> String,
    operation: impl Future<Output = T>,
) -> T {
    let started = Instant::now();
    let mut operation = std::pin::pin!(operation);
    loop {
        match tokio::time::timeout(every, &mut operation).await {
            Ok(done) => {
                if started.elapsed() >= every {
                    tracing::info!(
                        "{}: done after {:.1} s",
                        what(),
                        started.elapsed().as_secs_f64()
                    );
                }
                return done;
            }
            Err(_) => tracing::warn!(
                "{}: waiting for the catalog or the object store for {:.0} s",
                what(),
                started.elapsed().as_secs_f64()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_operation_is_awaited_to_its_end() {
        let slow = async {
            tokio::time::sleep(Duration::from_millis(35)).await;
            7
        };
        let every = Duration::from_millis(10);
        assert_eq!(logged_every(every, || "slow".to_string(), slow).await, 7);
    }
}
