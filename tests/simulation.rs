//! Deterministic simulation of the commit protocol: runners (the product's [`Runner`], its SQL,
//! window operator, table writers and validated commits, on a real embedded SQLite catalog and
//! warehouse in a temporary folder) read a scripted three-partition log through a simulated
//! source, group and clock. A seeded schedule interleaves them at every catalog call and picks
//! what happens there: the call goes through, fails, loses its answer after landing, or the
//! runner crashes. Between calls it rebalances the group (an old owner may read on for a few
//! batches: a zombie), starts runners, crashes idle ones, runs a maintenance pass, fails the
//! object store's next writes, appends events and moves the clock; half the schedules set an
//! idle timeout, so a silent partition's windows close with the others'. Half run in
//! `commit.mode: one_committer`: the holder of partition 0 lands the others' shares, and
//! sending on the control topic and waiting for an answer are gates too (a share or an answer
//! lost, the committer crashing between landing and answering, an answer too late).
//! Then a last runner reads everything, flushes the open windows, and the tables and the dead
//! letters are checked against what the log holds: every valid event once, every window once
//! with exact counts, revenue and rates, every rejection in the dead letters, offsets never
//! going back.
//!
//! Only one runner runs between two catalog calls, so a seed names one schedule:
//! `SIM_SEED=<seed> cargo test --test simulation -- --nocapture` replays it and prints its steps.
//! `SIM_SCHEDULES` sets how many schedules run (CI runs the default).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::TryStreamExt;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, oneshot};

use campaign_pipeline::catalog::open_catalog_over;
use campaign_pipeline::common::summary::OFFSETS;
use campaign_pipeline::common::{Clock, Offsets, Watermarks};
use campaign_pipeline::config::{CommitMode, Config, PipelineConfig};
use campaign_pipeline::control::{Control, ControlError, ControlMessage};
use campaign_pipeline::dlq::{DeadLetterWriter, Delivery, DeliveryError};
use campaign_pipeline::maintain::Maintainer;
use campaign_pipeline::pipeline::{
    shutdown_channel, Connections, Flow, Planned, RunOptions, Runner,
};
use campaign_pipeline::source::batch::BatchBuilder;
use campaign_pipeline::source::{Source, SourceError, SourceEvent};

/// The product's allocator: thousands of schedules on a few threads allocate and free the
/// catalog's metadata and Arrow buffers all the time, which glibc's arenas serve slowly.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const TOPIC: &str = "campaign_events";
const PARTITIONS: i32 = 3;
/// The simulated wall clock starts an hour after the first event, so no event is ahead of it.
const EVENTS_START_MICROS: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
const CLOCK_START_MICROS: i64 = EVENTS_START_MICROS + 3_600_000_000;
const WINDOW_MICROS: i64 = 60_000_000;
const LATENESS_MICROS: i64 = 10_000_000;
/// How long a batch run waits for partitions other runners hold that make no progress.
const MAX_UNASSIGNED: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The world: the source topic, the dead letter topic, the clock.

/// What one message of the source topic is, as the generator made it.
#[derive(Debug, Clone)]
enum Kind {
    Valid(Valid),
    /// The parsing SQL rejects it.
    Invalid,
    /// Its payload is not UTF-8.
    NotUtf8,
}

#[derive(Debug, Clone)]
struct Valid {
    event_id: String,
    campaign: String,
    event_type: &'static str,
    time_micros: i64,
    revenue: f64,
}

#[derive(Debug, Clone)]
struct Message {
    key: Vec<u8>,
    payload: Vec<u8>,
    kind: Kind,
}

#[derive(Debug, Default)]
struct World {
    log: Vec<Vec<Message>>,
    dead_letters: Vec<Vec<u8>>,
    /// Event time per partition of the next generated event.
    next_time: Vec<i64>,
    /// Per partition, the most event time moves on between two generated events.
    time_step: Vec<i64>,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl World {
    fn new(rng: &mut ChaCha8Rng) -> Self {
        let mut world = World {
            log: vec![Vec::new(); PARTITIONS as usize],
            next_time: vec![EVENTS_START_MICROS; PARTITIONS as usize],
            time_step: vec![25_000_000; PARTITIONS as usize],
            ..World::default()
        };
        for partition in 0..PARTITIONS {
            let count = rng.random_range(5..=30);
            world.produce(rng, partition, count);
        }
        world
    }

    /// Appends `count` generated messages to `partition`: mostly valid events moving forward
    /// in time (out of order within the allowed lateness), some far behind (late for the
    /// windows), some the parsing SQL rejects, some not UTF-8.
    fn produce(&mut self, rng: &mut ChaCha8Rng, partition: i32, count: usize) {
        let p = partition as usize;
        for _ in 0..count {
            let offset = self.log[p].len();
            let campaign = format!("c{partition}-{}", rng.random_range(0..2));
            self.next_time[p] += rng.random_range(0..self.time_step[p]);
            let roll = rng.random_range(0..100);
            let time = match roll {
                0..=7 => self.next_time[p] - rng.random_range(70_000_000..200_000_000),
                _ => self.next_time[p] - rng.random_range(0..8_000_000),
            };
            let event_type =
                ["impression", "impression", "click", "conversion"][rng.random_range(0..4)];
            let revenue = if event_type == "conversion" {
                f64::from(rng.random_range(1..5000)) / 100.0
            } else {
                0.0
            };
            let event_id = format!("e{partition}-{offset}");
            let timestamp = chrono::DateTime::from_timestamp_micros(time)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let valid = format!(
                r#"{{"event_id":"{event_id}","user_id":"u{}","campaign_id":"{campaign}","event_type":"{event_type}","platform":"ios","timestamp":"{timestamp}","revenue":{revenue},"country":"DE","device_type":"phone"}}"#,
                rng.random_range(0..50)
            );
            let (payload, kind) = match rng.random_range(0..100) {
                0..=3 => (valid.as_bytes()[..valid.len() / 2].to_vec(), Kind::Invalid),
                4..=6 => (
                    valid.replace(event_type, "view").into_bytes(),
                    Kind::Invalid,
                ),
                7..=8 => (vec![0xff, 0xfe, b'{', 0xc3], Kind::NotUtf8),
                _ => (
                    valid.into_bytes(),
                    Kind::Valid(Valid {
                        event_id,
                        campaign: campaign.clone(),
                        event_type,
                        time_micros: time,
                        revenue,
                    }),
                ),
            };
            self.log[p].push(Message {
                key: campaign.into_bytes(),
                payload,
                kind,
            });
        }
    }
}

/// A clock that moves only when the schedule (or a runner's wait) moves it.
#[derive(Debug)]
struct SimClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl SimClock {
    fn advance(&self, by: Duration) {
        *lock(&self.elapsed) += by;
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.start + *lock(&self.elapsed)
    }

    fn wall_micros(&self) -> i64 {
        CLOCK_START_MICROS + lock(&self.elapsed).as_micros() as i64
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.advance(duration);
        Box::pin(std::future::ready(()))
    }
}

// ---------------------------------------------------------------------------------------------
// The source and the group.

/// A change of the group, as the consumer hands it on.
#[derive(Debug, Clone)]
enum GroupChange {
    Revoked,
    Assigned(BTreeSet<i32>),
}

/// One group member's view: the changes it has not seen yet and where it reads.
#[derive(Debug, Default)]
struct Member {
    changes: VecDeque<GroupChange>,
    /// Batches it still reads from its old partitions before it sees the changes (a zombie).
    stale_batches: u32,
    assigned: BTreeSet<i32>,
    positions: BTreeMap<i32, i64>,
}

/// The simulated consumer of one runner.
struct SimSource {
    world: Shared<World>,
    member: Shared<Member>,
    rng: ChaCha8Rng,
    members: usize,
}

#[async_trait]
impl Source for SimSource {
    async fn next(&mut self) -> Option<Result<SourceEvent, SourceError>> {
        let mut member = lock(&self.member);
        if !member.changes.is_empty() && member.stale_batches == 0 {
            let change = member.changes.pop_front()?;
            member.positions.clear();
            return Some(Ok(match change {
                GroupChange::Revoked => {
                    member.assigned.clear();
                    SourceEvent::Revoked
                }
                GroupChange::Assigned(partitions) => {
                    member.assigned = partitions.clone();
                    SourceEvent::Assigned { partitions }
                }
            }));
        }
        member.stale_batches = member.stale_batches.saturating_sub(1);
        let world = lock(&self.world);
        let mut builder = BatchBuilder::new(TOPIC, 16);
        let mut at_end = BTreeSet::new();
        let member = &mut *member;
        for (partition, position) in member.positions.iter_mut() {
            let log = &world.log[*partition as usize];
            for _ in 0..self.rng.random_range(0..=5) {
                let Some(message) = log.get(*position as usize) else {
                    break;
                };
                builder.push(
                    *partition,
                    *position,
                    Some(CLOCK_START_MICROS / 1000),
                    Some(&message.key),
                    Some(&message.payload),
                );
                *position += 1;
            }
            if *position as usize >= log.len() {
                at_end.insert(*partition);
            }
        }
        let caught_up =
            !member.assigned.is_empty() && member.assigned.iter().all(|p| at_end.contains(p));
        Some(
            builder
                .finish(caught_up, at_end, 0)
                .map(SourceEvent::Batch)
                .map_err(|source| SourceError::Arrow {
                    topic: TOPIC.into(),
                    source,
                }),
        )
    }

