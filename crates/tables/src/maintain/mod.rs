//! Table maintenance: keeps the tables healthy for months of frequent commits. Small files are
//! compacted and manifests merged in one `replace` commit (`replace`, swapped in by `swap`),
//! snapshots past the retention are expired with the files only they referenced (`expire`), and
//! superseded metadata files and orphans are swept (`orphans`). `maintain` runs one pass; `run`
//! runs one every `maintenance.interval` beside ingest. Every commit here is a compare-and-swap
//! that re-plans or rebases on a conflict, so it is safe beside running runners.

pub mod compact;
pub mod expire;
pub mod files;
pub mod listing;
pub mod orphans;
pub mod replace;
pub mod swap;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};

use crate::config::{Config, MaintenanceConfig, PipelineConfig};
use compact::Rewrite;
use expire::Expired;
use files::LiveFiles;
use orphans::{SweepError, SweepRules, Swept};
use replace::ReplaceCommit;
use swap::{PointerSwap, SwapError};

/// Times a pass plans its rewrite again after another maintainer changed the table under it.
const MAX_PLANS: u32 = 5;
/// Times a staged rewrite is rebased over appends before the pass gives up for this round.
const MAX_REBASES: u32 = 20;

/// Why a maintenance pass over a table stopped.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// The catalog could not be opened.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// An Iceberg read, write or commit failed.
    #[error("{table}: {what}")]
    Iceberg {
        table: String,
        what: &'static str,
        #[source]
        source: iceberg::Error,
    },
    /// The catalog pointer could not be moved.
    #[error(transparent)]
    Swap(#[from] SwapError),
    /// The rewrite took so long that another maintainer's sweep may have taken its files for
    /// orphans: it was dropped, to be planned again by the next pass.
    #[error("{table}: the rewrite took longer than half of maintenance.orphan_grace ({}); dropped it", humantime::format_duration(*.grace))]
    TooSlow { table: String, grace: Duration },
    /// The sweep for unreferenced files failed.
    #[error("{table}: sweeping unreferenced files")]
    Sweep {
        table: String,
        #[source]
        source: SweepError,
    },
}

/// Where maintenance may stop on purpose, so that tests can kill it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The new data files are written, nothing else.
    Rewritten,
    /// The manifests are written too, the pointer has not moved.
    Staged,
    /// The replace commit landed; expiry and the sweep have not run.
    Committed,
}

impl std::str::FromStr for Stage {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "rewritten" => Ok(Self::Rewritten),
            "staged" => Ok(Self::Staged),
            "committed" => Ok(Self::Committed),
            other => Err(format!(
                "no stage {other:?}: rewritten, staged or committed"
            )),
        }
    }
}

/// What one pass did to one table.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `namespace.name`.
    pub table: String,
    /// Small files replaced by compaction.
    pub files_rewritten: usize,
    /// Files they were rewritten into.
    pub files_written: usize,
    /// Data manifests before the pass.
    pub manifests_before: usize,
    /// The replace snapshot, when one landed.
    pub replace_snapshot: Option<i64>,
    /// Partitions due for compaction that this pass left to the next (its time ran out).
    pub partitions_left: usize,
    /// Rebases over other writers' appends, and plans redone after other changes.
    pub conflicts: u32,
    /// What expiry removed.
    pub expired: Expired,
    /// What the sweep deleted.
    pub swept: Swept,
    /// Data files alive at the end.
    pub data_files: usize,
    /// Data manifests at the end.
    pub manifests: usize,
    /// Snapshots in the metadata at the end.
    pub snapshots: usize,
    /// Time each step of the pass took.
    pub took: PassTimes,
}

