//! A SQL statement planned once and executed for every micro-batch: its input table reads
//! whatever batch was last put into the stage's input, so no SQL is re-planned per batch. The
//! input travels in the stage's task context, not in the plan: one plan serves several stages
//! (runners of one pipeline in one process, see [`SqlStage::fork`]).

use std::sync::{Arc, Mutex, PoisonError};

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
        let plan = super::case_chain::first_match_long_cases(plan)?;
        let plan = super::utc_timestamps::read_utc_text_directly(plan)?;
        let plan = super::blank_text::test_blanks_directly(plan)?;
        let plan = super::dictionary_text::compare_dictionary_text_once(plan)?;
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

/// What [`SqlStage::run_isolating`] gives: the statement's output over the rows it does not
/// fail on, and the rows it fails on alone.
#[derive(Debug, Default)]
pub struct Isolated {
    /// The output batches, in the order of the input rows they came from.
    pub outputs: Vec<RecordBatch>,
    /// The input rows the statement fails on by themselves, in input order.
    pub failed: Vec<FailedRow>,
}

/// An input row the statement fails on, and how.
#[derive(Debug)]
pub struct FailedRow {
    /// The row's index in the input batch.
    pub row: usize,
    /// The statement's error on that row alone.
    pub error: datafusion::error::DataFusionError,
}

impl FailedRow {
    /// The reason a dead letter (or a sample's report) gives for the row: the innermost error,
    /// since the outer ones only repeat where it happened.
    pub fn reason(&self) -> String {
        format!("parsing SQL failed: {}", self.error.find_root())
    }
}

/// Whether an error of a statement can come from the values of some rows (a cast, a parse,
/// arithmetic, a function's argument) rather than from the statement or the process: only those
/// are worth running again on fewer rows.
fn depends_on_values(error: &datafusion::error::DataFusionError) -> bool {
    use arrow::error::ArrowError;
    use datafusion::error::DataFusionError;
    match error.find_root() {
        DataFusionError::ArrowError(arrow, _) => matches!(
            arrow.as_ref(),
            ArrowError::CastError(_)
                | ArrowError::ParseError(_)
                | ArrowError::ComputeError(_)
                | ArrowError::DivideByZero
                | ArrowError::ArithmeticOverflow(_)
                | ArrowError::InvalidArgumentError(_)
                | ArrowError::JsonError(_)
        ),
        DataFusionError::Execution(_) => true,
        _ => false,
    }
}

impl SqlStage {
    /// Runs the statement over `input`; when it fails on some values, runs it again on halves
    /// of the input until the rows it fails on stand alone. One event a statement cannot take
    /// (a user's `CAST` that an app's value breaks) would otherwise fail its whole micro-batch
    /// on every start: the caller dead-letters the failed rows and goes on with the rest. An
    /// error that does not come from values fails the whole run, as [`SqlStage::run`] does.
    pub async fn run_isolating(&self, input: &RecordBatch) -> Result<Isolated> {
        let first = match self.run(vec![input.clone()]).await {
            Ok(outputs) => {
                return Ok(Isolated {
                    outputs,
                    failed: Vec::new(),
                })
            }
            Err(error) if depends_on_values(&error) && input.num_rows() > 0 => error,
            Err(error) => return Err(error),
        };
        let mut isolated = Isolated::default();
        // Ranges still to run, the next on top; the first holds the error the whole input gave.
        let mut pending = vec![(0, input.num_rows(), Some(first))];
        while let Some((start, len, known)) = pending.pop() {
            let error = match known {
                Some(error) => error,
                None => match self.run(vec![input.slice(start, len)]).await {
                    Ok(outputs) => {
                        isolated.outputs.extend(outputs);
                        continue;
                    }
                    Err(error) if depends_on_values(&error) => error,
                    Err(error) => return Err(error),
                },
            };
            if len <= 1 {
                isolated.failed.push(FailedRow { row: start, error });
                continue;
            }
            let half = len / 2;
            pending.push((start + half, len - half, None));
            pending.push((start, half, None));
        }
        Ok(isolated)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray, StringArray};
    use arrow::datatypes::Float64Type;

    use super::*;
    use crate::engine::new_session;

    async fn stage(sql: &str, input: &RecordBatch) -> SqlStage {
        let ctx = new_session();
        BatchSlot::new(input.schema())
            .register(&ctx, "t")
            .expect("register");
        let plan = ctx.state().create_logical_plan(sql).await.expect("plan");
        SqlStage::new(&ctx, &plan).await.expect("stage")
    }

    fn texts(values: &[&str]) -> RecordBatch {
        let values = StringArray::from(values.to_vec());
        RecordBatch::try_from_iter(vec![("v", Arc::new(values) as Arc<dyn Array>)]).expect("batch")
    }

    #[tokio::test]
    async fn the_rows_a_cast_fails_on_stand_alone_and_the_others_are_output_in_order() {
        let input = texts(&["1", "x", "2.5", "3", "four", "5", "6", "y"]);
        let stage = stage("SELECT CAST(v AS DOUBLE) AS d FROM t", &input).await;
        assert!(stage.run(vec![input.clone()]).await.is_err());
        let isolated = stage.run_isolating(&input).await.expect("isolated");
        let rows: Vec<usize> = isolated.failed.iter().map(|f| f.row).collect();
        assert_eq!(rows, vec![1, 4, 7]);
        let reason = isolated.failed[0].reason();
        assert!(
            reason.starts_with("parsing SQL failed: ") && reason.contains("'x'"),
            "{reason}"
        );
        let output: Vec<f64> = isolated
            .outputs
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Float64Type>().values().to_vec())
            .collect();
        assert_eq!(output, vec![1.0, 2.5, 3.0, 5.0, 6.0]);
    }

    #[tokio::test]
    async fn a_statement_that_fails_on_nothing_runs_once_and_an_empty_input_gives_nothing() {
        let input = texts(&["1", "2"]);
        let stage = stage("SELECT CAST(v AS DOUBLE) AS d FROM t", &input).await;
        let isolated = stage.run_isolating(&input).await.expect("isolated");
        assert!(isolated.failed.is_empty());
        assert_eq!(
            isolated.outputs.iter().map(|b| b.num_rows()).sum::<usize>(),
            2
        );
        let empty = stage
            .run_isolating(&input.slice(0, 0))
            .await
            .expect("empty");
        assert!(empty.failed.is_empty());
    }

    #[test]
    fn only_errors_that_values_can_cause_are_run_again_on_fewer_rows() {
        use arrow::error::ArrowError;
        use datafusion::error::DataFusionError;
        let cast =
            || DataFusionError::ArrowError(Box::new(ArrowError::CastError("'x'".into())), None);
        assert!(depends_on_values(&cast()));
        assert!(depends_on_values(&DataFusionError::Context(
            "projection".into(),
            Box::new(cast())
        )));
        assert!(depends_on_values(&DataFusionError::Execution(
            "bad date".into()
        )));
        for process in [
            DataFusionError::ResourcesExhausted("memory".into()),
            DataFusionError::Internal("bug".into()),
            DataFusionError::ArrowError(Box::new(ArrowError::MemoryError("oom".into())), None),
        ] {
            assert!(!depends_on_values(&process), "{process}");
        }
    }
}
