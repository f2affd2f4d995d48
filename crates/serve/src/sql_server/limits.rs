//! Per-statement limits of the SQL endpoint: run time and result rows.
//!
//! datafusion-postgres applies a client's `statement_timeout` to planning only, and the rows
//! are produced while they are sent, so the limits sit in the physical plan itself: a rule
//! wraps every plan's root in [`LimitedExec`], whose streams fail once the statement has run
//! too long or produced too many rows. Dropping the failed stream cancels the work below it.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

/// How long a statement may run and how many rows it may return.
#[derive(Debug, Clone, Copy)]
pub struct StatementLimits {
    /// Run time, from the first partition's start to the last row.
    pub timeout: Duration,
    /// Rows over all partitions.
    pub max_rows: usize,
}

/// Why a statement was stopped.
#[derive(Debug, thiserror::Error)]
pub enum LimitExceeded {
    /// It ran longer than the endpoint allows.
    #[error(
        "canceling statement due to statement timeout: it ran longer than {} \
         (sql_endpoint.statement_timeout)",
        humantime::format_duration(*.0)
    )]
    Timeout(Duration),
    /// It returned more rows than the endpoint allows.
    #[error(
        "the result has more than {0} rows (sql_endpoint.max_result_rows): aggregate, filter \
         or add a LIMIT"
    )]
    TooManyRows(usize),
}

/// The physical optimizer rule that puts [`LimitedExec`] on top of every plan.
#[derive(Debug)]
pub struct ApplyLimits(pub StatementLimits);

impl PhysicalOptimizerRule for ApplyLimits {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if plan.as_any().is::<LimitedExec>() {
            return Ok(plan);
        }
        // The deadline is checked under every operator too, not only at the root: an operator
        // that consumes its input in one poll (an aggregate over an in-memory cross join) never
        // returns to the root until it is done, so a root-only check let such a statement run
        // on for good (seen once in the test suite).
        // All the wrappers of one statement share its start, so one deadline holds throughout.
        let started = Arc::new(OnceLock::new());
        let timed_only = StatementLimits {
            max_rows: usize::MAX,
            ..self.0
        };
        let plan = plan
            .map_children(|child| {
                child.transform_up(|node| {
                    let limited = LimitedExec::sharing(node, timed_only, started.clone());
                    Ok(Transformed::yes(Arc::new(limited) as Arc<dyn ExecutionPlan>))
                })
            })?
            .data;
        Ok(Arc::new(LimitedExec::sharing(plan, self.0, started)))
    }

    fn name(&self) -> &str {
        "apply_statement_limits"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes its input through until the statement's limits are exceeded, then fails.
#[derive(Debug)]
pub struct LimitedExec {
    input: Arc<dyn ExecutionPlan>,
    limits: StatementLimits,
    /// When the statement's first partition started: the deadline holds for all of them.
    started: Arc<OnceLock<Instant>>,
    rows: Arc<AtomicUsize>,
}

impl LimitedExec {
    /// Limits `input`.
    pub fn new(input: Arc<dyn ExecutionPlan>, limits: StatementLimits) -> Self {
        Self::sharing(input, limits, Arc::new(OnceLock::new()))
    }

    /// Limits `input`, timed from `started`, which other wrappers of the statement share.
    fn sharing(
        input: Arc<dyn ExecutionPlan>,
        limits: StatementLimits,
        started: Arc<OnceLock<Instant>>,
    ) -> Self {
        Self {
            input,
            limits,
            started,
            rows: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl DisplayAs for LimitedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LimitedExec: timeout={}, max_rows={}",
            humantime::format_duration(self.limits.timeout),
            self.limits.max_rows
        )
    }
}

impl ExecutionPlan for LimitedExec {
    fn name(&self) -> &str {
        "LimitedExec"
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
            (Some(input), true) => Ok(Arc::new(LimitedExec::sharing(
                input,
                self.limits,
                self.started.clone(),
            ))),
            _ => Err(DataFusionError::Internal(
                "LimitedExec takes exactly one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let deadline = *self.started.get_or_init(Instant::now) + self.limits.timeout;
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(LimitedStream {
            schema: input.schema(),
            input,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            limits: self.limits,
            rows: self.rows.clone(),
            done: false,
        }))
    }
}

/// One partition's stream under the statement's limits.
struct LimitedStream {
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    deadline: Pin<Box<Sleep>>,
    limits: StatementLimits,
    rows: Arc<AtomicUsize>,
    done: bool,
}

impl LimitedStream {
    fn fail(&mut self, exceeded: LimitExceeded) -> Poll<Option<Result<RecordBatch>>> {
        self.done = true;
        Poll::Ready(Some(Err(DataFusionError::External(Box::new(exceeded)))))
    }
}

impl Stream for LimitedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        // The clock as well as the timer: a worker busy inside the plan may not have fired it.
        if Instant::now() >= self.deadline.deadline() || self.deadline.as_mut().poll(cx).is_ready()
        {
            let timeout = self.limits.timeout;
            return self.fail(LimitExceeded::Timeout(timeout));
        }
        match self.input.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                let total =
                    self.rows.fetch_add(batch.num_rows(), Ordering::Relaxed) + batch.num_rows();
                if total > self.limits.max_rows {
                    let max = self.limits.max_rows;
                    return self.fail(LimitExceeded::TooManyRows(max));
                }
                Poll::Ready(Some(Ok(batch)))
            }
            other => other,
        }
    }
}

impl RecordBatchStream for LimitedStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