/// How long each step of a maintenance pass took.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassTimes {
    /// Compaction and manifest merging: planning, rewriting, committing.
    pub compaction: Duration,
    /// Snapshot expiry and deleting the files only expired snapshots referenced.
    pub expiry: Duration,
    /// The sweep of superseded metadata files and orphans.
    pub sweep: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table {}: ", self.table)?;
        match self.replace_snapshot {
            Some(id) => write!(
                f,
                "{} small files rewritten into {} and {} manifests merged (replace snapshot {id})",
                self.files_rewritten, self.files_written, self.manifests_before
            )?,
            None => write!(f, "nothing compacted")?,
        }
        if self.partitions_left > 0 {
            write!(
                f,
                ", {} partitions left for the next pass",
                self.partitions_left
            )?;
        }
        if self.conflicts > 0 {
            write!(f, " after {} conflicts with other writers", self.conflicts)?;
        }
        write!(
            f,
            "; {} snapshots expired, {} of their files deleted; {} superseded metadata files and {} orphans deleted; now {} data files in {} manifests, {} snapshots",
            self.expired.snapshots,
            self.expired.files,
            self.swept.metadata_files,
            self.swept.orphans,
            self.data_files,
            self.manifests,
            self.snapshots
        )?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (compact, expire, sweep) = (
            ms(self.took.compaction),
            ms(self.took.expiry),
            ms(self.took.sweep),
        );
        write!(
            f,
            " (compaction {compact:.0} ms, expiry {expire:.0} ms, sweep {sweep:.0} ms)"
        )
    }
}

/// One table a pipeline writes, as maintenance sees it.
struct Target {
    ident: TableIdent,
    label: String,
    /// The checkpoint folder setting, for the metrics table.
    checkpoints: Option<Option<String>>,
}

/// Maintains the two tables of one pipeline.
pub struct Maintainer {
    catalog: Arc<dyn Catalog>,
    swap: PointerSwap,
    settings: MaintenanceConfig,
    pipeline: String,
    targets: Vec<Target>,
    pause: Option<(Stage, Duration)>,
    /// How long a pass starts new partition rewrites (see [`Self::rewrite_for`]).
    rewrite_budget: Duration,
    /// Manifest lists and manifests read by earlier passes (they never change).
    cache: tokio::sync::Mutex<files::ManifestCache>,
}

impl Maintainer {
    /// Connects to the pipeline's catalog.
    pub async fn open(config: &Config, pipeline: &PipelineConfig) -> Result<Self, MaintainError> {
        let catalog = crate::catalog::open_catalog(config, &pipeline.sink).await?;
        let swap = PointerSwap::open(config, &pipeline.sink).await?;
        let namespace = crate::catalog::namespace_ident(&pipeline.sink.namespace)?;
        let target = |name: &str, checkpoints| Target {
            ident: TableIdent::new(namespace.clone(), name.to_string()),
            label: format!("{}.{name}", pipeline.sink.namespace),
            checkpoints,
        };
        Ok(Self {
            catalog,
            swap,
            settings: pipeline.maintenance.clone(),
            pipeline: pipeline.name.clone(),
            targets: vec![
                target(&pipeline.sink.events_table.name, None),
                target(
                    &pipeline.sink.metrics_table.name,
                    Some(pipeline.sink.checkpoints.clone()),
                ),
            ],
            pause: None,
            rewrite_budget: pipeline.maintenance.orphan_grace / 4,
            cache: Default::default(),
        })
    }

    /// Waits `pause` when the pass reaches `stage`: for tests that kill it there or commit
    /// under it.
    #[cfg(feature = "test-hooks")]
    pub fn pause_at(mut self, stage: Option<Stage>, pause: Duration) -> Self {
        self.pause = stage.map(|stage| (stage, pause));
        self
    }

    /// Starts no further partition rewrite once a pass has rewritten for `budget` (a quarter
    /// of `orphan_grace` unless set here, for tests), and commits what it has: a rewrite not
    /// committed within half of `orphan_grace` is dropped, so a backlog larger than one pass
    /// can rewrite in time would otherwise never be compacted.
    #[cfg(feature = "test-hooks")]
    pub fn rewrite_for(mut self, budget: Option<Duration>) -> Self {
        if let Some(budget) = budget {
            self.rewrite_budget = budget;
        }
        self
    }

    /// One pass over both tables.
    pub async fn run_once(&self) -> Vec<Result<Report, MaintainError>> {
        let mut reports = Vec::new();
        let mut cache = self.cache.lock().await;
        for target in &self.targets {
            reports.push(self.maintain(target, &mut cache).await);
        }
        cache.prune();
        reports
    }

