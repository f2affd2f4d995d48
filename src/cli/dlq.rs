//! `dlq stats|monitor|export|replay`: the dead letter topic of a pipeline, read in the tools' own
//! consumer group (`<source group>.dlq-tools`, committing nothing).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::ClientConfig;

use crate::config::PipelineConfig;
use crate::dlq::entry::{parse_since, Entry, Filter};
use crate::dlq::export::{read_jsonl, ExportFormat, ExportWriter};
use crate::dlq::monitor::Monitor;
use crate::dlq::replay::{ledger_topic, Ledger, Plan, Replayer};
use crate::dlq::stats::StatsBuilder;
use crate::kafka::admin::TopicAdmin;
use crate::kafka::client_config;
use crate::kafka::reader::{ReadStep, TopicReader};

/// Flags of `dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// Pipeline whose dead letter topic to read (default: the only one).
    #[arg(long, global = true)]
    pub pipeline: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The DLQ tools.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Totals by category and reason, top error patterns, counts by source partition, per minute.
    Stats(StatsArgs),
    /// Follow the topic live, refreshing the statistics, then print a final summary.
    Monitor(MonitorArgs),
    /// Write dead letters to a file (JSON lines or CSV), payloads exactly as stored.
    Export(ExportArgs),
    /// Send chosen dead letters' payloads back to their source topic, each at most once.
    Replay(ReplayArgs),
}

/// Which dead letters: shared by the commands.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only this category, e.g. bad_timestamp, late, unreadable.
    #[arg(long)]
    pub category: Option<String>,
    /// Only reasons containing this text.
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters that failed since then: a duration back from now (15m, 2h, 7d) or an
    /// RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            category: self.category.clone(),
            reason: self.reason.clone(),
            since: self.since,
        }
    }
}

/// Report format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Text tables.
    Table,
    /// One JSON document.
    Json,
}

/// The flag's names for an [`ExportFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

impl From<FileFormat> for ExportFormat {
    fn from(format: FileFormat) -> Self {
        match format {
            FileFormat::Jsonl => ExportFormat::Jsonl,
            FileFormat::Csv => ExportFormat::Csv,
        }
    }
}

/// Flags of `dlq stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
}

/// Flags of `dlq monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// How long to follow, in seconds; 0 follows until Ctrl-C.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// How often to refresh the screen, in seconds (0.1 to 3600).
    #[arg(long, default_value = "1", value_parser = refresh_interval)]
    refresh: Duration,
    #[command(flatten)]
    filter: FilterArgs,
    /// Format of the final summary.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
}

/// Flags of `dlq export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    filter: FilterArgs,
    /// File format.
    #[arg(long, value_enum, default_value_t = FileFormat::Jsonl)]
    format: FileFormat,
}

/// Flags of `dlq replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Replay the dead letters in this JSON lines export instead of reading the topic.
    #[arg(long)]
    from_file: Option<PathBuf>,
    /// Show what would be sent, send nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Parses `--refresh`: seconds between 0.1 and 3600.