    fn rewind(&mut self, partitions: BTreeSet<i32>, offsets: Offsets) {
        let mut member = lock(&self.member);
        for partition in partitions {
            let at = offsets.get(TOPIC, partition).unwrap_or(0);
            member.positions.insert(partition, at);
        }
    }

    fn commit_group_offsets(&self, _offsets: &Offsets) {}

    fn lag(&self) -> BTreeMap<i32, i64> {
        BTreeMap::new()
    }

    fn group_members(&self) -> Option<usize> {
        Some(self.members)
    }

    async fn partition_ends(
        &self,
        from: &BTreeMap<i32, Option<i64>>,
    ) -> Result<BTreeMap<i32, Watermarks>, SourceError> {
        let world = lock(&self.world);
        Ok(from
            .keys()
            .map(|p| {
                let high = world.log[*p as usize].len() as i64;
                (*p, Watermarks { low: 0, high })
            })
            .collect())
    }

    fn stop(&self) {}
}

/// The dead letter topic: a record is in it once flushed; a crash loses what was only queued.
struct SimDelivery {
    world: Shared<World>,
    queued: Vec<Vec<u8>>,
}

#[async_trait]
impl Delivery for SimDelivery {
    async fn queue(&mut self, value: Vec<u8>, _key: Option<&[u8]>) -> Result<(), DeliveryError> {
        self.queued.push(value);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), DeliveryError> {
        lock(&self.world).dead_letters.append(&mut self.queued);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The object store: the warehouse's own local storage, failing the writes the schedule fails.

/// How many of the next writes to the warehouse fail (an object store outage).
#[derive(Debug, Default)]
struct StoreFaults {
    fail_next: AtomicU32,
}

impl StoreFaults {
    fn check(&self, path: &str) -> iceberg::Result<()> {
        let failing = self
            .fail_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        match failing {
            Ok(_) => Err(Error::new(
                ErrorKind::Unexpected,
                format!("simulated object store outage writing {path}"),
            )),
            Err(_) => Ok(()),
        }
    }
}

/// The warehouse's storage behind [`StoreFaults`] (iceberg's `FileIO` builds its storage from
/// a factory; this one wraps the catalog's own).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FaultyStorageFactory {
    #[serde(skip)]
    inner: Option<Arc<dyn StorageFactory>>,
    #[serde(skip)]
    faults: Arc<StoreFaults>,
}

#[typetag::serde]
impl StorageFactory for FaultyStorageFactory {
    fn build(&self, config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        let inner = self
            .inner
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "a storage factory without storage"))?
            .build(config)?;
        Ok(Arc::new_cyclic(|me| FaultyStorage {
            inner: Some(inner),
            faults: self.faults.clone(),
            me: me.clone(),
        }))
    }
}

/// One storage of [`FaultyStorageFactory`]: files it hands out write through it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FaultyStorage {
    #[serde(skip)]
    inner: Option<Arc<dyn Storage>>,
    #[serde(skip)]
    faults: Arc<StoreFaults>,
    #[serde(skip)]
    me: Weak<FaultyStorage>,
}

