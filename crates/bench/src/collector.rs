//! The collector under load: apps on loopback post at a fixed rate (open loop: each request
//! has a scheduled time, and its latency counts from then, so a slow answer delays no later
//! request's clock), in requests of 1 and of 100 events; the time to 202 at 10,000 events/s,
//! the collector's CPU per 1M events against the plain `EventProducer` sending the same
//! events, and the highest rate whose p99 stays under 50 ms.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::collect::CollectorServer;
use crate::config::{Config, PipelineConfig};
use crate::kafka::client_config;
use crate::kafka::producer::EventProducer;

/// Connections the load generator keeps open, each posting in turn on its own thread: enough
/// for the rate if each request took 20 ms (apps are many devices, each waiting for its own
/// answer), within the collector's default connection cap.
fn connections(rate: usize, per_request: usize) -> usize {
    (rate / per_request / 50).clamp(32, 1_000)
}
/// The target p99 time to 202 (the product's Kafka latency target).
const P99_TARGET: Duration = Duration::from_millis(50);
/// The rate the issue names.
const RATE: usize = 10_000;
/// The highest rate tried: each step holds its bodies in memory.
const MAX_RATE: usize = 1_280_000;
const TOKEN: &str = "bench-token";

/// How long each load step runs.
#[derive(Debug, Clone, Copy)]
pub struct CollectorOptions {
    /// Seconds per step (0 skips the rows).
    pub seconds: u64,
}

/// What one step of load saw.
struct Step {
    events: usize,
    latencies: Vec<Duration>,
    failures: usize,
    /// CPU of the load generator's own threads, to take from the process's.
    generator_cpu: Duration,
}

impl Step {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }
}

/// Adds the collector's rows.
pub async fn measure(
    config: &Config,
    pipeline: &PipelineConfig,
    options: CollectorOptions,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let topic = super::scratch_topic("bench_collector");
    let dir = tempfile::tempdir()?;
    let scratch = super::scratch_config(config, pipeline, dir.path(), &topic)?;
    let p = &scratch.pipelines[0];
    super::create_topics(p).await?;
    let server = CollectorServer::bind_with_tokens(
        &scratch,
        p,
        Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        &[TOKEN],
    )
    .await?;
    let address = server.local_addr()?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(server.serve(shutdown));
    // What apps send is JSON: the generator's broken payloads (for the dead letter rows) would
    // fail their whole request here.
    let records: Vec<_> = super::records(RATE * options.seconds as usize)
        .into_iter()
        .filter(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).is_ok())
        .collect();
    let events: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone()).collect();

    // Baseline: the same events through the plain producer, in the same process.
    let client = client_config(&p.source.brokers, &p.source.properties);
    let producer = EventProducer::new(&client, &p.source.topic)?;
    let before = super::cpu_time();
    super::send_all(&producer, &records, 1_000).await?;
    let baseline = super::cpu_time() - before;
    drop(producer);
    row(
        "baseline: EventProducer, CPU",
        super::cpu_per_million(events.len(), baseline),
    );

    for per_request in [1usize, 100] {
        let step = load(address, &events, per_request, RATE, options.seconds).await?;
        let cpu = step.cpu_of_collector;
        row(
            &format!("collector: {RATE} events/s in requests of {per_request}, time to 202"),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, {} failed",
                ms(step.step.percentile(0.5)),
                ms(step.step.percentile(0.99)),
                step.step.failures
            ),
        );
        row(
            &format!("collector: requests of {per_request}, CPU"),
            format!(
                "{} ({:.1}x EventProducer)",
                super::cpu_per_million(step.step.events, cpu),
                (cpu.as_secs_f64() / step.step.events.max(1) as f64)
                    / (baseline.as_secs_f64() / events.len().max(1) as f64).max(1e-12)
            ),
        );
        // The highest rate under the target: doubling from 10,000 events/s until a step
        // misses it or fails requests.
        let mut best = None;
        let mut rate = RATE;
        let mut missed = false;
        while rate <= MAX_RATE {
            let step = load(address, &events, per_request, rate, options.seconds).await?;
            let p99 = step.step.percentile(0.99);
            if p99 >= P99_TARGET || step.step.failures > 0 {
                missed = true;
                break;
            }
            best = Some((rate, p99));
            rate *= 2;
        }
        row(
            &format!("collector: highest rate with p99 under 50 ms, requests of {per_request}"),
            match best {
                Some((rate, p99)) if missed => {
                    format!("{rate} events/s (p99 {:.1} ms; twice that missed)", ms(p99))
                }
                Some((rate, p99)) => format!(
                    "at least {rate} events/s (p99 {:.1} ms; the highest rate tried)",
                    ms(p99)
                ),
                None => format!("below {RATE} events/s"),
            },
        );
    }
    let _ = stop.send(true);
    serving.await??;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A step and the collector's share of the process's CPU over it.
