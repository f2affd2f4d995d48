//! What an idle producer costs: the CPU its delivery-report thread spends while nothing is
//! sent, for the product's producer against rdkafka's `FutureProducer` in the same run. Every
//! runner keeps a dead letter producer alive however quiet its topic.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

use crate::kafka::client_log::ClientLog;
use crate::kafka::polled_producer::DELIVERY_THREAD;
use crate::kafka::{idempotent_producer, idempotent_settings};
use crate::threads::{named_threads, NamedThread};

/// The first 15 bytes (what the kernel keeps) of the name of `FutureProducer`'s thread.
const FUTURE_PRODUCER_THREAD: &str = "producer pollin";

/// Lets both producers start and connect before their idle time is counted.
const SETTLE: Duration = Duration::from_secs(1);

/// Measures both producers side by side over `seconds`.
pub async fn measure(
    client: &ClientConfig,
    seconds: u64,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let existing: HashSet<u32> = named_threads().iter().map(|t| t.tid).collect();
    let ours = idempotent_producer(client, "idle producer")?;
    let theirs: FutureProducer<ClientLog> =
        idempotent_settings(client).create_with_context(ClientLog)?;
    tokio::time::sleep(SETTLE).await;
    let new_threads = || -> Vec<NamedThread> {
        named_threads()
            .into_iter()
            .filter(|t| !existing.contains(&t.tid))
            .collect()
    };
    let start = new_threads();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let end = new_threads();
    let spent = |name: &str| -> Duration {
        end.iter()
            .filter(|t| t.name == name)
            .map(|t| {
                let before = start.iter().find(|s| s.tid == t.tid).map(|s| s.cpu);
                t.cpu.saturating_sub(before.unwrap_or(t.cpu))
            })
            .sum()
    };
    let per_second = |d: Duration| d.as_secs_f64() * 1e3 / seconds.max(1) as f64;
    let (ours_ms, theirs_ms) = (
        per_second(spent(DELIVERY_THREAD)),
        per_second(spent(FUTURE_PRODUCER_THREAD)),
    );
    drop((ours, theirs));
    row(
        "baseline: idle rdkafka FutureProducer, its polling thread's CPU",
        format!("{theirs_ms:.2} ms per second"),
    );
    row(
        "idle producer (dead letters, collector), its delivery thread's CPU",
        format!(
            "{ours_ms:.2} ms per second, {:.2}x the baseline's",
            ours_ms / theirs_ms.max(1e-9)
        ),
    );
    Ok(())
}