impl FaultyStorage {
    fn inner(&self) -> iceberg::Result<&Arc<dyn Storage>> {
        self.inner
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "a storage without storage"))
    }

    fn me(&self) -> iceberg::Result<Arc<dyn Storage>> {
        let me: Arc<FaultyStorage> = self
            .me
            .upgrade()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "a storage already dropped"))?;
        Ok(me)
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for FaultyStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        self.inner()?.exists(path).await
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        self.inner()?.metadata(path).await
    }

    async fn read(&self, path: &str) -> iceberg::Result<bytes::Bytes> {
        self.inner()?.read(path).await
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        self.inner()?.reader(path).await
    }

    async fn write(&self, path: &str, bs: bytes::Bytes) -> iceberg::Result<()> {
        self.faults.check(path)?;
        self.inner()?.write(path, bs).await
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        self.faults.check(path)?;
        self.inner()?.writer(path).await
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        self.inner()?.delete(path).await
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        self.inner()?.delete_prefix(path).await
    }

    async fn delete_stream(
        &self,
        paths: futures::stream::BoxStream<'static, String>,
    ) -> iceberg::Result<()> {
        self.inner()?.delete_stream(paths).await
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(self.me()?, path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(self.me()?, path.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// The catalog, gated: each call waits for the schedule's decision.

/// A catalog call or a use of the control topic a runner waits at.
#[derive(Clone)]
enum Op {
    Load(String),
    Commit(String),
    /// Sending a message of this kind on the control topic.
    Send(&'static str),
    /// Waiting for the committer's answer.
    Await,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Load(table) => write!(f, "load {table}"),
            Op::Commit(table) => write!(f, "commit {table}"),
            Op::Send(kind) => write!(f, "send {kind}"),
            Op::Await => write!(f, "await the committer's answer"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Proceed,
    /// The catalog does not answer (before doing anything).
    Fail,
    /// The commit lands but its answer is lost.
    LoseAnswer,
}

enum Report {
    AtGate(Op, oneshot::Sender<Decision>),
    Done(Result<Option<Flow>, String>),
}

#[derive(Debug)]
struct GatedCatalog {
    inner: Arc<dyn Catalog>,
    reports: mpsc::UnboundedSender<(usize, Report)>,
    runner: usize,
}

impl GatedCatalog {
    async fn gate(&self, op: Op) -> Decision {
        gate(&self.reports, self.runner, op).await
    }
}

/// Runner `runner` waits at `op` for the schedule's decision.
async fn gate(reports: &mpsc::UnboundedSender<(usize, Report)>, runner: usize, op: Op) -> Decision {
    let (tx, rx) = oneshot::channel();
    if reports.send((runner, Report::AtGate(op, tx))).is_err() {
        return std::future::pending().await;
    }
    match rx.await {
        Ok(decision) => decision,
        // The schedule crashed this runner: it never goes on.
        Err(_) => std::future::pending().await,
    }
}

fn outage() -> Error {
    Error::new(ErrorKind::Unexpected, "simulated catalog outage")
}

#[async_trait]
impl Catalog for GatedCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        match self.gate(Op::Load(table.name().to_string())).await {
            Decision::Proceed => self.inner.load_table(table).await,
            Decision::Fail | Decision::LoseAnswer => Err(outage()),
        }
    }
    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        let name = commit.identifier().name().to_string();
        match self.gate(Op::Commit(name)).await {
            Decision::Proceed => self.inner.update_table(commit).await,
            Decision::Fail => Err(outage()),
            Decision::LoseAnswer => {
                self.inner.update_table(commit).await?;
                Err(outage())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The control topic of `commit.mode: one_committer`.

/// The control topic: every message sent, in order.
type ControlLog = Shared<Vec<ControlMessage>>;

/// One runner's end of the control topic: it reads from where the topic ended when it started.
/// Sending and waiting for an answer are gates the schedule decides, as catalog calls are: a
/// send goes through or fails (the committer's answer or a share lost), or the runner crashes
/// there (the committer between landing shares and answering them); a wait for an answer finds
/// what was sent meanwhile, or gives up (an answer that comes too late).
struct SimControl {
    log: ControlLog,
    read: usize,
    reports: mpsc::UnboundedSender<(usize, Report)>,
    runner: usize,
    clock: Arc<SimClock>,
}

impl SimControl {
    fn take(&mut self) -> Option<ControlMessage> {
        let message = lock(&self.log).get(self.read).cloned()?;
        self.read += 1;
        Some(message)
    }

    async fn gate(&self, op: Op) -> Decision {
        gate(&self.reports, self.runner, op).await
    }
}

#[async_trait]
impl Control for SimControl {
    async fn send(&mut self, message: &ControlMessage) -> Result<(), ControlError> {
        match self.gate(Op::Send(control_kind(message))).await {
            Decision::Proceed => {
                // In the form it travels in, as the Kafka topic carries it.
                let text = serde_json::to_vec(message).map_err(|e| ControlError {
                    topic: "control".into(),
                    action: "encoding".into(),
                    source: Box::new(e),
                })?;
                let read = serde_json::from_slice(&text).map_err(|e| ControlError {
                    topic: "control".into(),
                    action: "decoding".into(),
                    source: Box::new(e),
                })?;
                lock(&self.log).push(read);
                Ok(())
            }
            Decision::Fail | Decision::LoseAnswer => Err(ControlError {
                topic: "control".into(),
                action: "sending".into(),
                source: "simulated control topic outage".into(),
            }),
        }
    }

    async fn next(&mut self) -> Option<ControlMessage> {
        match self.take() {
            Some(message) => Some(message),
            None => std::future::pending().await,
        }
    }

    async fn next_within(&mut self, patience: Duration) -> Option<ControlMessage> {
        loop {
            if let Some(message) = self.take() {
                return Some(message);
            }
            // Waits on while the schedule steps the others, until it says the wait is over.
            if self.gate(Op::Await).await != Decision::Proceed {
                self.clock.advance(patience);
                return None;
            }
        }
    }

    fn try_next(&mut self) -> Option<ControlMessage> {
        self.take()
    }
}

fn control_kind(message: &ControlMessage) -> &'static str {
    match message {
        ControlMessage::Share(_) => "share",
        ControlMessage::Outcomes { .. } => "outcomes",
    }
}

// ---------------------------------------------------------------------------------------------
// Runners as tasks the schedule steps.

enum Command {
    Step,
    Finish,
}

enum State {
    Idle,
    Gated(Op, oneshot::Sender<Decision>),
    Gone,
}

struct Slot {
    state: State,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
    member: Shared<Member>,
}

/// Everything one schedule shares.
struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    config: Arc<Config>,
    pipeline: PipelineConfig,
    /// The pipeline's SQL, planned once per thread; each runner takes a fork of it.
    planned: Arc<Planned>,
    catalog: Arc<dyn Catalog>,
    /// The warehouse's writes the schedule fails.
    store: Arc<StoreFaults>,
    world: Shared<World>,
    /// The control topic (`commit.mode: one_committer`).
    control: ControlLog,
    clock: Arc<SimClock>,
    reports: mpsc::UnboundedReceiver<(usize, Report)>,
    report_to: mpsc::UnboundedSender<(usize, Report)>,
    slots: Vec<Slot>,
    /// Group members: the runners the group assigns partitions to.
    members: BTreeSet<usize>,
    /// The tables' maintenance, opened at its first pass.
    maintainer: Option<Maintainer>,
    trace: Vec<String>,
    /// The shutdown sender every runner's options watch (never triggered).
    _shutdown: tokio::sync::watch::Sender<bool>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The schedule broke an invariant or a runner failed in a way it must not.
#[derive(Debug)]
struct Failure(String);

impl Sim {
    fn note(&mut self, what: String) {
        self.trace.push(what);
    }

    fn options(&self, last: bool) -> RunOptions {
        RunOptions {
            until_caught_up: last,
            flush_open_windows: last,
            shutdown: self.shutdown.clone(),
            telemetry: None,
            max_unassigned: MAX_UNASSIGNED,
            accept_offset_jumps: false,
        }
    }

    /// Starts a runner (a new process joining the group) and waits until it is open.
    async fn start(&mut self, last: bool) -> Result<usize, Failure> {
        let id = self.slots.len();
        let member = Shared::<Member>::default();
        let (commands, mut received) = mpsc::unbounded_channel();
        let catalog: Arc<dyn Catalog> = Arc::new(GatedCatalog {
            inner: self.catalog.clone(),
            reports: self.report_to.clone(),
            runner: id,
        });
        let source = SimSource {
            world: self.world.clone(),
            member: member.clone(),
            rng: ChaCha8Rng::seed_from_u64(self.seed ^ ((id as u64 + 1) << 40)),
            members: self.members.len() + 1,
        };
        let delivery = SimDelivery {
            world: self.world.clone(),
            queued: Vec::new(),
        };
        let control = (self.pipeline.commit.mode == CommitMode::OneCommitter).then(|| {
            Box::new(SimControl {
                read: lock(&self.control).len(),
                log: self.control.clone(),
                reports: self.report_to.clone(),
                runner: id,
                clock: self.clock.clone(),
            }) as Box<dyn Control>
        });
        let (config, pipeline, options) = (
            self.config.clone(),
            self.pipeline.clone(),
            self.options(last),
        );
        let clock: Arc<dyn Clock> = self.clock.clone();
        let reports = self.report_to.clone();
        let planned = self.planned.clone();
        let task = tokio::task::spawn_local(async move {
            let opened = async {
                let planned = planned.fork();
                Runner::open(&config, &pipeline, options, planned, catalog, clock, |_| {
                    Ok::<_, std::convert::Infallible>(Connections {
                        source,
                        dead_letters: DeadLetterWriter::to(delivery),
                        topic_partitions: PARTITIONS as usize,
                        control,
                    })
                })
                .await
            };
            let mut runner = match opened.await {
                Ok(runner) => {
                    let _ = reports.send((id, Report::Done(Ok(None))));
                    runner
                }
                Err(error) => {
                    let _ = reports.send((id, Report::Done(Err(describe(&error)))));
                    return;
                }
            };
            while let Some(command) = received.recv().await {
                let done = match command {
                    Command::Step => runner.step().await,
                    Command::Finish => runner.finish().await.map(|done| done.then_some(Flow::Stop)),
                };
                let failed = done.is_err();
                let _ = reports.send((id, Report::Done(done.map_err(|e| describe(&e)))));
                if failed {
                    return;
                }
            }
        });
        self.slots.push(Slot {
            state: State::Idle,
            commands,
            task,
            member,
        });
        self.note(format!("runner {id} starts"));
        match self.wait(id).await? {
            Ok(_) => Ok(id),
            Err(error) => {
                // Opening failed on an injected outage: the process exits, as a real one would.
                self.note(format!("runner {id} failed to open: {error}"));
                self.slots[id].state = State::Gone;
                Ok(id)
            }
        }
    }

    /// Waits for the one running runner `id` to reach a catalog call or finish its command.
    async fn wait(&mut self, id: usize) -> Result<Result<Option<Flow>, String>, Failure> {
        let Some((from, report)) = self.reports.recv().await else {
            return Err(Failure("the reports channel closed".into()));
        };
        if from != id {
            return Err(Failure(format!(
                "runner {from} reported while runner {id} was the one running"
            )));
        }
        match report {
            Report::AtGate(op, reply) => {
                self.slots[id].state = State::Gated(op, reply);
                Ok(Ok(Some(Flow::Next)))
            }
            Report::Done(result) => {
                self.slots[id].state = State::Idle;
                Ok(result)
            }
        }
    }

    /// Runs `command` on idle runner `id` until it reaches a catalog call or is done.
    async fn command(
        &mut self,
        id: usize,
        command: Command,
    ) -> Result<Result<Option<Flow>, String>, Failure> {
        let _ = self.slots[id].commands.send(command);
        self.wait(id).await
    }

    /// Lets gated runner `id` through with `decision` and waits for it again.
    async fn release(
        &mut self,
        id: usize,
        decision: Decision,
    ) -> Result<Result<Option<Flow>, String>, Failure> {
        let State::Gated(op, reply) = std::mem::replace(&mut self.slots[id].state, State::Idle)
        else {
            return Err(Failure(format!("runner {id} is not at a catalog call")));
        };
        self.note(format!("runner {id}: {op} -> {decision:?}"));
        let _ = reply.send(decision);
        self.wait(id).await
    }

    /// Lets runner `id` through every catalog call until its command is done; `outcome` is what
    /// it last reported.
    async fn proceed(
        &mut self,
        id: usize,
        mut outcome: Result<Option<Flow>, String>,
    ) -> Result<Result<Option<Flow>, String>, Failure> {
        while matches!(self.slots[id].state, State::Gated(..)) {
            outcome = self.release(id, Decision::Proceed).await?;
        }
        Ok(outcome)
    }

    /// The group gives each runner of `shares` its share, seen at its next step.
    fn assign(&mut self, shares: &[(usize, BTreeSet<i32>)]) {
        for (id, share) in shares {
            let mut member = lock(&self.slots[*id].member);
            member.changes.push_back(GroupChange::Revoked);
            member
                .changes
                .push_back(GroupChange::Assigned(share.clone()));
            member.stale_batches = 0;
            drop(member);
            self.note(format!("group: runner {id} gets {share:?}"));
        }
    }

    /// Steps runner `id` once, through every catalog call.
    async fn step_through(&mut self, id: usize) -> Result<Result<Option<Flow>, String>, Failure> {
        self.clock.advance(Duration::from_millis(200));
        let outcome = self.command(id, Command::Step).await?;
        self.proceed(id, outcome).await
    }

    /// Where each table stands for each partition, and where the topic ends.
    async fn standing(&self) -> Result<(Vec<Option<i64>>, Vec<i64>), Failure> {
        let mut lowest: Vec<Option<i64>> = vec![None; PARTITIONS as usize];
        for (i, table) in ["campaign_events", "campaign_metrics"].iter().enumerate() {
            let state = campaign_pipeline::sink::iceberg::load_state(
                self.catalog.as_ref(),
                "sim",
                table,
                &self.pipeline.name,
            )
            .await
            .map_err(|e| Failure(describe(&e)))?;
            for (p, low) in lowest.iter_mut().enumerate() {
                let at = state.offsets.get(TOPIC, p as i32);
                *low = if i == 0 {
                    at
                } else {
                    low.zip(at).map(|(a, b)| a.min(b))
                };
            }
        }
        let ends = lock(&self.world)
            .log
            .iter()
            .map(|log| log.len() as i64)
            .collect();
        Ok((lowest, ends))
    }

    /// A runner holding partitions 1 and 2, and a batch run (`--until-caught-up
    /// --flush-open-windows`) holding partition 0, both open: (the other, the batch run).
    async fn batch_run_beside_another(&mut self) -> Result<(usize, usize), Failure> {
        let other = self.start(false).await?;
        self.proceed(other, Ok(None)).await?.map_err(Failure)?;
        let last = self.start(true).await?;
        self.proceed(last, Ok(None)).await?.map_err(Failure)?;
        self.assign(&[(other, BTreeSet::from([1, 2])), (last, BTreeSet::from([0]))]);
        Ok((other, last))
    }

    /// The runner died (a crash, or an error that ends the process).
    fn crash(&mut self, id: usize) {
        self.slots[id].task.abort();
        self.slots[id].state = State::Gone;
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|id| !matches!(self.slots[*id].state, State::Gone))
            .collect()
    }

    /// The group assigns the partitions over its live members; a member whose share changes
    /// sees the change now, or only after `stale` more batches from its old share.
    fn rebalance(&mut self, live: &[usize]) {
        self.members = live.iter().copied().collect();
        let members: Vec<usize> = self.members.iter().copied().collect();
        let mut shares: BTreeMap<usize, BTreeSet<i32>> =
            members.iter().map(|m| (*m, BTreeSet::new())).collect();
        if !members.is_empty() {
            let offset = self.rng.random_range(0..members.len());
            for partition in 0..PARTITIONS {
                let owner = members[(partition as usize + offset) % members.len()];
                shares.entry(owner).or_default().insert(partition);
            }
        }
        for (id, share) in shares {
            let mut member = lock(&self.slots[id].member);
            // What the member last heard the group give it.
            let before = member
                .changes
                .iter()
                .rev()
                .find_map(|change| match change {
                    GroupChange::Assigned(partitions) => Some(partitions.clone()),
                    GroupChange::Revoked => None,
                })
                .unwrap_or_else(|| member.assigned.clone());
            // Only a member that loses partitions and gains none reads on from its old share
            // (a zombie): the new owners take theirs over at once.
            let loses_only = !before.is_subset(&share) && share.is_subset(&before);
            let stale = if loses_only && self.rng.random_bool(0.8) {
                self.rng.random_range(2..=8)
            } else {
                0
            };
            member.changes.push_back(GroupChange::Revoked);
            member
                .changes
                .push_back(GroupChange::Assigned(share.clone()));
            member.stale_batches = stale;
            drop(member);
            self.note(format!(
                "group: runner {id} gets {share:?} (after {stale} stale batches)"
            ));
        }
    }
}

fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Whether a runner's error is one a real process would exit on and be restarted after (an
/// injected outage while it was not riding one out), as opposed to a bug.
fn expected_exit(error: &str) -> bool {
    error.contains("simulated catalog outage") || error.contains("simulated object store outage")
}

// ---------------------------------------------------------------------------------------------
// One schedule.

/// How a schedule may go wrong on purpose.
#[derive(Debug, Clone, Copy)]
struct Faults {
    catalog_errors: bool,
    crashes: bool,
    zombies: bool,
    /// The warehouse fails a few writes now and then.
    store_errors: bool,
    /// A partition read to its end and silent this long stops holding its windows open: events
    /// it delivers later may be late for windows the others closed (`None`: never).
    idle_timeout: Option<Duration>,
    /// `commit.mode: one_committer`: the holder of partition 0 lands the others' shares.
    one_committer: bool,
}

impl Sim {
    /// A world of `seed` with the tables of `template` copied into `folder`, and no runner
    /// yet.
    async fn new(
        seed: u64,
        folder: &Path,
        template: &Template,
        planned: Arc<Planned>,
        rng: ChaCha8Rng,
    ) -> Result<Sim, Failure> {
        let mut rng = rng;
        let config = sim_config(folder, &template.warehouse());
        let pipeline = config.pipelines[0].clone();
        template.copy_to(folder)?;
        let store = Arc::new(StoreFaults::default());
        let catalog = faulty_catalog(&config, store.clone()).await?;
        let world = Arc::new(Mutex::new(World::new(&mut rng)));
        let (report_to, reports) = mpsc::unbounded_channel();
        let (shutdown_tx, shutdown) = shutdown_channel();
        Ok(Sim {
            seed,
            rng,
            config: Arc::new(config),
            pipeline,
            planned,
            catalog,
            store,
            world,
            control: ControlLog::default(),
            clock: Arc::new(SimClock {
                start: Instant::now(),
                elapsed: Mutex::new(Duration::ZERO),
            }),
            reports,
            report_to,
            slots: Vec::new(),
            members: BTreeSet::new(),
            maintainer: None,
            trace: vec![format!("seed {seed}")],
            _shutdown: shutdown_tx,
            shutdown,
        })
    }
}

/// The catalog of `config`, failing the warehouse writes `faults` fails.
async fn faulty_catalog(
    config: &Config,
    faults: Arc<StoreFaults>,
) -> Result<Arc<dyn Catalog>, Failure> {
    open_catalog_over(config, &config.pipelines[0].sink, |inner| {
        Arc::new(FaultyStorageFactory {
            inner: Some(inner),
            faults,
        })
    })
    .await
    .map_err(|e| Failure(describe(&e)))
}

/// The tables as `setup` leaves them (with uncompressed files), made once per thread: each
/// of the thread's schedules starts from a copy of the catalog database in a folder of its own
/// and of the warehouse files in the thread's warehouse folder (Iceberg's locations are
/// absolute, and the thread runs one schedule at a time).
struct Template {
    folder: tempfile::TempDir,
    /// The warehouse's files as set up, by path.
    files: Vec<(std::path::PathBuf, Vec<u8>)>,
}

impl Template {
    const DATABASE: &str = "catalog.db";
    /// A snapshot of the database no connection has open.
    const SNAPSHOT: &str = "catalog-snapshot.db";

    async fn new(planned: &Planned) -> Result<Template, Failure> {
        let folder = scratch_folder()?;
        let warehouse = folder.path().join("warehouse");
        let config = sim_config(folder.path(), &warehouse);
        let pipeline = &config.pipelines[0];
        campaign_pipeline::setup::ensure_tables(&config, pipeline, planned.sql())
            .await
            .map_err(|e| Failure(describe(&e)))?;
        let catalog = faulty_catalog(&config, Arc::default()).await?;
        uncompressed(catalog.as_ref(), &pipeline.sink.namespace).await?;
        let mut files = Vec::new();
        let mut folders = vec![warehouse];
        while let Some(dir) = folders.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| Failure(e.to_string()))? {
                let path = entry.map_err(|e| Failure(e.to_string()))?.path();
                if path.is_dir() {
                    folders.push(path);
                } else {
                    let bytes = std::fs::read(&path).map_err(|e| Failure(e.to_string()))?;
                    files.push((path, bytes));
                }
            }
        }
        // The catalog's connections may still be open (and checkpoint their write-ahead log
        // when they close): schedules copy a snapshot none of them touches.
        snapshot(
            &folder.path().join(Self::DATABASE),
            &folder.path().join(Self::SNAPSHOT),
        )
        .await
        .map_err(|e| Failure(format!("snapshotting the catalog: {e}")))?;
        Ok(Template { folder, files })
    }

    fn warehouse(&self) -> std::path::PathBuf {
        self.folder.path().join("warehouse")
    }

    /// Copies the catalog database into `folder` and puts the warehouse back as set up.
    fn copy_to(&self, folder: &Path) -> Result<(), Failure> {
        let failed = |what: &str, e: std::io::Error| Failure(format!("{what}: {e}"));
        std::fs::copy(
            self.folder.path().join(Self::SNAPSHOT),
            folder.join(Self::DATABASE),
        )
        .map_err(|e| failed("copying the catalog", e))?;
        let warehouse = self.warehouse();
        match std::fs::remove_dir_all(&warehouse) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(failed("emptying the warehouse", e))
            }
            _ => {}
        }
        for (path, bytes) in &self.files {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| failed("copying the warehouse", e))?;
            }
            std::fs::write(path, bytes).map_err(|e| failed("copying the warehouse", e))?;
        }
        Ok(())
    }
}

