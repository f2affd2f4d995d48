//! Dashboard API latency: 10 concurrent clients repeat the page's refresh (campaigns, totals,
//! three charts, health) against tables the end-to-end benchmark filled.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config::{Config, PipelineConfig};
use crate::pipeline;
use campaign_serve::dashboard;

/// Concurrent clients, as the seed's "10 users".
const CLIENTS: usize = 10;
/// Page refreshes per client.
const ROUNDS: usize = 20;
/// The requests of one page refresh.
const REFRESH: [&str; 6] = [
    "/api/campaigns?windows=30",
    "/api/totals?windows=30",
    "/api/chart.svg?windows=30&metric=ctr_percent",
    "/api/chart.svg?windows=30&metric=cvr_percent",
    "/api/chart.svg?windows=30&metric=revenue",
    "/api/health",
];

/// Adds the latency rows to the table.
pub async fn measure(
    config: &Config,
    pipeline: &PipelineConfig,
    events: u64,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let (stop, shutdown) = pipeline::shutdown_channel();
    let (config, pipeline) = (config.clone(), pipeline.clone());
    let server =
        tokio::spawn(
            async move { dashboard::serve(&config, &pipeline, address, None, shutdown).await },
        );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(address).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the dashboard did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One untimed refresh warms the catalog and the table metadata caches.
    for path in REFRESH {
        get(address, path)?;
    }
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut times = Vec::with_capacity(ROUNDS * REFRESH.len());
                for _ in 0..ROUNDS {
                    for path in REFRESH {
                        let t = Instant::now();
                        get(address, path)?;
                        times.push(t.elapsed());
                    }
                }
                Ok(times)
            })
        })
        .collect();
    let mut times = Vec::new();
    for client in clients {
        times.extend(
            client
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    let wall = started.elapsed();
    let _ = stop.send(true);
    server.await??;
    times.sort_unstable();
    let at = |q: f64| super::quantile(&times, q);
    row(
        &format!("dashboard API, {CLIENTS} concurrent clients, tables of {events} events"),
        format!(
            "{} requests in {:.1}s: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
            times.len(),
            wall.as_secs_f64(),
            at(0.50).as_secs_f64() * 1e3,
            at(0.95).as_secs_f64() * 1e3,
            times.last().map_or(0.0, |t| t.as_secs_f64() * 1e3),
        ),
    );
    Ok(())
}

/// A plain HTTP/1.0 GET that fails unless the answer is 200.
fn get(address: SocketAddr, path: &str) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(address)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    anyhow::ensure!(
        response.starts_with(b"HTTP/1.0 200") || response.starts_with(b"HTTP/1.1 200"),
        "{path}: {}",
        String::from_utf8_lossy(&response[..response.len().min(200)])
    );
    Ok(())
}
