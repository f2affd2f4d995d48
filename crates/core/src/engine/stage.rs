//! A SQL statement planned once and executed for every micro-batch: its input table reads
//! whatever batch was last put into the stage's input, so no SQL is re-planned per batch. The
//! input travels in the stage's task context, not in the plan: one plan serves several stages
//! (runners of one pipeline in one process, see [`SqlStage::fork`]).

use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::BooleanArray;
use arrow::compute::{filter_record_batch, is_null};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionContext;

/// An input table of a [`SqlStage`]: each execution reads the batches its stage was given
/// (outside a stage it reads nothing).
#[derive(Debug)]
pub struct BatchSlot {
    schema: SchemaRef,
}

impl BatchSlot {
    /// A slot for batches of `schema`.
    pub fn new(schema: SchemaRef) -> Arc<Self> {
        Arc::new(Self { schema })
    }

    /// Registers the slot as table `name` of `ctx`, replacing any table of that name.
    pub fn register(self: &Arc<Self>, ctx: &SessionContext, name: &str) -> Result<()> {
        let table = StreamingTable::try_new(self.schema.clone(), vec![self.clone()])?;
        ctx.deregister_table(name)?;
        ctx.register_table(name, Arc::new(table))?;
        Ok(())
    }
}

impl PartitionStream for BatchSlot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches = ctx
            .session_config()
            .get_extension::<StageInput>()
            .map(|input| input.take())
            .unwrap_or_default();
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ))
    }
}

/// The batches one stage's next execution reads, whichever slot its plan's input table is.
#[derive(Debug, Default)]
struct StageInput {
    batches: Mutex<Vec<RecordBatch>>,
}

impl StageInput {
    fn put(&self, batches: Vec<RecordBatch>) {
        *self.batches.lock().unwrap_or_else(PoisonError::into_inner) = batches;
    }

    fn take(&self) -> Vec<RecordBatch> {
        std::mem::take(&mut *self.batches.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A physical plan with its own input: its input table reads what [`SqlStage::run`] was given.
pub struct SqlStage {
    plan: Arc<dyn ExecutionPlan>,
    input: Arc<StageInput>,
    task: Arc<TaskContext>,
}

impl SqlStage {
    /// Plans `logical` (whose input table is a [`BatchSlot`]) into a physical plan, once.
    pub async fn new(
        ctx: &SessionContext,
        logical: &datafusion::logical_expr::LogicalPlan,
    ) -> Result<Self> {
        let plan = ctx.state().create_physical_plan(logical).await?;
        let plan = super::case_guard::guard_long_cases(plan)?;
        let plan = super::utc_timestamps::read_utc_text_directly(plan)?;
        // Last: the CASEs it rewrites hide their branches from rewrites that come after.
        let plan = super::case_inputs::narrow_case_inputs(plan)?;
        Self::from_physical(ctx, plan)
    }

    /// Binds an already built physical plan (whose input table is a [`BatchSlot`]); its
    /// projections run untimed (see [`super::plain_projection`]).
    pub fn from_physical(ctx: &SessionContext, plan: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let plan = super::plain_projection::without_expression_timers(plan)?;
        Ok(Self::with_task(plan, &ctx.task_ctx()))
    }

    fn with_task(plan: Arc<dyn ExecutionPlan>, task: &TaskContext) -> Self {
        let input = Arc::new(StageInput::default());
        let config = task.session_config().clone().with_extension(input.clone());
        let task = TaskContext::new(
            task.task_id(),
            task.session_id(),
            config,
            task.scalar_functions().clone(),
            task.aggregate_functions().clone(),
            task.window_functions().clone(),
            task.runtime_env(),
        );
        Self {
            plan,
            input,
            task: Arc::new(task),
        }
    }

    /// The same plan with an input of its own (another runner of the pipeline in this process:
    /// planning the SQL again would cost more than all else it sets up).
    pub fn fork(&self) -> Self {
        Self::with_task(self.plan.clone(), &self.task)
    }

    /// Output schema of the statement.
    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Runs the statement over `input` and returns its output batches.
    pub async fn run(&self, input: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.input.put(input);
        // Every execution adds its metrics to the plan's nodes, which keep them: run once a
        // micro-batch for good, the plan grew without end. A reset copy (the same nodes
        // rebuilt, no state) starts without them.
        let plan = reset_plan_states(self.plan.clone())?;
        collect(plan, self.task.clone()).await
    }
}

/// Splits parsing output by its `_error` column: (valid rows, rejected rows).
pub fn split_rejected(
    batch: &RecordBatch,
    error_column: &str,
) -> Result<(RecordBatch, RecordBatch)> {
    let index = batch.schema().index_of(error_column)?;
    let valid_mask: BooleanArray = is_null(batch.column(index).as_ref())?;
    if valid_mask.true_count() == batch.num_rows() {
        return Ok((batch.clone(), batch.slice(0, 0)));
    }
    let rejected_mask = arrow::compute::not(&valid_mask)?;
    let valid = filter_record_batch(batch, &valid_mask)?;
    let rejected = filter_record_batch(batch, &rejected_mask)?;
    Ok((valid, rejected))
}
