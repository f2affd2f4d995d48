//! Shared test support: one real tansu broker per test process on a free loopback port, isolated
//! configurations per test, the built runner binary, and read-back helpers.
#![allow(dead_code)]

pub mod postgres;
pub mod production;
pub mod proxy;
pub mod pyiceberg;
pub mod seaweed;
pub mod sql;
pub mod windows;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The repository root (where pipelines.yaml and sql/ live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running tansu broker.
pub struct Broker {
    /// `127.0.0.1:port`.
    pub address: String,
}

/// The broker shared by the tests of this process, started on first use. Tests stay independent by
/// using their own topic names (see [`unique`]).
pub fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(start_broker)
}

fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return PathBuf::from(path);
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let candidate = cargo_home.join("bin/tansu");
    assert!(
        candidate.exists(),
        "tansu is not installed at {}: run `scripts/broker.sh install` (or set TANSU_BIN)",
        candidate.display()
    );
    candidate
}

/// A free port on the loopback interface, below the kernel's ephemeral range: a port that
/// `bind(0)` hands out comes from that range, where any outgoing connection (a test's client, a
/// runner's, a server's) can take it as its source port before the server meant for it binds
/// it, and the server then fails to start. Picked at random (test binaries run side by side,
/// and a server may take ports next to the ones it is given).
pub fn free_port() -> u16 {
    const LOWEST: u64 = 10_000;
    let highest = u64::from(ephemeral_start());
    if highest <= LOWEST + 1_000 {
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
    }
    loop {
        let port = (LOWEST + random() % (highest - LOWEST)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A pseudo-random number (splitmix64), seeded per process from its id and the time.
fn random() -> u64 {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    static STATE: OnceLock<AtomicU64> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos() as u64);
        AtomicU64::new(nanos ^ (u64::from(std::process::id()) << 32))
    });
    let mut z = state
        .fetch_add(GOLDEN, Ordering::Relaxed)
        .wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where the kernel's ephemeral ports begin (Linux's default when it cannot be read).
pub fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn start_broker() -> Broker {
    let address = format!("127.0.0.1:{}", free_port());
    start_broker_on(&address, &address)
}

/// A pipeline on a broker of its own behind a proxy: cutting the proxy is the broker going
/// away, for this test only, with the broker's data kept.
pub struct ProxiedPipeline {
    /// The pipeline, configured with the proxy's address.
    pub pipeline: TestPipeline,
    /// The proxy in front of the broker.
    pub proxy: proxy::Proxy,
    _broker: Broker,
}

/// Starts a broker of the test's own behind a proxy, and a pipeline on it.
pub fn pipeline_behind_proxy() -> ProxiedPipeline {
    let proxy_address = format!("127.0.0.1:{}", free_port());
    let broker_address = format!("127.0.0.1:{}", free_port());
    let broker = private_broker(&broker_address, &proxy_address);
    let proxy = proxy::Proxy::start(&proxy_address, &broker_address);
    ProxiedPipeline {
        pipeline: TestPipeline::on_broker(&proxy.address),
        proxy,
        _broker: broker,
    }
}

/// A broker of a test's own, listening on `address` and telling clients to connect to
/// `advertised` (a [`proxy::Proxy`] in front of it, for example).
pub fn private_broker(address: &str, advertised: &str) -> Broker {
    start_broker_on(address, advertised)
}

fn start_broker_on(address: &str, advertised: &str) -> Broker {
    let address = address.to_string();
    let url = format!("tcp://{address}");
    let advertised_url = format!("tcp://{advertised}");
    let binary = tansu_binary();
    let mut command = Command::new(binary);
    command
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised_url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .env_remove("STORAGE_ENGINE")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = spawn_tied(command);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&address).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tansu exited at start: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "tansu did not listen on {address}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::mem::forget(child);
    Broker { address }
}

/// Name prefix of the folders the tests' servers keep after their process ends (for the logs a
/// failure message points at); `scripts/test.sh` removes the ones older than a test run.
pub const SERVER_DIR_PREFIX: &str = "campaign-pipeline-server-";

/// A folder for a server's data and logs that outlives the test process, on a disk with room to
/// write: SeaweedFS refuses every write when its disk has less than 1% free, which otherwise shows
/// up as S3 timeouts minutes later.
pub fn server_dir(server: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{SERVER_DIR_PREFIX}{server}-"))
        .tempdir()
        .expect("temp dir")
        .keep();
    let (free, total) = disk_space(&dir);
    assert!(
        free > total / 100 + (256 << 20),
        "{server}: {} has {} MiB free of {} MiB; SeaweedFS refuses writes below 1% free: free some space",
        dir.display(),
        free >> 20,
        total >> 20
    );
    dir
}