/// Writes a consistent copy of the SQLite database `from` to `to`.
async fn snapshot(from: &Path, to: &Path) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut connection =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", from.display())).await?;
    sqlx::query("VACUUM INTO ?")
        .bind(to.display().to_string())
        .execute(&mut connection)
        .await?;
    connection.close().await
}

/// A temporary folder, in memory where the machine has a memory file system: SQLite's
/// writes need not reach a disk for the schedule to be the same.
fn scratch_folder() -> Result<tempfile::TempDir, Failure> {
    match Path::new("/dev/shm") {
        shm if shm.is_dir() => tempfile::tempdir_in(shm),
        _ => tempfile::tempdir(),
    }
    .map_err(|e| Failure(format!("a temporary folder: {e}")))
}

async fn run_schedule(
    seed: u64,
    folder: &Path,
    template: &Template,
    planned: Arc<Planned>,
) -> Result<Vec<String>, (Failure, Vec<String>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let faults = Faults {
        catalog_errors: rng.random_bool(0.7),
        crashes: rng.random_bool(0.7),
        zombies: rng.random_bool(0.7),
        store_errors: rng.random_bool(0.5),
        // Short spells are the ones that bite: a partition read to its end while another of the
        // runner's still has a backlog.
        idle_timeout: rng.random_bool(0.5).then(|| {
            let longest = if rng.random_bool(0.5) { 50 } else { 3_000 };
            Duration::from_millis(rng.random_range(1..=longest))
        }),
        // Drawn apart from the schedule's own numbers, which stay what they were.
        one_committer: ChaCha8Rng::seed_from_u64(seed ^ 0x0c0_aa17).random_bool(0.5),
    };
    let mut sim = Sim::new(seed, folder, template, planned, rng)
        .await
        .map_err(|failure| (failure, Vec::new()))?;
    if faults.one_committer {
        let mut config = (*sim.config).clone();
        config.pipelines[0].commit.mode = CommitMode::OneCommitter;
        sim.pipeline = config.pipelines[0].clone();
        sim.config = Arc::new(config);
    }
    if let Some(idle_timeout) = faults.idle_timeout {
        // Partitions whose event times drift apart: one that falls silent is raised to the
        // others' watermark, and what it delivers later may be late.
        lock(&sim.world).time_step = vec![2_000_000, 15_000_000, 25_000_000];
        let mut config = (*sim.config).clone();
        config.pipelines[0].window.idle_timeout = idle_timeout;
        sim.pipeline = config.pipelines[0].clone();
        sim.config = Arc::new(config);
    }
    sim.note(format!("{faults:?}"));
    let result = schedule(&mut sim, faults).await;
    for slot in &sim.slots {
        slot.task.abort();
    }
    let result = match result {
        Ok(()) => check(&sim).await,
        Err(failure) => Err(failure),
    };
    match result {
        Ok(()) => Ok(std::mem::take(&mut sim.trace)),
        Err(failure) => Err((failure, std::mem::take(&mut sim.trace))),
    }
}

