//! Resident memory of a runner process: its peak while catching up a backlog, against the bound
//! its configuration sets ([`MemoryBound`]), and its course over a steady run.
//!
//! The runner runs as a process of its own (this binary's `run`), so that the bench's own
//! memory (generated events, earlier rows) does not count. Both the peak (`VmHWM`, the
//! kernel's high-water mark) and the course (`VmRSS`) are read from `/proc/<pid>/status`: a
//! child's `ru_maxrss` counts the bench's own pages it shared between fork and exec.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::freshness::{produce, wait_for_all, WARM_UP};
use super::{create_topics, scratch_config_shaped, ScratchShape};
use crate::config::{Config, PipelineConfig};
use crate::pipeline::memory::MemoryBound;

/// How the steady run is done.
#[derive(Debug, Clone)]
pub struct SteadyOptions {
    /// Events per second.
    pub rate: u64,
    /// How long, after a 5 s warm-up; 0 skips the rows.
    pub seconds: u64,
}

/// How often the steady run samples the runner's resident memory.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often a runner's high-water mark is read while it runs.
const PEAK_POLL: Duration = Duration::from_millis(50);

const MB: f64 = (1 << 20) as f64;

/// Adds a row per shape: the peak of a runner catching up `events` already in `topic`,
/// against its bound.
pub async fn catch_up(
    config: &Config,
    pipeline: &PipelineConfig,
    topic: &str,
    events: usize,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let shapes = [
        (pipeline.batch.max_rows, 100_000),
        (pipeline.batch.max_rows, 1_000_000),
        (50_000, 1_000_000),
    ];
    for (batch_rows, commit_rows) in shapes {
        let dir = tempfile::tempdir()?;
        let group = format!("{topic}-memory-{batch_rows}-{commit_rows}");
        let shape = ScratchShape {
            batch_rows,
            commit_rows,
            commit_interval: Duration::from_secs(5),
        };
        let scratch = scratch_config_shaped(config, pipeline, dir.path(), topic, &group, &shape)?;
        let p = &scratch.pipelines[0];
        let bound = MemoryBound::of(p);
        let planned = crate::setup::plan(&scratch, p).await?;
        crate::setup::ensure_tables(&scratch, p, &planned).await?;
        let runner = RunnerProcess::start(&scratch.file, dir.path(), true)?;
        let peak = runner.finish(false).await?;
        row(
            &format!(
                "peak RSS catching up {events} events, batch.max_rows {batch_rows}, commit.max_rows {commit_rows}"
            ),
            format!(
                "{:.0} MB, {:.2}x the bound ({bound})",
                peak as f64 / MB,
                peak as f64 / bound.total() as f64
            ),
        );
    }
    Ok(())
}

/// Adds the steady run's rows: the runner's resident memory after the first minute, halfway and
/// at the end, its peak against the bound, and its growth after the first minute.
pub async fn steady(
    config: &Config,
    pipeline: &PipelineConfig,
    options: &SteadyOptions,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let topic = super::scratch_topic("bench_steady");
    let dir = tempfile::tempdir()?;
    // The pipeline's own batch and commit settings: what a production runner would hold.
    let shape = ScratchShape {
        batch_rows: pipeline.batch.max_rows,
        commit_rows: pipeline.commit.max_rows,
        commit_interval: pipeline.commit.interval,
    };
    let group = format!("{topic}-group");
    let scratch = scratch_config_shaped(config, pipeline, dir.path(), &topic, &group, &shape)?;
    let p = scratch.pipelines[0].clone();
    create_topics(&p).await?;
    let planned = crate::setup::plan(&scratch, &p).await?;
    crate::setup::ensure_tables(&scratch, &p, &planned).await?;

    let runner = RunnerProcess::start(&scratch.file, dir.path(), false)?;
    let measured = Duration::from_secs(options.seconds);
    let total = (options.rate as f64 * (WARM_UP + measured).as_secs_f64()) as usize;
    let started = Instant::now();
    let producing = async {
        produce(&p, options.rate, total, measured).await?;
        wait_for_all(&scratch, &p, total).await
    };
    tokio::pin!(producing);
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let produced = loop {
        tokio::select! {
            done = &mut producing => break done,
            _ = tick.tick() => {
                if let Some(rss) = runner.resident() {
                    samples.push((started.elapsed(), rss));
                }
            }
        }
    };
    let peak = runner.finish(true).await;
    produced?;
    let peak = peak?;

    let at = |secs: u64| {
        samples
            .iter()
            .find(|(t, _)| t.as_secs() >= secs)
            .or(samples.last())
            .map_or(0.0, |(_, rss)| *rss as f64 / MB)
    };
    let span = WARM_UP.as_secs() + options.seconds;
    let first_minute = 60.min(span);
    let bound = MemoryBound::of(&p);
    row(
        &format!(
            "steady run at {} events/s for {}s: runner RSS at {first_minute}s / {}s / {span}s",
            options.rate,
            options.seconds,
            span / 2
        ),
        format!(
            "{:.0} / {:.0} / {:.0} MB, peak {:.0} MB, {:.2}x the bound ({bound})",
            at(first_minute),
            at(span / 2),
            at(span),
            peak as f64 / MB,
            peak as f64 / bound.total() as f64
        ),
    );
    // Per minute, the median says where the runner's memory sits and the highest what a commit
    // or a maintenance pass briefly took on top (freed pages return to the system seconds
    // later); growth is the trend of the medians, which one spike at the end does not tilt.
    let minutes = per_minute(&samples, span / 60);
    if !minutes.is_empty() {
        let list = |pick: fn(&Minute) -> f64| {
            let values: Vec<String> = minutes.iter().map(|m| format!("{:.0}", pick(m))).collect();
            format!("{} MB", values.join(" / "))
        };
        row(
            "  steady run: runner RSS each minute, median of its samples",
            list(|m| m.median),
        );
        row(
            "  steady run: runner RSS each minute, highest sample",
            list(|m| m.highest),
        );
    }
    let trend: Vec<(f64, f64)> = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| (i as f64 + 1.0, m.median))
        .collect();
    let after_first = trend.get(1..).unwrap_or_default();
    let second_half = &trend[trend.len() / 2..];
    row(
        "  steady run: growth of the minute medians after the first minute / in the second half (least squares)",
        format!(
            "{:+.2} / {:+.2} MB per minute over {} minutes ({} samples)",
            slope(after_first),
            slope(second_half),
            minutes.len(),
            samples.len()
        ),
    );
    Ok(())
}