/// (free bytes for unprivileged users, total bytes) of the file system holding `path`.
fn disk_space(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    let block = stat.f_frsize as u64;
    (stat.f_bavail as u64 * block, stat.f_blocks as u64 * block)
}

/// Spawns a server that dies with this test process: it is spawned from a thread that lives as
/// long as the process and asks the kernel to kill the child when that thread dies, so no server
/// outlives its tests.
pub fn spawn_tied(mut command: Command) -> Child {
    let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<Child>>();
    std::thread::spawn(move || {
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        ready_tx.send(command.spawn()).expect("report child");
        loop {
            std::thread::park();
        }
    });
    ready_rx
        .recv()
        .expect("spawning thread")
        .expect("start server")
}

/// A name unique to this test process and call, for topics, groups and namespaces.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A test's own pipeline: topics and warehouse of its own, the repository's SQL files.
pub struct TestPipeline {
    /// Folder holding pipelines.yaml, the catalog and the warehouse.
    pub dir: tempfile::TempDir,
    /// Path of the generated pipelines.yaml.
    pub config: PathBuf,
    /// Source topic.
    pub topic: String,
    /// Dead letter topic.
    pub dlq_topic: String,
    /// Broker address.
    pub brokers: String,
}

impl TestPipeline {
    /// A pipeline on the shared broker with fresh topic names and an empty warehouse.
    pub fn new() -> Self {
        Self::with_sql(
            &repo_root().join("sql/campaign_events.sql"),
            &repo_root().join("sql/campaign_metrics.sql"),
        )
    }

    /// Same, with the given SQL files.
    pub fn with_sql(parse: &Path, metrics: &Path) -> Self {
        Self::build(broker().address.clone(), parse, metrics)
    }

    /// A pipeline on another broker (a private one), with the repository's SQL files.
    pub fn on_broker(brokers: &str) -> Self {
        Self::build(
            brokers.to_string(),
            &repo_root().join("sql/campaign_events.sql"),
            &repo_root().join("sql/campaign_metrics.sql"),
        )
    }

    /// A pipeline whose broker address leads nowhere, for commands that must not touch Kafka.
    pub fn offline(parse: &Path, metrics: &Path) -> Self {
        Self::build("127.0.0.1:9".to_string(), parse, metrics)
    }

    fn build(brokers: String, parse: &Path, metrics: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let topic = unique("events");
        let dlq_topic = unique("dlq");
        let yaml = format!(
            r#"pipelines:
  - name: test
    source:
      brokers: {brokers}
      topic: {topic}
      partitions: 3
      group_id: {group}
    window:
      # The tests replay fixed histories (event times from 2026-01-01): older than the
      # default bound on past event times, which its own test checks.
      max_past: 36500d
    sql:
      parse: {parse}
      metrics: {metrics}
    batch:
      max_rows: 10000
      max_wait: 200ms
    commit:
      interval: 5s
      max_rows: 500000
    sink:
      catalog:
        type: sqlite
        path: data/catalog.db
        warehouse: data/warehouse
      namespace: campaigns
      events_table:
        name: campaign_events
        partition_by: [campaign_id, event_type]
        properties:
          write.metadata.metrics.column.event_id: none
          write.metadata.metrics.column.user_id: none
      metrics_table:
        name: campaign_metrics
        partition_by: [campaign_id]
    dead_letter:
      topic: {dlq_topic}
      partitions: 1
      retention: 7d
"#,
            group = unique("group"),
            parse = parse.display(),
            metrics = metrics.display(),
        );
        let config = dir.path().join("pipelines.yaml");
        std::fs::write(&config, yaml).expect("write config");
        Self {
            dir,
            config,
            topic,
            dlq_topic,
            brokers,
        }
    }

    /// The data files (`.parquet`) under a table's folder in the embedded warehouse.
    pub fn parquet_files(&self, table: &str) -> Vec<PathBuf> {
        let folder = self.dir.path().join("data/warehouse/campaigns").join(table);
        files_under(&folder)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect()
    }

