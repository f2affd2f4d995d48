//! Memory bounds of ad-hoc statements (the SQL endpoint's, the dashboard's and `query`'s): one
//! pool for all statements of the process, a share of it per statement, and spill files bounded
//! on disk, so that no statement can take the process (in `run --sql`, the pipeline) down.
//!
//! DataFusion's operators reserve memory from the task context's pool and spill (sorts,
//! aggregations) or fail with `ResourcesExhausted` when refused. A physical optimizer rule puts
//! [`StatementMemoryExec`] at the root of every plan; it runs the plan under a task context whose
//! pool is the statement's own [`StatementPool`], which draws from the process's pool.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    FairSpillPool, GreedyMemoryPool, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use crate::config::{ByteSize, SqlEndpointConfig};

/// The memory bounds of the process's ad-hoc statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBounds {
    /// All statements together (`sql_endpoint.max_memory`).
    pub process: ByteSize,
    /// One statement (`sql_endpoint.statement_memory`).
    pub statement: ByteSize,
    /// Spill files of all statements together (`sql_endpoint.max_spill`).
    pub spill: ByteSize,
}

impl MemoryBounds {
    /// The bounds the settings give.
    pub fn from_settings(settings: &SqlEndpointConfig) -> Self {
        Self {
            process: settings.max_memory,
            statement: settings.statement_memory,
            spill: settings.max_spill,
        }
    }
}

/// The runtime (memory pool and spill folder) shared by every ad-hoc session of the process.
///
/// The pool bounds the process, so there is one: the first caller's bounds make it (every
/// caller of a process reads the same configuration file).
fn process_runtime(bounds: MemoryBounds) -> Result<Arc<RuntimeEnv>> {
    static RUNTIME: OnceLock<Arc<RuntimeEnv>> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime.clone());
    }
    let disk = DiskManagerBuilder::default()
        .with_mode(DiskManagerMode::OsTmpDirectory)
        .with_max_temp_directory_size(bounds.spill.0);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(bounds.process.bytes())))
        .with_disk_manager_builder(disk)
        .build_arc()?;
    Ok(RUNTIME.get_or_init(|| runtime).clone())
}

/// A session for ad-hoc statements: `session_config`, the process's memory pool and spill
/// folder, and every statement bounded to its share.
pub fn bounded_session(
    session_config: SessionConfig,
    bounds: MemoryBounds,
) -> Result<SessionContext> {
    use datafusion::execution::SessionStateBuilder;
    let state = SessionStateBuilder::new()
        .with_config(session_config)
        .with_runtime_env(process_runtime(bounds)?)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(BoundStatementMemory(bounds)))
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// A statement's reservations: at most its share, and only what the process's pool grants.
///
/// Within the share, spilling operators get equal parts (DataFusion's fair pool), so a sort
/// beside a hash join spills rather than starving it.
#[derive(Debug)]
pub struct StatementPool {
    share: FairSpillPool,
    process: Arc<dyn MemoryPool>,
    bounds: MemoryBounds,
}

impl StatementPool {
    /// A statement's pool drawing from `process`.
    pub fn new(process: Arc<dyn MemoryPool>, bounds: MemoryBounds) -> Self {
        Self {
            share: FairSpillPool::new(bounds.statement.bytes()),
            process,
            bounds,
        }
    }
}

impl MemoryPool for StatementPool {
    fn register(&self, consumer: &datafusion::execution::memory_pool::MemoryConsumer) {
        self.share.register(consumer);
        self.process.register(consumer);
    }

    fn unregister(&self, consumer: &datafusion::execution::memory_pool::MemoryConsumer) {
        self.share.unregister(consumer);
        self.process.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.share.grow(reservation, additional);
        self.process.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.share.shrink(reservation, shrink);
        self.process.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        // Spilling operators tell a refusal by its kind (ResourcesExhausted) and spill.
        if self.share.try_grow(reservation, additional).is_err() {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{OUT_OF_MEMORY}: the statement needs more than its share of memory, \
                 sql_endpoint.statement_memory ({}), after spilling what it can to disk \
                 ({} for {})",
                self.bounds.statement,
                ByteSize(additional as u64),
                reservation.consumer().name()
            )));
        }
        if self.process.try_grow(reservation, additional).is_err() {
            self.share.shrink(reservation, additional);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{OUT_OF_MEMORY}: the statements running now hold all of \
                 sql_endpoint.max_memory ({}) between them; try again when they are done",
                self.bounds.process
            )));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.share.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.bounds.statement.bytes())
    }
}