    async fn maintain(
        &self,
        target: &Target,
        cache: &mut files::ManifestCache,
    ) -> Result<Report, MaintainError> {
        let fail = |what: &'static str| {
            move |source| MaintainError::Iceberg {
                table: target.label.clone(),
                what,
                source,
            }
        };
        let mut report = Report {
            table: target.label.clone(),
            ..Report::default()
        };
        let started = std::time::Instant::now();
        self.compact(target, &mut report, cache).await?;
        report.took.compaction = started.elapsed();
        self.pause_if(Stage::Committed).await;
        let started = std::time::Instant::now();

        let table = self.load(target).await?;
        let now = SystemTime::now();
        let (table, expired) = expire::expire(
            &self.catalog,
            table,
            expire::Retention::of(&self.settings),
            now,
            cache,
        )
        .await
        .map_err(fail("expiring snapshots"))?;
        report.expired = expired;
        report.took.expiry = started.elapsed();
        let started = std::time::Instant::now();

        let table = self.load(target).await.unwrap_or(table);
        let folder = target.checkpoints.as_ref().map(|base| {
            crate::sink::checkpoint::folder_of(table.metadata().location(), base.as_deref())
        });
        let rules = SweepRules {
            checkpoints: folder.as_deref(),
            pipeline: &self.pipeline,
            keep_metadata_files: self.settings.keep_metadata_files,
            grace: self.settings.orphan_grace,
            now,
        };
        report.swept = orphans::sweep(&table, &rules, cache)
            .await
            .map_err(|source| MaintainError::Sweep {
                table: target.label.clone(),
                source,
            })?;
        report.took.sweep = started.elapsed();