    /// Rewrites the configuration file (for example to change the commit interval).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let yaml = std::fs::read_to_string(&self.config).expect("read config");
        std::fs::write(&self.config, edit(yaml)).expect("write config");
    }

    /// The runner binary with this pipeline's configuration, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_campaign-pipeline"));
        command.arg("--config").arg(&self.config).args(args).env(
            "RUST_LOG",
            std::env::var("TEST_RUNNER_LOG").unwrap_or_else(|_| "warn".into()),
        );
        command
    }

    /// Starts the runner with logs at info level; its stderr lines arrive on the receiver.
    pub fn spawn_logged(&self, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
        spawn_logged(self.command(args))
    }

    /// Starts the runner with another configuration file (for example a copy with other
    /// settings beside this one), logged like [`Self::spawn_logged`].
    pub fn spawn_logged_with(
        &self,
        config: &Path,
        args: &[&str],
    ) -> (Child, mpsc::Receiver<String>) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_campaign-pipeline"));
        command.arg("--config").arg(config).args(args);
        spawn_logged(command)
    }

    /// Starts the runner with `args`, waits until the events table has taken `commits` more
    /// commits and `extra` more, then SIGKILLs it; `true` when it was still running to be
    /// killed.
    pub async fn kill_after_commits(&self, args: &[&str], commits: i64, extra: Duration) -> bool {
        let sequence = || async {
            load_table(&self.config, "campaign_events")
                .await
                .metadata()
                .last_sequence_number()
        };
        let start = sequence().await;
        let (mut child, _logs) = self.spawn_logged(args);
        let deadline = Instant::now() + Duration::from_secs(60);
        while sequence().await < start + commits
            && child.try_wait().expect("runner status").is_none()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(extra).await;
        let killed = child.try_wait().expect("runner status").is_none();
        if killed {
            child.kill().expect("SIGKILL");
        }
        child.wait().expect("runner exit");
        killed
    }

    /// Runs the runner binary with this pipeline's configuration.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.config, args)
    }
}

/// Where a tool installed by one of the repository's scripts lives: `env_var` when set, else
/// what `scripts/<script> <query>` prints; the test stops with the install command when it is
/// missing.
pub fn installed(env_var: &str, script: &str, query: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_var) {
        return PathBuf::from(path);
    }
    let script = repo_root().join("scripts").join(script);
    let output = Command::new(&script)
        .arg(query)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(
        path.exists(),
        "{} is not installed: run `{} install`",
        path.display(),
        script.display()
    );
    path
}

/// Starts `command` with logs at info level; its stderr lines arrive on the receiver.
pub fn spawn_logged(mut command: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = command
        .env(
            "RUST_LOG",
            std::env::var("TEST_RUNNER_LOG").unwrap_or_else(|_| "campaign=info".into()),
        )
        .stderr(Stdio::piped())
        .spawn()
        .expect("start runner");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Runs the built runner binary with `--config config` and the given arguments.
pub fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_campaign-pipeline"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("TEST_RUNNER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .output()
        .expect("run campaign-pipeline")
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One message read back from a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Header names and values, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads every message of every partition of `topic`, from the beginning to the end.
///
/// The end is where each partition reports end-of-partition from a fetch: tansu 0.6 answers
/// ListOffsets(latest) with a wrong offset, while the high watermark of its fetches is right.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let mut open: std::collections::HashSet<i32> = partitions.into_iter().collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !open.is_empty() {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic}; partitions {open:?} open"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// A plain HTTP/1.0 GET to a server on this machine: (status line, body), or `None` when it
/// does not answer.
pub fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// A sample of a Prometheus text exposition (`name value` or `name{labels} value`), if there.
pub fn metric_sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok()).flatten()
        })
}

/// A table of the test pipeline, loaded through its configured catalog.
pub async fn load_table(config: &Path, table: &str) -> iceberg::table::Table {
    let config = campaign_pipeline::config::Config::load(config).expect("config");
    let sink = &config.pipelines[0].sink;
    let catalog = campaign_pipeline::catalog::open_catalog(&config, sink)
        .await
        .expect("catalog");
    campaign_pipeline::sink::table::load_table(catalog.as_ref(), &sink.namespace, table)
        .await
        .expect("table")
}

/// Every row of an Iceberg table, read through iceberg's scan API.
pub async fn scan_table(config: &Path, table: &str) -> Vec<arrow::record_batch::RecordBatch> {
    use futures::TryStreamExt;
    let table = load_table(config, table).await;
    if table.metadata().current_snapshot().is_none() {
        return Vec::new();
    }
    table
        .scan()
        .build()
        .expect("scan")
        .to_arrow()
        .await
        .expect("arrow stream")
        .try_collect()
        .await
        .expect("rows")
}

/// The table's current snapshot summary properties (empty without a snapshot).
pub async fn snapshot_properties(
    config: &Path,
    table: &str,
) -> std::collections::HashMap<String, String> {
    let table = load_table(config, table).await;
    table
        .metadata()
        .current_snapshot()
        .map(|s| s.summary().additional_properties.clone())
        .unwrap_or_default()
}

/// Every file below `dir`, recursively (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