fn refresh_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&seconds) {
        return Err(format!("{seconds} is outside 0.1 to 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// What every command needs: the client, the tools' group and the topic.
struct Target {
    client: ClientConfig,
    group: String,
    topic: String,
}

impl Target {
    fn of(pipeline: &PipelineConfig) -> Self {
        Self {
            client: client_config(&pipeline.source.brokers, &pipeline.source.properties),
            group: format!("{}.dlq-tools", pipeline.source.group_id),
            topic: pipeline.dead_letter.topic.clone(),
        }
    }

    /// A reader from the beginning of the dead letter topic, or a clear error if it is missing.
    fn reader(&self) -> anyhow::Result<TopicReader> {
        TopicReader::open(&self.client, &self.group, &self.topic)?.with_context(|| {
            format!(
                "dead letter topic {} does not exist on {}: run `campaign-pipeline setup`, or check dead_letter.topic in pipelines.yaml",
                self.topic,
                self.client.get("bootstrap.servers").unwrap_or_default()
            )
        })
    }

    /// Every entry of the topic, from the beginning to its end.
    fn read_all(&self, each: impl FnMut(Entry)) -> anyhow::Result<()> {
        Self::drain(self.reader()?, each)
    }

    /// Every entry `reader` has left, to the end of the topic.
    fn drain(mut reader: TopicReader, mut each: impl FnMut(Entry)) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| {
            reader.read_to_end(|message| {
                each(Entry::from_message(&message));
                Ok(())
            })
        })?;
        Ok(())
    }
}

/// Runs a `dlq` command.
pub async fn run(config_path: &Path, args: &DlqArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let pipeline = config.pipeline(args.pipeline.as_deref())?;
    let target = Target::of(pipeline);
    match &args.command {
        DlqCommand::Stats(args) => stats(&target, args),
        DlqCommand::Monitor(args) => monitor(&target, args),
        DlqCommand::Export(args) => export(&target, args),
        DlqCommand::Replay(args) => replay(&target, pipeline, args).await,
    }
}

fn stats(target: &Target, args: &StatsArgs) -> anyhow::Result<bool> {
    let mut builder = StatsBuilder::new(args.filter.filter());
    target.read_all(|entry| {
        builder.add(&entry);
    })?;
    let report = builder.report();
    match args.format {
        ReportFormat::Table => print!("{}", report.render(&target.topic)),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(true)
}

fn monitor(target: &Target, args: &MonitorArgs) -> anyhow::Result<bool> {
    let shutdown = super::stop_on_signals("interrupted: printing the summary")?;
    let mut reader = target.reader()?;
    let mut monitor = Monitor::new(args.filter.filter());
    let started = Instant::now();
    // A duration too long to add to the clock is as good as none.
    let deadline = (args.duration > 0)
        .then(|| started.checked_add(Duration::from_secs(args.duration)))
        .flatten();
    let refresh = args.refresh;
    let terminal = std::io::stdout().is_terminal();
    let mut next_refresh = started + refresh;
    loop {
        let now = Instant::now();
        if *shutdown.borrow() || deadline.is_some_and(|d| now >= d) {
            break;
        }
        let wait = deadline
            .map_or(refresh, |d| d.saturating_duration_since(now))
            .min(next_refresh.saturating_duration_since(now))
            .min(Duration::from_millis(200));
        match tokio::task::block_in_place(|| reader.poll(wait))? {
            ReadStep::Message(message) => monitor.add(&Entry::from_message(&message)),
            ReadStep::CaughtUp => monitor.caught_up(),
            ReadStep::Idle => {}
        }
        if Instant::now() >= next_refresh {
            next_refresh += refresh;
            let screen = monitor.screen(&target.topic);
            if terminal {
                // Clear the screen and draw from the top, like `watch`.
                print!("\x1b[2J\x1b[H{screen}");
            } else {
                let first = screen.lines().next().unwrap_or_default();
                println!("{first}");
            }
        }
    }
    let summary = monitor.summary();
    match args.format {
        ReportFormat::Table => println!("{}", summary.render(&target.topic)),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
    }
    Ok(true)
}

fn export(target: &Target, args: &ExportArgs) -> anyhow::Result<bool> {
    let filter = args.filter.filter();
    // The topic first, so that a missing topic does not leave an empty file behind.
    let reader = target.reader()?;
    let mut writer = ExportWriter::create(&args.out, args.format.into())?;
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {pos} dead letters exported ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let (mut written, mut unreadable) = (0u64, Vec::new());
    let mut failure = None;
    Target::drain(reader, |entry| match entry {
        Entry::Letter(letter) if filter.matches(&letter) && failure.is_none() => {
            match writer.write(&letter) {
                Ok(()) => {
                    written += 1;
                    bar.inc(1);
                }
                Err(err) => failure = Some(err),
            }
        }
        Entry::Unreadable(u) if filter.matches_unreadable(&u) => unreadable.push(u),
        _ => {}
    })?;
    bar.finish_and_clear();
    if let Some(err) = failure {
        return Err(err.into());
    }
    writer.finish()?;
    println!("{written} dead letters written to {}", args.out.display());
    if !unreadable.is_empty() {
        println!(
            "{} unreadable messages (not in the dead letter format) were not exported:",
            unreadable.len()
        );
        for u in &unreadable {
            println!(
                "  partition {} offset {}: {} | {}",
                u.dlq.partition, u.dlq.offset, u.reason, u.preview
            );
        }
    }
    Ok(true)
}

async fn replay(
    target: &Target,
    pipeline: &PipelineConfig,
    args: &ReplayArgs,
) -> anyhow::Result<bool> {
    let filter = args.filter.filter();
    let ledger_topic = ledger_topic(&target.topic);
    let mut ledger =
        tokio::task::block_in_place(|| Ledger::load(&target.client, &target.group, &ledger_topic))?;
    let replayer = if args.dry_run {
        if ledger.unsettled() > 0 {
            println!(
                "{} dead letters of an interrupted replay are unsettled: a replay without --dry-run first looks for them in the source topic",
                ledger.unsettled()
            );
        }
        None
    } else {
        let admin = TopicAdmin::new(&target.client)?;
        admin
            .ensure_topic(&crate::kafka::topics::ledger_spec(pipeline))
            .await?;
        let replayer = Replayer::new(&target.client, &target.group, &ledger_topic)?;
        let recovered = replayer.recover(&mut ledger).await?;
        if recovered > 0 {
            println!(
                "an interrupted replay had sent {recovered} dead letters: recorded as replayed"
            );
        }
        Some(replayer)
    };
    let mut plan = Plan::default();
    let mut unreadable = 0usize;
    match &args.from_file {
        Some(path) => {
            for letter in read_jsonl(path)? {
                plan.add(&letter, &filter, &ledger);
            }
        }
        None => target.read_all(|entry| match entry {
            Entry::Letter(letter) => plan.add(&letter, &filter, &ledger),
            Entry::Unreadable(_) => unreadable += 1,
        })?,
    }
    println!("{} dead letters picked", plan.picked);
    let skipped = [
        (plan.repeats, "repeats of a source offset already picked"),
        (plan.already_replayed, "already replayed earlier"),
        (
            plan.in_events_table,
            "late or untimed events, skipped: they are in the events table already",
        ),
        (unreadable, "unreadable messages in the topic, skipped"),
    ];
    for (count, why) in skipped {
        if count > 0 {
            println!("  {count} {why}");
        }
    }
    for (coordinate, why) in &plan.undecodable {
        println!("  {coordinate}: cannot replay: {why}");
    }
    let Some(replayer) = replayer else {
        println!("dry run: would send {} payloads:", plan.to_send.len());
        let mut by_category = std::collections::BTreeMap::<&str, usize>::new();
        for candidate in &plan.to_send {
            *by_category.entry(&candidate.category).or_default() += 1;
        }
        for (category, count) in by_category {
            println!("  {category:<24} {count}");
        }
        return Ok(true);
    };
    if plan.to_send.is_empty() {
        println!("nothing to replay");
        return Ok(true);
    }
    if plan
        .to_send
        .iter()
        .any(|c| c.topic != pipeline.source.topic)
    {
        tracing::warn!(
            "some dead letters came from a topic other than {}: they go back to their own topic",
            pipeline.source.topic
        );
    }
    let bar = ProgressBar::new(plan.to_send.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} replayed ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let sent = replayer
        .send(&plan.to_send, &mut ledger, |n| bar.set_position(n as u64))
        .await?;
    bar.finish_and_clear();
    println!(
        "{sent} payloads sent back to their source topic (ledger {ledger_topic}: {} replayed in all)",
        ledger.done_count()
    );
    Ok(true)
}