/// The resident memory samples of one minute of a steady run.
struct Minute {
    median: f64,
    highest: f64,
}

/// The first `count` whole minutes of `samples` (time since start, RSS bytes), in MB.
fn per_minute(samples: &[(Duration, u64)], count: u64) -> Vec<Minute> {
    (0..count)
        .filter_map(|minute| {
            let mut values: Vec<f64> = samples
                .iter()
                .filter(|(t, _)| t.as_secs() / 60 == minute)
                .map(|(_, rss)| *rss as f64 / MB)
                .collect();
            values.sort_by(f64::total_cmp);
            Some(Minute {
                median: *values.get(values.len() / 2)?,
                highest: *values.last()?,
            })
        })
        .collect()
}

/// The least-squares slope of `points` (x, y); zero for fewer than two.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// `campaign-pipeline run` of a scratch configuration, as a child process.
struct RunnerProcess {
    child: Child,
    log: PathBuf,
}

impl RunnerProcess {
    /// Starts this binary's `run` on `config`, logging warnings to a file in `dir`.
    fn start(config: &Path, dir: &Path, until_caught_up: bool) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this binary to start a runner")?;
        let log = dir.join("runner.log");
        let mut command = Command::new(exe);
        command
            .arg("--config")
            .arg(config)
            .args(["--log", "warn", "run"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        if until_caught_up {
            command.arg("--until-caught-up");
        }
        let child = command.spawn().context("starting a runner process")?;
        Ok(Self { child, log })
    }

    /// Its resident memory now (`None` once it has exited).
    fn resident(&self) -> Option<u64> {
        self.status_bytes("VmRSS:")
    }

    /// A `/proc/<pid>/status` figure given in kB, in bytes.
    fn status_bytes(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    }

    /// Stops it (SIGTERM) when `stop`, waits for it to exit and returns its peak resident
    /// memory (the high-water mark read last before it exited, at most [`PEAK_POLL`] before);
    /// an exit that is not a success is an error carrying the end of its log.
    async fn finish(mut self, stop: bool) -> anyhow::Result<u64> {
        // Read before the signal too: a runner that exits at once would leave nothing to read.
        let mut peak = self.status_bytes("VmHWM:").unwrap_or(0);
        if stop {
            // SAFETY: signals our own child, which has not been waited for yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            peak = self.status_bytes("VmHWM:").unwrap_or(peak);
            tokio::time::sleep(PEAK_POLL).await;
        };
        if !status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            anyhow::bail!(
                "the runner process ended with {status}; its log ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(peak)
    }
}

#[cfg(test)]
mod tests {
    use super::{per_minute, slope, MB};
    use std::time::Duration;

    #[test]
    fn slope_of_a_line_and_of_a_flat_course() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 + 2.0 * x as f64)).collect();
        assert!((slope(&line) - 2.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 7.0)).collect();
        assert_eq!(slope(&flat), 0.0);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }

    #[test]
    fn a_minute_is_summed_up_by_its_median_and_its_highest_sample() {
        let mb = |n: f64| (n * MB) as u64;
        // Minute 0: 100, 100, 300 (a spike); minute 1: 110, 120; the partial minute 2 is left out.
        let samples: Vec<(Duration, u64)> = [
            (1, 100.0),
            (30, 300.0),
            (59, 100.0),
            (60, 110.0),
            (119, 120.0),
            (121, 500.0),
        ]
        .into_iter()
        .map(|(secs, rss)| (Duration::from_secs(secs), mb(rss)))
        .collect();
        let minutes = per_minute(&samples, 2);
        let summary: Vec<(f64, f64)> = minutes.iter().map(|m| (m.median, m.highest)).collect();
        assert_eq!(summary, vec![(100.0, 300.0), (120.0, 120.0)]);
    }
}
