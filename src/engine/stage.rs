//! A SQL statement planned once and executed for every micro-batch: its input table reads
//! whatever batch was last put into its slot, so no SQL is re-planned per batch.

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

/// The batches an input table yields on its next execution.
#[derive(Debug)]
pub struct BatchSlot {
    schema: SchemaRef,
    batches: Mutex<Vec<RecordBatch>>,
}

impl BatchSlot {
    /// An empty slot for batches of `schema`.
    pub fn new(schema: SchemaRef) -> Arc<Self> {
        Arc::new(Self {
            schema,
            batches: Mutex::new(Vec::new()),
        })
    }

    /// Puts the batches the next execution reads.
    pub fn put(&self, batches: Vec<RecordBatch>) {
        *self.batches.lock().unwrap_or_else(PoisonError::into_inner) = batches;
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

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches =
            std::mem::take(&mut *self.batches.lock().unwrap_or_else(PoisonError::into_inner));
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ))
    }
}

/// A physical plan bound to the slot of its input table.
pub struct SqlStage {
    plan: Arc<dyn ExecutionPlan>,
    slot: Arc<BatchSlot>,
    task: Arc<TaskContext>,
}

impl SqlStage {
    /// Plans `logical` (whose input table reads `slot`) into a physical plan, once.
    pub async fn new(
        ctx: &SessionContext,
        logical: &datafusion::logical_expr::LogicalPlan,
        slot: Arc<BatchSlot>,
    ) -> Result<Self> {
        let plan = ctx.state().create_physical_plan(logical).await?;
        let plan = super::case_guard::guard_long_cases(plan)?;
        let plan = super::utc_timestamps::read_utc_text_directly(plan)?;
        Ok(Self::from_physical(ctx, plan, slot))
    }

    /// Binds an already built physical plan (whose leaf reads `slot`).
    pub fn from_physical(
        ctx: &SessionContext,
        plan: Arc<dyn ExecutionPlan>,
        slot: Arc<BatchSlot>,
    ) -> Self {
        Self {
            plan,
            slot,
            task: ctx.task_ctx(),
        }
    }

    /// Output schema of the statement.
    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Runs the statement over `input` and returns its output batches.
    pub async fn run(&self, input: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.slot.put(input);
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