async fn schedule(sim: &mut Sim, faults: Faults) -> Result<(), Failure> {
    let first = sim.rng.random_range(1..=3);
    for _ in 0..first {
        sim.start(false).await?;
    }
    let live = sim.alive();
    sim.rebalance(&live);
    let actions = sim.rng.random_range(20..60);
    let mut starts = first;
    for _ in 0..actions {
        let tick = Duration::from_millis(sim.rng.random_range(0..1000));
        sim.clock.advance(tick);
        let live = sim.alive();
        let gated: Vec<usize> = live
            .iter()
            .copied()
            .filter(|id| matches!(sim.slots[*id].state, State::Gated(..)))
            .collect();
        let idle: Vec<usize> = live
            .iter()
            .copied()
            .filter(|id| matches!(sim.slots[*id].state, State::Idle))
            .collect();
        let roll = sim.rng.random_range(0..100);
        let outcome = match roll {
            0..=49 if !idle.is_empty() => {
                let id = idle[sim.rng.random_range(0..idle.len())];
                sim.note(format!("runner {id} steps"));
                Some((id, sim.command(id, Command::Step).await?))
            }
            0..=79 if !gated.is_empty() => {
                let id = gated[sim.rng.random_range(0..gated.len())];
                let is_commit = matches!(sim.slots[id].state, State::Gated(Op::Commit(_), _));
                let is_wait = matches!(sim.slots[id].state, State::Gated(Op::Await, _));
                let fault = sim.rng.random_range(0..100);
                if faults.crashes && fault < 5 {
                    sim.note(format!("runner {id} crashes at its catalog call"));
                    sim.crash(id);
                    None
                } else {
                    let decision = match fault {
                        // A runner waiting for the committer's answer gives up (the answer,
                        // if one comes, comes too late), or waits on.
                        0..=29 if is_wait => Decision::Fail,
                        _ if is_wait => Decision::Proceed,
                        5..=9 if faults.catalog_errors => Decision::Fail,
                        10..=14 if faults.catalog_errors && is_commit => Decision::LoseAnswer,
                        _ => Decision::Proceed,
                    };
                    Some((id, sim.release(id, decision).await?))
                }
            }
            80..=82 if faults.crashes && !idle.is_empty() => {
                let id = idle[sim.rng.random_range(0..idle.len())];
                sim.note(format!("runner {id} crashes between steps"));
                sim.crash(id);
                None
            }
            83..=85 if starts < 8 && live.len() < 4 => {
                starts += 1;
                let id = sim.start(false).await?;
                let live = sim.alive();
                if live.contains(&id) {
                    sim.rebalance(&live);
                }
                None
            }
            86..=89 => {
                // A maintenance pass (compaction, manifest merging, expiry, sweep) lands
                // between the runners' catalog calls: a runner at its commit finds the table
                // replaced under its base.
                let maintainer = match sim.maintainer.take() {
                    Some(maintainer) => maintainer,
                    None => Maintainer::open(&sim.config, &sim.pipeline)
                        .await
                        .map_err(|e| Failure(describe(&e)))?,
                };
                for report in maintainer.run_once().await {
                    let report = report
                        .map_err(|e| Failure(format!("maintenance failed: {}", describe(&e))))?;
                    sim.note(format!("maintenance: {report}"));
                }
                sim.maintainer = Some(maintainer);
                None
            }
            90..=93 => {
                // The group notices who is gone (a session timeout) and assigns again.
                let zombie = faults.zombies;
                if !zombie {
                    for id in &live {
                        lock(&sim.slots[*id].member).stale_batches = 0;
                    }
                }
                sim.rebalance(&live);
                if !zombie {
                    for id in &live {
                        lock(&sim.slots[*id].member).stale_batches = 0;
                    }
                }
                None
            }
            94..=95 if faults.store_errors => {
                // The object store fails the next writes, whoever makes them: a data file, a
                // manifest, a window checkpoint or a table's metadata.
                let writes = sim.rng.random_range(1..=3);
                sim.store.fail_next.store(writes, Ordering::Relaxed);
                sim.note(format!("the object store fails the next {writes} writes"));
                None
            }
            _ => {
                let partition = sim.rng.random_range(0..PARTITIONS);
                let count = sim.rng.random_range(1..=8);
                let world = sim.world.clone();
                lock(&world).produce(&mut sim.rng, partition, count);
                sim.note(format!("{count} events appended to partition {partition}"));
                None
            }
        };
        if let Some((id, Err(error))) = outcome {
            if !expected_exit(&error) {
                return Err(Failure(format!("runner {id} failed: {error}")));
            }
            sim.note(format!("runner {id} exits: {error}"));
            sim.crash(id);
        }
    }
    // Every runner of the schedule dies; a last one reads the topic to its end, flushes the
    // open windows and commits (no more faults).
    for id in sim.alive() {
        sim.crash(id);
    }
    sim.store.fail_next.store(0, Ordering::Relaxed);
    sim.note("every runner is gone; a last one catches up".into());
    let last = sim.start(true).await?;
    if !sim.alive().contains(&last) {
        return Err(Failure("the last runner did not open".into()));
    }
    let opened = sim.proceed(last, Ok(None)).await?;
    if let Err(error) = opened {
        return Err(Failure(format!("the last runner did not open: {error}")));
    }
    sim.rebalance(&[last]);
    lock(&sim.slots[last].member).stale_batches = 0;
    // A batch run reads as fast as the log allows: a short tick per step (the interval seldom
    // passes, so it commits when caught up), chosen per schedule.
    let tick = Duration::from_millis(sim.rng.random_range(10..=50));
    let mut steps = 0;
    loop {
        steps += 1;
        if steps > 5000 {
            return Err(Failure(
                "the last runner did not catch up in 5000 steps".into(),
            ));
        }
        sim.clock.advance(tick);
        let outcome = sim.command(last, Command::Step).await?;
        match sim.proceed(last, outcome).await? {
            Ok(Some(Flow::Next)) => continue,
            Ok(_) => {}
            Err(error) => return Err(Failure(format!("the last runner failed: {error}"))),
        }
        let finished = sim.command(last, Command::Finish).await?;
        match sim.proceed(last, finished).await? {
            Ok(Some(Flow::Stop)) => return Ok(()),
            Ok(_) => continue,
            Err(error) => return Err(Failure(format!("the last commit failed: {error}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the tables and the dead letters must hold.

/// The rows of table `name`, with the `columns` given (all when `None`).
async fn scan(
    catalog: &dyn Catalog,
    name: &str,
    columns: Option<&[&str]>,
) -> Result<(Table, Vec<RecordBatch>), Failure> {
    let fail = |e: Error| Failure(format!("reading {name}: {e}"));
    let ident = TableIdent::from_strs(["sim", name]).map_err(fail)?;
    let table = catalog.load_table(&ident).await.map_err(fail)?;
    let scan = table.scan();
    let scan = match columns {
        Some(columns) => scan.select(columns.iter().copied()),
        None => scan.select_all(),
    };
    let batches = scan
        .build()
        .map_err(fail)?
        .to_arrow()
        .await
        .map_err(fail)?
        .try_collect()
        .await
        .map_err(fail)?;
    Ok((table, batches))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, Failure> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| Failure(format!("no column {name}")))
}

fn micros(batch: &RecordBatch, name: &str) -> Result<Vec<i64>, Failure> {
    let cast = arrow::compute::cast(column(batch, name)?, &DataType::Int64)
        .map_err(|e| Failure(e.to_string()))?;
    Ok(cast.as_primitive::<Int64Type>().values().to_vec())
}

fn int64s(batch: &RecordBatch, name: &str) -> Result<Vec<i64>, Failure> {
    micros(batch, name)
}

fn floats(batch: &RecordBatch, name: &str) -> Result<Vec<Option<f64>>, Failure> {
    let cast = arrow::compute::cast(column(batch, name)?, &DataType::Float64)
        .map_err(|e| Failure(e.to_string()))?;
    Ok(cast.as_primitive::<Float64Type>().iter().collect())
}

fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<String>, Failure> {
    let cast = arrow::compute::cast(column(batch, name)?, &DataType::Utf8)
        .map_err(|e| Failure(e.to_string()))?;
    Ok(cast
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect())
}

#[derive(Debug, Default, Clone, PartialEq)]
struct WindowCounts {
    impressions: i64,
    clicks: i64,
    conversions: i64,
    revenue: f64,
}

/// Per partition, in offset order: whether each valid event is late for the windows (the
/// operator's rule, row by row: its window ended at or before the partition's watermark, the
/// highest event time so far minus the allowed lateness).
fn late_events(world: &World) -> BTreeSet<String> {
    let mut late = BTreeSet::new();
    for log in &world.log {
        let mut max_event: Option<i64> = None;
        for message in log {
            let Kind::Valid(event) = &message.kind else {
                continue;
            };
            let t = event.time_micros;
            let window_start = t - t.rem_euclid(WINDOW_MICROS);
            if max_event.is_some_and(|m| window_start + WINDOW_MICROS <= m - LATENESS_MICROS) {
                late.insert(event.event_id.clone());
            }
            max_event = Some(max_event.map_or(t, |m| m.max(t)));
        }
    }
    late
}

async fn check(sim: &Sim) -> Result<(), Failure> {
    let (events_table, batches) =
        scan(sim.catalog.as_ref(), "campaign_events", Some(&["event_id"])).await?;
    let (metrics_table, metrics_batches) =
        scan(sim.catalog.as_ref(), "campaign_metrics", None).await?;
    let world = lock(&sim.world);

    // The dead letters by the source coordinates they name, with their categories.
    let mut letters: BTreeMap<(i32, i64), BTreeSet<String>> = BTreeMap::new();
    for record in &world.dead_letters {
        let letter: serde_json::Value = serde_json::from_slice(record)
            .map_err(|e| Failure(format!("a dead letter does not read: {e}")))?;
        let partition = letter["source"]["partition"].as_i64().unwrap_or(-1) as i32;
        let offset = letter["source"]["offset"].as_i64().unwrap_or(-1);
        let category = letter["category"].as_str().unwrap_or_default().to_string();
        letters
            .entry((partition, offset))
            .or_default()
            .insert(category);
    }
    // Late for the windows: what the log makes late, and with idle timeouts also what a
    // partition's idle spell made late (its windows closed with the others'), which only the
    // runners' clock decides: those events were dead-lettered as late, so they must be in no
    // window, and the log's late events must be among them.
    let mut late = late_events(&world);
    if sim.pipeline.window.idle_timeout < Duration::from_secs(86_400) {
        for (partition, log) in world.log.iter().enumerate() {
            for (offset, message) in log.iter().enumerate() {
                let Kind::Valid(event) = &message.kind else {
                    continue;
                };
                let lettered = letters.get(&(partition as i32, offset as i64));
                if lettered.is_some_and(|categories| categories.contains("late")) {
                    late.insert(event.event_id.clone());
                }
            }
        }
    }

    // Every valid event exactly once in the events table.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for batch in &batches {
        for id in strings(batch, "event_id")? {
            *seen.entry(id).or_default() += 1;
        }
    }
    let mut expected_windows: BTreeMap<(String, i64), WindowCounts> = BTreeMap::new();
    for (partition, log) in world.log.iter().enumerate() {
        for (offset, message) in log.iter().enumerate() {
            let Kind::Valid(event) = &message.kind else {
                continue;
            };
            match seen.remove(&event.event_id) {
                Some(1) => {}
                Some(n) => {
                    return Err(Failure(format!(
                        "event {} (partition {partition} offset {offset}) is in campaign_events {n} times",
                        event.event_id
                    )))
                }
                None => {
                    return Err(Failure(format!(
                        "event {} (partition {partition} offset {offset}) is missing from campaign_events",
                        event.event_id
                    )))
                }
            }
            if late.contains(&event.event_id) {
                continue;
            }
            let start = event.time_micros - event.time_micros.rem_euclid(WINDOW_MICROS);
            let counts = expected_windows
                .entry((event.campaign.clone(), start))
                .or_default();
            match event.event_type {
                "impression" => counts.impressions += 1,
                "click" => counts.clicks += 1,
                _ => {
                    counts.conversions += 1;
                    counts.revenue += event.revenue;
                }
            }
        }
    }
    if let Some((id, n)) = seen.into_iter().next() {
        return Err(Failure(format!(
            "campaign_events holds {n} row(s) of event {id}, which is not a valid event of the topic"
        )));
    }

    // Every window closed once, with exact counts, revenue and rates.
    let mut found: BTreeMap<(String, i64), WindowCounts> = BTreeMap::new();
    for batch in &metrics_batches {
        let campaigns = strings(batch, "campaign_id")?;
        let starts = micros(batch, "window_start")?;
        let impressions = int64s(batch, "impressions")?;
        let clicks = int64s(batch, "clicks")?;
        let conversions = int64s(batch, "conversions")?;
        let revenue = floats(batch, "revenue")?;
        let ctr = floats(batch, "ctr_percent")?;
        let cvr = floats(batch, "cvr_percent")?;
        for i in 0..batch.num_rows() {
            let key = (campaigns[i].clone(), starts[i]);
            let counts = WindowCounts {
                impressions: impressions[i],
                clicks: clicks[i],
                conversions: conversions[i],
                revenue: revenue[i].unwrap_or_default(),
            };
            let rate = |num: i64, den: i64| (den != 0).then(|| num as f64 * 100.0 / den as f64);
            let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                (a, b) => a.is_none() && b.is_none(),
            };
            if !close(ctr[i], rate(counts.clicks, counts.impressions))
                || !close(cvr[i], rate(counts.conversions, counts.clicks))
            {
                return Err(Failure(format!(
                    "window {key:?}: rates {:?} / {:?} do not follow its counts {counts:?}",
                    ctr[i], cvr[i]
                )));
            }
            if found.insert(key.clone(), counts).is_some() {
                return Err(Failure(format!(
                    "window {key:?} is in campaign_metrics twice"
                )));
            }
        }
    }
    for (key, expected) in &expected_windows {
        let Some(got) = found.remove(key) else {
            return Err(Failure(format!(
                "window {key:?} ({expected:?}) is missing from campaign_metrics"
            )));
        };
        let same = got.impressions == expected.impressions
            && got.clicks == expected.clicks
            && got.conversions == expected.conversions
            && (got.revenue - expected.revenue).abs() <= 1e-6 * expected.revenue.abs().max(1.0);
        if !same {
            return Err(Failure(format!(
                "window {key:?}: campaign_metrics holds {got:?}, the topic's on-time events make {expected:?}"
            )));
        }
    }
    if let Some((key, got)) = found.into_iter().next() {
        return Err(Failure(format!(
            "window {key:?} ({got:?}) is in campaign_metrics but no on-time event falls in it"
        )));
    }

    // Every rejection in the dead letters (at least once), and nothing else.
    for (partition, log) in world.log.iter().enumerate() {
        for (offset, message) in log.iter().enumerate() {
            let at = (partition as i32, offset as i64);
            let categories = letters.remove(&at).unwrap_or_default();
            let expected = match &message.kind {
                Kind::Valid(event) if late.contains(&event.event_id) => Some("late"),
                Kind::Valid(_) => None,
                Kind::Invalid | Kind::NotUtf8 => Some("rejected"),
            };
            match (expected, categories.is_empty()) {
                (None, false) => {
                    return Err(Failure(format!(
                        "partition {partition} offset {offset}: a valid, on-time event has dead letters {categories:?}"
                    )))
                }
                (Some(what), true) => {
                    return Err(Failure(format!(
                        "partition {partition} offset {offset}: the {what} message has no dead letter"
                    )))
                }
                (Some("late"), false) if !categories.iter().all(|c| c == "late") => {
                    return Err(Failure(format!(
                        "partition {partition} offset {offset}: a late event's dead letters are {categories:?}"
                    )))
                }
                (Some("rejected"), false) if categories.iter().any(|c| c == "late") => {
                    return Err(Failure(format!(
                        "partition {partition} offset {offset}: a rejected message was dead-lettered as late"
                    )))
                }
                _ => {}
            }
        }
    }
    if let Some((at, categories)) = letters.into_iter().next() {
        return Err(Failure(format!(
            "dead letters {categories:?} name {at:?}, which is not in the topic"
        )));
    }

    // Offsets never go back, and both tables end at the topic's end.
    for table in [&events_table, &metrics_table] {
        let name = table.identifier().name().to_string();
        let mut snapshots: Vec<_> = table.metadata().snapshots().collect();
        snapshots.sort_by_key(|s| s.sequence_number());
        let mut last = Offsets::new();
        for snapshot in snapshots {
            let Some(text) = snapshot.summary().additional_properties.get(OFFSETS) else {
                continue;
            };
            let offsets = Offsets::from_json(text)
                .map_err(|e| Failure(format!("{name}: offsets do not read: {e}")))?;
            for (topic, partition, before) in last.iter() {
                let now = offsets.get(topic, partition);
                if now.is_none_or(|n| n < before) {
                    return Err(Failure(format!(
                        "{name}: snapshot {} moves partition {partition} back from {before} to {now:?}",
                        snapshot.snapshot_id()
                    )));
                }
            }
            last = offsets;
        }
        for (partition, log) in world.log.iter().enumerate() {
            let end = log.len() as i64;
            if last.get(TOPIC, partition as i32) != Some(end) {
                return Err(Failure(format!(
                    "{name}: ends at {:?} for partition {partition}, whose end is {end}",
                    last.get(TOPIC, partition as i32)
                )));
            }
        }
    }
    Ok(())
}

/// The simulation's configuration: the catalog database in `folder`, the warehouse at
/// `warehouse`.
fn sim_config(folder: &Path, warehouse: &Path) -> Config {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        r#"
pipelines:
  - name: sim
    source:
      brokers: 127.0.0.1:9
      topic: {TOPIC}
      partitions: {PARTITIONS}
      replication_factor: 1
      group_id: sim
      start_from: earliest
    sql:
      parse: {parse}
      metrics: {metrics}
    window:
      allowed_lateness: 10s
      idle_timeout: 3650d
      max_future: 5m
      max_past: 7d
    batch:
      max_rows: 16
      max_wait: 200ms
    commit:
      interval: 1s
      max_rows: 500000
      retry_for: 15m
    sink:
      catalog:
        type: sqlite
        path: catalog.db
        warehouse: {warehouse}
      namespace: sim
      events_table:
        name: campaign_events
        partition_by: [event_type]
      metrics_table:
        name: campaign_metrics
        partition_by: []
    dead_letter:
      topic: dead_letter_queue
      partitions: 1
      retention: 7d
    maintenance:
      enabled: false
      min_input_files: 2
      target_file_mb: 1
      max_manifests: 4
      snapshot_max_age: 0s
      keep_snapshots: 2
      keep_metadata_files: 5
"#,
        parse = root.join("sql/campaign_events.sql").display(),
        metrics = root.join("sql/campaign_metrics.sql").display(),
        warehouse = warehouse.display(),
    );
    let path = folder.join("pipelines.yaml");
    Config::parse(&text, &path).expect("the simulation's configuration reads")
}

// ---------------------------------------------------------------------------------------------

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000u64);
    (0..count).collect()
}