/// How every memory refusal of a statement starts, so that clients and tests can tell it.
pub const OUT_OF_MEMORY: &str = "out of memory";

/// Whether `err` is a statement refused memory (or spill space), and so PostgreSQL's `53200`.
pub fn is_out_of_memory(err: &DataFusionError) -> bool {
    matches!(err.find_root(), DataFusionError::ResourcesExhausted(_))
}

/// The physical optimizer rule that runs every plan under its statement's own pool.
#[derive(Debug)]
pub struct BoundStatementMemory(pub MemoryBounds);

impl PhysicalOptimizerRule for BoundStatementMemory {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut bounded = false;
        plan.apply(|node| {
            bounded = node.as_any().is::<StatementMemoryExec>();
            Ok(match bounded {
                true => TreeNodeRecursion::Stop,
                false => TreeNodeRecursion::Continue,
            })
        })?;
        if bounded {
            return Ok(plan);
        }
        Ok(Arc::new(StatementMemoryExec::new(plan, self.0)))
    }

    fn name(&self) -> &str {
        "bound_statement_memory"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Runs its input under a task context of its own whose pool is the statement's share.
#[derive(Debug)]
pub struct StatementMemoryExec {
    input: Arc<dyn ExecutionPlan>,
    bounds: MemoryBounds,
    /// Made at the first partition's start: every partition of the statement shares it.
    context: Arc<OnceLock<Arc<TaskContext>>>,
}

impl StatementMemoryExec {
    /// Bounds `input`'s memory.
    pub fn new(input: Arc<dyn ExecutionPlan>, bounds: MemoryBounds) -> Self {
        Self {
            input,
            bounds,
            context: Arc::new(OnceLock::new()),
        }
    }

    fn statement_context(&self, outer: &TaskContext) -> Result<Arc<TaskContext>> {
        if let Some(context) = self.context.get() {
            return Ok(context.clone());
        }
        let outer_runtime = outer.runtime_env();
        let pool = StatementPool::new(outer_runtime.memory_pool.clone(), self.bounds);
        let runtime = RuntimeEnvBuilder::from_runtime_env(&outer_runtime)
            .with_memory_pool(Arc::new(pool))
            .build_arc()?;
        let context = TaskContext::new(
            outer.task_id(),
            outer.session_id(),
            outer.session_config().clone(),
            outer.scalar_functions().clone(),
            outer.aggregate_functions().clone(),
            outer.window_functions().clone(),
            runtime,
        );
        Ok(self.context.get_or_init(|| Arc::new(context)).clone())
    }
}

impl DisplayAs for StatementMemoryExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StatementMemoryExec: share={}", self.bounds.statement)
    }
}

impl ExecutionPlan for StatementMemoryExec {
    fn name(&self) -> &str {
        "StatementMemoryExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(StatementMemoryExec {
                input,
                bounds: self.bounds,
                context: self.context.clone(),
            })),
            _ => Err(DataFusionError::Internal(
                "StatementMemoryExec takes exactly one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let statement = self.statement_context(&context)?;
        let stream = self.input.execute(partition, statement)?;
        let spill = self.bounds.spill;
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            stream.schema(),
            stream.map(move |batch| batch.map_err(|err| name_spill_bound(err, spill))),
        )))
    }
}