        let live = LiveFiles::read_with(&table, cache)
            .await
            .map_err(fail("reading the manifests"))?;
        if let Some(live) = live {
            report.data_files = live.entries.len();
            report.manifests = live.data_manifests();
        }
        report.snapshots = table.metadata().snapshots().count();
        Ok(report)
    }

    /// Compacts small files and merges manifests in one replace commit, when either is due.
    async fn compact(
        &self,
        target: &Target,
        report: &mut Report,
        cache: &mut files::ManifestCache,
    ) -> Result<(), MaintainError> {
        let fail = |what: &'static str| {
            move |source| MaintainError::Iceberg {
                table: target.label.clone(),
                what,
                source,
            }
        };
        let target_size = self.settings.target_file_size();
        for _ in 0..MAX_PLANS {
            // Files written by this plan are unreferenced until it commits: past half the
            // grace period, a sweep elsewhere may delete them, so it must not commit then.
            let planned = std::time::Instant::now();
            let table = self.load(target).await?;
            let Some(live) = LiveFiles::read_with(&table, cache)
                .await
                .map_err(fail("reading the manifests"))?
            else {
                return Ok(());
            };
            let rewrites = compact::plan(
                &live.entries,
                table.metadata().default_partition_spec_id(),
                target_size,
                self.settings.min_input_files,
            );
            report.manifests_before = live.data_manifests();
            if rewrites.is_empty() && live.data_manifests() <= self.settings.max_manifests {
                return Ok(());
            }
            let mut removed = Vec::new();
            let mut added = Vec::new();
            let mut failed = None;
            let mut done = 0;
            for rewrite in &rewrites {
                // The oldest partitions come first (see `compact::plan`): the rest wait.
                if done > 0 && planned.elapsed() >= self.rewrite_budget {
                    break;
                }
                done += 1;
                match compact::rewrite(&table, rewrite, target_size).await {
                    Ok(files) => {
                        removed.extend(rewrite.inputs.iter().cloned());
                        added.extend(files);
                    }
                    Err(source) => {
                        failed = Some(source);
                        break;
                    }
                }
            }
            if let Some(source) = failed {
                delete_files(&table, &added).await;
                // Another maintainer may have rewritten and expired the files under this plan.
                if self.moved_on(target, &table).await {
                    report.conflicts += 1;
                    continue;
                }
                return Err(fail("rewriting small files")(source));
            }
            let (rewrites, left) = rewrites.split_at(done);
            self.pause_if(Stage::Rewritten).await;
            let (rewritten, written) = (removed.len(), added.len());
            let staged = ReplaceCommit::new(&table)
                .replace(removed, added.clone())
                .stage(cache)
                .await;
            let mut staged = match staged {
                Ok(staged) => staged,
                Err(source) => {
                    delete_files(&table, &added).await;
                    return Err(fail("writing the manifests")(source));
                }
            };
            self.pause_if(Stage::Staged).await;
            let mut base = table;
            let mut rebases = 0;
            loop {
                if planned.elapsed() > self.settings.orphan_grace / 2 {
                    staged.abandon(&base).await;
                    return Err(MaintainError::TooSlow {
                        table: target.label.clone(),
                        grace: self.settings.orphan_grace,
                    });
                }
                let updates = match staged.on(&base, cache).await {
                    Ok(Some(updates)) => updates,
                    Ok(None) => break,
                    Err(source) => {
                        // The snapshot read may have been expired meanwhile: plan again.
                        if self.moved_on(target, &base).await {
                            break;
                        }
                        staged.abandon(&base).await;
                        return Err(fail("writing the manifest list")(source));
                    }
                };
                match self
                    .swap
                    .swap(&base, updates.updates, updates.requirements)
                    .await
                {
                    Ok(()) => {
                        report.files_rewritten = rewritten;
                        report.files_written = written;
                        report.replace_snapshot = Some(staged.snapshot_id());
                        report.partitions_left = left.len();
                        log_rewrites(&target.label, rewrites);
                        return Ok(());
                    }
                    Err(SwapError::Conflict { .. }) => {
                        report.conflicts += 1;
                        if rebases == MAX_REBASES {
                            // Writers commit faster than this pass can land: the next one tries.
                            staged.abandon(&base).await;
                            return Ok(());
                        }
                        rebases += 1;
                        base = self.load(target).await?;
                    }
                    // The pointer may have moved before the answer was lost: the files stay
                    // for the sweep to judge once the grace period has passed.
                    Err(other) => return Err(other.into()),
                }
            }
            // Another maintainer rewrote or expired under this plan: plan again on its result.
            report.conflicts += 1;
            staged.abandon(&base).await;
        }
        Ok(())
    }

    /// Whether the catalog points at other metadata than `table`'s now.
    async fn moved_on(&self, target: &Target, table: &Table) -> bool {
        match self.load(target).await {
            Ok(now) => now.metadata_location() != table.metadata_location(),
            Err(_) => false,
        }
    }

    async fn load(&self, target: &Target) -> Result<Table, MaintainError> {
        self.catalog
            .load_table(&target.ident)
            .await
            .map_err(|source| MaintainError::Iceberg {
                table: target.label.clone(),
                what: "loading the table",
                source,
            })
    }

    async fn pause_if(&self, stage: Stage) {
        if let Some((at, pause)) = self.pause {
            if at == stage {
                eprintln!("maintenance paused at {stage:?}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn log_rewrites(table: &str, rewrites: &[Rewrite]) {
    for rewrite in rewrites {
        tracing::debug!(
            table,
            files = rewrite.inputs.len(),
            rows = rewrite.rows(),
            "compacted a partition"
        );
    }
}

async fn delete_files(table: &Table, files: &[iceberg::spec::DataFile]) {
    for file in files {
        let _ = table.file_io().delete(file.file_path()).await;
    }
}

/// Maintains the pipeline's tables every `maintenance.interval` until `stop` turns true; a
/// failed pass is logged and the next one tries again.
pub async fn background(
    config: Config,
    pipeline: PipelineConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let interval = pipeline.maintenance.interval;
    let maintainer = match Maintainer::open(&config, &pipeline).await {
        Ok(maintainer) => maintainer,
        Err(err) => {
            tracing::error!(pipeline = %pipeline.name, "table maintenance is off for this run: {}", crate::common::error::Causes(&err));
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        for result in maintainer.run_once().await {
            match result {
                Ok(report) => tracing::info!(pipeline = %pipeline.name, "maintenance: {report}"),
                Err(err) => {
                    tracing::warn!(pipeline = %pipeline.name, "maintenance failed, trying again in {}: {}", humantime::format_duration(interval), crate::common::error::Causes(&err))
                }
            }
        }
    }
}