/// Sets both tables to write uncompressed files: a codec changes no decision of the commit
/// protocol, and setting up a zstd context per column chunk is a good part of a schedule's time.
async fn uncompressed(catalog: &dyn Catalog, namespace: &str) -> Result<(), Failure> {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    for name in ["campaign_events", "campaign_metrics"] {
        let ident = TableIdent::new(NamespaceIdent::new(namespace.to_string()), name.to_string());
        let failed = |e: Error| Failure(format!("setting {name}'s codec: {e}"));
        let table = catalog.load_table(&ident).await.map_err(failed)?;
        let tx = Transaction::new(&table);
        let tx = tx
            .update_table_properties()
            .set(
                campaign_pipeline::sink::iceberg::CODEC_PROPERTY.to_string(),
                "uncompressed".to_string(),
            )
            .apply(tx)
            .map_err(failed)?;
        tx.commit(catalog).await.map_err(failed)?;
    }
    Ok(())
}

/// The seeds still to run, taken one at a time by the threads that run them (a thread that
/// drew longer schedules takes fewer), and whether one failed (the others then stop).
struct SeedQueue {
    seeds: Vec<u64>,
    next: AtomicUsize,
    failed: AtomicBool,
}

impl SeedQueue {
    fn take(&self) -> Option<u64> {
        if self.failed.load(Ordering::Relaxed) {
            return None;
        }
        self.seeds
            .get(self.next.fetch_add(1, Ordering::Relaxed))
            .copied()
    }
}