/// A refusal that is not the pools' (which name their settings) is the spill folder's bound,
/// which DataFusion words after its own configuration key: named here as the setting users set.
fn name_spill_bound(err: DataFusionError, spill: ByteSize) -> DataFusionError {
    match err.find_root() {
        DataFusionError::ResourcesExhausted(message) if !message.starts_with(OUT_OF_MEMORY) => {
            DataFusionError::ResourcesExhausted(format!(
                "{OUT_OF_MEMORY}: the statements' spill files took all of sql_endpoint.max_spill \
                 ({spill}): {message}"
            ))
        }
        _ => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(process_mib: u64, statement_mib: u64) -> MemoryBounds {
        MemoryBounds {
            process: ByteSize::mib(process_mib),
            statement: ByteSize::mib(statement_mib),
            spill: ByteSize::mib(64),
        }
    }

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn a_statement_over_its_share_fails_naming_the_setting_and_the_next_one_runs() {
        let ctx = bounded_session(SessionConfig::new(), bounds(64, 16)).unwrap();
        // Distinct 100-character keys: the hash table of a million of them is far over 16 MiB,
        // and a final aggregation under a fair share cannot spill its way out of it either
        // when the memory of one group's key is more than its part.
        let heavy = "SELECT k, count(*) FROM (SELECT repeat('x', 100) || CAST(v AS VARCHAR) AS k \
                     FROM generate_series(1, 1000000) AS t(v)) GROUP BY k";
        let err = run(&ctx, heavy).await.unwrap_err();
        assert!(is_out_of_memory(&err), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(OUT_OF_MEMORY) && text.contains("sql_endpoint.statement_memory (16MiB)"),
            "{text}"
        );
        // Whatever the failed statement held goes back to the pool (its tasks stop as they
        // notice the failure).
        let pool = ctx.runtime_env().memory_pool.clone();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.reserved() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(pool.reserved(), 0);
        assert_eq!(
            run(&ctx, "SELECT count(*) FROM generate_series(1, 1000)")
                .await
                .unwrap(),
            1
        );
    }

    #[test]
    fn the_spill_folders_refusal_names_its_setting_and_the_pools_own_pass_unchanged() {
        let spill = ByteSize::mib(64);
        let disk = DataFusionError::Context(
            "spilling".into(),
            Box::new(DataFusionError::ResourcesExhausted(
                "The used disk space during the spilling process has exceeded the allowable \
                 limit of 64.0 MB"
                    .into(),
            )),
        );
        let named = name_spill_bound(disk, spill);
        assert!(is_out_of_memory(&named));
        assert!(
            named.to_string().contains("sql_endpoint.max_spill (64MiB)"),
            "{named}"
        );
        let ours = DataFusionError::ResourcesExhausted(format!("{OUT_OF_MEMORY}: x"));
        assert_eq!(
            name_spill_bound(ours, spill).to_string(),
            format!("Resources exhausted: {OUT_OF_MEMORY}: x")
        );
        let other = DataFusionError::Plan("no such column".into());
        assert!(!is_out_of_memory(&name_spill_bound(other, spill)));
    }

    #[test]
    fn the_process_pool_refuses_what_the_statements_together_would_exceed() {
        use datafusion::execution::memory_pool::MemoryConsumer;
        let process: Arc<dyn MemoryPool> =
            Arc::new(GreedyMemoryPool::new(ByteSize::mib(8).bytes()));
        let bounds = bounds(8, 6);
        let first: Arc<dyn MemoryPool> = Arc::new(StatementPool::new(process.clone(), bounds));
        let second: Arc<dyn MemoryPool> = Arc::new(StatementPool::new(process.clone(), bounds));
        let a = MemoryConsumer::new("a").register(&first);
        let b = MemoryConsumer::new("b").register(&second);
        a.try_grow(ByteSize::mib(5).bytes()).unwrap();
        let err = b.try_grow(ByteSize::mib(5).bytes()).unwrap_err();
        assert!(
            err.to_string().contains("sql_endpoint.max_memory (8MiB)"),
            "{err}"
        );
        assert_eq!(
            second.reserved(),
            0,
            "a refused reservation leaves nothing behind"
        );
        let err = a.try_grow(ByteSize::mib(2).bytes()).unwrap_err();
        assert!(
            err.to_string()
                .contains("sql_endpoint.statement_memory (6MiB)"),
            "{err}"
        );
        b.try_grow(ByteSize::mib(3).bytes()).unwrap();
        assert_eq!(process.reserved(), ByteSize::mib(8).bytes());
        drop(a);
        drop(b);
        assert_eq!(process.reserved(), 0);
    }
}