struct Loaded {
    step: Step,
    cpu_of_collector: Duration,
}

/// Posts `rate * seconds` events (`events` over and over) at `rate` events/s in requests of
/// `per_request`, over kept-alive connections (see [`connections`]).
async fn load(
    address: SocketAddr,
    events: &[Vec<u8>],
    per_request: usize,
    rate: usize,
    seconds: u64,
) -> anyhow::Result<Loaded> {
    let total = rate * seconds as usize;
    let mut cycle = events.iter().cycle();
    let bodies: Vec<Vec<u8>> = (0..total.div_ceil(per_request))
        .map(|_| {
            let mut body = Vec::new();
            for event in cycle.by_ref().take(per_request) {
                body.extend_from_slice(event);
                body.push(b'\n');
            }
            body
        })
        .collect();
    let interval = per_request as f64 / rate as f64;
    let before = super::cpu_time();
    let start = Instant::now() + Duration::from_millis(100);
    let bodies = std::sync::Arc::new(bodies);
    let connections = connections(rate, per_request);
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let bodies = bodies.clone();
            std::thread::spawn(move || -> anyhow::Result<Step> {
                let cpu = thread_cpu();
                let mut connection = Connection::open(address)?;
                let mut step = Step {
                    events: 0,
                    latencies: Vec::new(),
                    failures: 0,
                    generator_cpu: Duration::ZERO,
                };
                for i in (c..bodies.len()).step_by(connections) {
                    let due = start + Duration::from_secs_f64(interval * i as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let body = &bodies[i];
                    match connection.post(body) {
                        Ok(202) => {
                            step.latencies.push(due.elapsed());
                            step.events += body.iter().filter(|b| **b == b'\n').count();
                        }
                        Ok(_) | Err(_) => {
                            step.failures += 1;
                            connection = Connection::open(address)?;
                        }
                    }
                }
                step.generator_cpu = thread_cpu() - cpu;
                Ok(step)
            })
        })
        .collect();
    let joined = tokio::task::spawn_blocking(move || {
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a load thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<Step>>>()
    })
    .await??;
    let total = super::cpu_time() - before;
    let mut step = Step {
        events: 0,
        latencies: Vec::new(),
        failures: 0,
        generator_cpu: Duration::ZERO,
    };
    for part in joined {
        step.events += part.events;
        step.latencies.extend(part.latencies);
        step.failures += part.failures;
        step.generator_cpu += part.generator_cpu;
    }
    let cpu_of_collector = total.saturating_sub(step.generator_cpu);
    Ok(Loaded {
        step,
        cpu_of_collector,
    })
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One kept-alive HTTP/1.1 connection to the collector.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    fn open(address: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Posts `body` and reads the answer; its status.
    fn post(&mut self, body: &[u8]) -> anyhow::Result<u16> {
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("an HTTP status line")?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut answer = vec![0; length];
        self.reader.read_exact(&mut answer)?;
        Ok(status)
    }
}