/// Runs seeds from `queue` on one thread, one schedule after another, until none is left or
/// one fails.
fn run_seeds(queue: &SeedQueue, verbose: bool) -> Result<usize, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let planned = local.block_on(&runtime, async {
        let config = sim_config(Path::new("/nonexistent"), Path::new("/nonexistent"));
        Planned::new(&config, &config.pipelines[0]).await
    });
    let planned = Arc::new(planned.map_err(|e| describe(&e))?);
    let template = local
        .block_on(&runtime, Template::new(&planned))
        .map_err(|Failure(why)| format!("setting up the tables: {why}"))?;
    let mut ran = 0;
    while let Some(seed) = queue.take() {
        let folder = scratch_folder().map_err(|Failure(why)| why)?;
        let outcome = local.block_on(
            &runtime,
            run_schedule(seed, folder.path(), &template, planned.clone()),
        );
        match outcome {
            Ok(trace) => {
                if verbose {
                    println!("{}", trace.join("\n"));
                }
            }
            Err((Failure(why), trace)) => {
                queue.failed.store(true, Ordering::Relaxed);
                return Err(format!(
                    "seed {seed} failed: {why}\nits schedule:\n  {}\nreplay: SIM_SEED={seed} cargo test --test simulation -- --nocapture",
                    trace.join("\n  ")
                ));
            }
        }
        ran += 1;
    }
    Ok(ran)
}

