//! CPU time spent by one piece of work, read from the clock of the thread that runs it. A
//! future is timed poll by poll: a task may move between a runtime's threads between two
//! polls, never during one, so the sum is the future's own CPU time (not what other tasks ran
//! meanwhile). What it spawns is not counted.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// CPU time this thread has used so far.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the struct it is given.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Runs `work` and returns what it returned with the CPU time it took.
pub fn measure<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let before = thread_cpu();
    let value = work();
    (value, thread_cpu().saturating_sub(before))
}

/// `future`, which resolves to its output and the CPU time its polls took.
pub fn timed<F: Future>(future: F) -> OnCpu<F> {
    OnCpu {
        future,
        spent: Duration::ZERO,
    }
}

pin_project_lite::pin_project! {
    /// A future whose polls are timed: see [`timed`].
    pub struct OnCpu<F> {
        #[pin]
        future: F,
        spent: Duration,
    }
}

impl<F: Future> Future for OnCpu<F> {
    type Output = (F::Output, Duration);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let before = thread_cpu();
        let polled = this.future.poll(cx);
        *this.spent += thread_cpu().saturating_sub(before);
        let spent = *this.spent;
        polled.map(|output| (output, spent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(for_at_least: Duration) -> u64 {
        let start = thread_cpu();
        let mut x = 0_u64;
        while thread_cpu() - start < for_at_least {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        x
    }

    #[tokio::test]
    async fn a_future_counts_its_own_polls_and_not_its_waits() {
        let wait = Duration::from_millis(300);
        let (_, spent) = timed(async {
            spin(Duration::from_millis(20));
            // Waiting costs no CPU of this future.
            tokio::time::sleep(wait).await;
            spin(Duration::from_millis(20))
        })
        .await;
        assert!(spent >= Duration::from_millis(40), "{spent:?}");
        // Had the wait been counted, it alone would pass this.
        assert!(spent < wait, "{spent:?}");
        let (_, spent) = measure(|| spin(Duration::from_millis(10)));
        assert!(spent >= Duration::from_millis(10), "{spent:?}");
    }
}
