//! CPU time of this process's threads by what they do, read from `/proc/self/task` while they
//! run: the Kafka source's thread, librdkafka's threads, and the rest (the async runtime's
//! threads and the main thread, where the runner's stages run). A thread that ends between two
//! samples loses what it spent since the last one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the threads are read.
const EVERY: Duration = Duration::from_millis(100);

/// What a thread does, told by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// The Kafka source's reader (`kafka-source`).
    Source,
    /// librdkafka's own threads (`rdk:...`).
    Kafka,
    /// The sampler itself.
    Sampler,
    /// Everything else: the async runtime and the main thread.
    Rest,
}

const SAMPLER_NAME: &str = "cpu-sampler";

impl Kind {
    fn of(name: &str) -> Self {
        match name {
            crate::kafka::source::SOURCE_THREAD => Kind::Source,
            SAMPLER_NAME => Kind::Sampler,
            n if n.starts_with("rdk:") => Kind::Kafka,
            _ => Kind::Rest,
        }
    }
}

/// CPU time per kind of thread over a sampled span.
#[derive(Debug, Clone, Default)]
pub struct ThreadCpu {
    /// The Kafka source's thread.
    pub source: Duration,
    /// librdkafka's threads.
    pub kafka: Duration,
    /// The async runtime's and the main thread.
    pub rest: Duration,
}

/// A thread that samples the others until [`Sampler::stop`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<ThreadCpu>,
}

impl Sampler {
    /// Starts sampling; what threads spent before now is not counted.
    pub fn start() -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::Builder::new()
            .name(SAMPLER_NAME.into())
            .spawn(move || {
                // tid -> (kind, CPU at the first sample, CPU at the last one)
                let mut seen: HashMap<u32, (Kind, Duration, Duration)> = HashMap::new();
                let mut first = true;
                loop {
                    let done = stopping.load(Ordering::Relaxed);
                    for (tid, kind, spent) in read_threads() {
                        let start = if first { spent } else { Duration::ZERO };
                        seen.entry(tid).or_insert((kind, start, spent)).2 = spent;
                    }
                    first = false;
                    if done {
                        break;
                    }
                    std::thread::sleep(EVERY);
                }
                let mut cpu = ThreadCpu::default();
                for (kind, start, last) in seen.into_values() {
                    let spent = last.saturating_sub(start);
                    match kind {
                        Kind::Source => cpu.source += spent,
                        Kind::Kafka => cpu.kafka += spent,
                        Kind::Rest => cpu.rest += spent,
                        Kind::Sampler => {}
                    }
                }
                cpu
            })?;
        Ok(Self { stop, handle })
    }

    /// Takes a last sample and returns the threads' CPU since the start.
    pub fn stop(self) -> ThreadCpu {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// Each thread of this process: its id, kind and CPU time so far.
fn read_threads() -> Vec<(u32, Kind, Duration)> {
    named_threads()
        .into_iter()
        .map(|thread| (thread.tid, Kind::of(&thread.name), thread.cpu))
        .collect()
}

/// A thread of this process as `/proc` shows it.
pub struct NamedThread {
    /// Its id.
    pub tid: u32,
    /// Its name (the kernel keeps the first 15 bytes).
    pub name: String,
    /// Its CPU time so far: the scheduler's own count, in nanoseconds, from `schedstat`.
    pub cpu: Duration,
}

/// Every thread of this process.
pub fn named_threads() -> Vec<NamedThread> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut threads = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = task.path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue;
        };
        let Some(nanos) = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        threads.push(NamedThread {
            tid,
            name: name.trim().to_string(),
            cpu: Duration::from_nanos(nanos),
        });
    }
    threads
}