#[test]
fn every_schedule_of_runners_crashes_rebalances_and_outages_keeps_the_tables_exact() {
    let seeds = seeds();
    let verbose = seeds.len() == 1;
    // Two schedules per core: a schedule's thread waits on SQLite's connection threads, and
    // another schedule fills that time.
    let threads =
        (2 * std::thread::available_parallelism().map_or(2, |n| n.get())).min(seeds.len().max(1));
    let started = Instant::now();
    let count = seeds.len();
    let queue = Arc::new(SeedQueue {
        seeds,
        next: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
    });
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let queue = queue.clone();
            std::thread::spawn(move || run_seeds(&queue, verbose))
        })
        .collect();
    let mut ran = 0;
    let mut failures = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(Ok(n)) => ran += n,
            Ok(Err(failure)) => failures.push(failure),
            Err(_) => failures.push("a simulation thread panicked".into()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(ran, count);
    println!(
        "{ran} schedules in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Runs `scenario` for each of `seeds` on one thread, each in a world of its own.
fn run_scenario<F>(seeds: std::ops::Range<u64>, scenario: F)
where
    F: for<'a> Fn(&'a mut Sim) -> futures::future::LocalBoxFuture<'a, Result<(), Failure>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    let planned = local
        .block_on(&runtime, async {
            let config = sim_config(Path::new("/nonexistent"), Path::new("/nonexistent"));
            Planned::new(&config, &config.pipelines[0]).await
        })
        .map(Arc::new)
        .unwrap_or_else(|e| panic!("{}", describe(&e)));
    let template = local
        .block_on(&runtime, Template::new(&planned))
        .unwrap_or_else(|Failure(why)| panic!("setting up the tables: {why}"));
    for seed in seeds {
        let folder = scratch_folder().unwrap_or_else(|Failure(why)| panic!("{why}"));
        let outcome = local.block_on(&runtime, async {
            let rng = ChaCha8Rng::seed_from_u64(seed);
            let mut sim = Sim::new(seed, folder.path(), &template, planned.clone(), rng).await?;
            let outcome = scenario(&mut sim).await;
            for slot in &sim.slots {
                slot.task.abort();
            }
            outcome.map_err(|Failure(why)| Failure(format!("{why}\n  {}", sim.trace.join("\n  "))))
        });
        if let Err(Failure(why)) = outcome {
            panic!("seed {seed}: {why}");
        }
    }
}

/// `run --until-caught-up --flush-open-windows` beside a live runner that holds the other
/// partitions: it ends well only once the tables hold every partition of the topic up to its
/// end; and since only the holder of a partition can flush its windows, while the other's
/// partitions have open windows it does not end well but gives up naming them.
#[test]
fn a_batch_run_beside_a_live_runner_ends_well_only_once_the_tables_hold_every_partition() {
    run_scenario(0..20, |sim| {
        Box::pin(async move {
            let (other, last) = sim.batch_run_beside_another().await?;
            for _ in 0..5000 {
                let id = if sim.rng.random_bool(0.5) {
                    other
                } else {
                    last
                };
                let stepped = sim.step_through(id).await?;
                let unflushed = match &stepped {
                    Ok(Some(Flow::Stop)) if id == last => false,
                    Err(error) if id == last && error.contains("--flush-open-windows") => {
                        if !error.contains("partition(s) 1, 2 ") {
                            return Err(Failure(format!(
                                "the batch run gave up naming other partitions: {error}"
                            )));
                        }
                        true
                    }
                    Ok(_) => continue,
                    Err(error) => return Err(Failure(error.clone())),
                };
                let (tables, ends) = sim.standing().await?;
                let behind: Vec<_> = (0..ends.len())
                    .filter(|p| tables[*p] != Some(ends[*p]))
                    .map(|p| format!("partition {p}: tables at {:?} of {}", tables[p], ends[p]))
                    .collect();
                return match (behind.is_empty(), unflushed) {
                    (true, false) => Ok(()),
                    (true, true) => {
                        sim.note("the batch run gave up on the other's open windows".into());
                        Ok(())
                    }
                    (false, false) => Err(Failure(format!(
                        "the batch run ended well with {}",
                        behind.join(", ")
                    ))),
                    (false, true) => Err(Failure(format!(
                        "the batch run gave up on open windows before the tables held {}",
                        behind.join(", ")
                    ))),
                };
            }
            Err(Failure("the batch run did not end in 5000 steps".into()))
        })
    });
}

/// `run --until-caught-up` beside partitions a dead runner still holds (the group has not
/// moved them: tansu may never), which gained events after it died: it does not end well, and
/// gives up with an error naming them once they made no progress for `--max-unassigned`.
#[test]
fn a_batch_run_beside_partitions_no_one_reads_fails_naming_them() {
    run_scenario(100..110, |sim| {
        Box::pin(async move {
            let (other, last) = sim.batch_run_beside_another().await?;
            for _ in 0..sim.rng.random_range(0..6) {
                sim.step_through(other).await?.map_err(Failure)?;
            }
            sim.crash(other);
            sim.note("runner 0 dies; the group keeps its partitions".into());
            let world = sim.world.clone();
            lock(&world).produce(&mut sim.rng, 2, 3);
            for _ in 0..5000 {
                match sim.step_through(last).await? {
                    Ok(Some(Flow::Stop)) => {
                        return Err(Failure(
                            "the batch run ended well; partition 2 was never read to its end"
                                .into(),
                        ))
                    }
                    Ok(_) => {}
                    Err(error)
                        if error.contains("made no progress") && error.contains("partition 2") =>
                    {
                        return Ok(());
                    }
                    Err(error) => {
                        return Err(Failure(format!("the batch run failed otherwise: {error}")))
                    }
                }
            }
            Err(Failure("the batch run did not end in 5000 steps".into()))
        })
    });
}
