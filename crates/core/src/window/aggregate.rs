//! The metrics SQL's aggregate split into DataFusion's phases, planned once:
//! - partial: raw events of one micro-batch → partial states per group,
//! - reduce: partial states → one merged state per group (keeps window state compact),
//! - final: merged states → final values, then the SQL's projection (rates, window_end...).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use crate::engine::{BatchSlot, SqlStage};

/// The three phases of the metrics SQL's aggregate.
pub struct SplitAggregate {
    /// The columns of the events the SQL reads, the partial phase's input.
    reads: SchemaRef,
    partial: SqlStage,
    reduce: SqlStage,
    finish: SqlStage,
    state_schema: SchemaRef,
    window_column: usize,
    group_columns: usize,
}

impl SplitAggregate {
    /// Splits the plan of the metrics SQL (whose input table is a [`BatchSlot`]); the group key
    /// whose expression contains `date_bin` is the window.
    pub async fn new(
        ctx: &SessionContext,
        metrics: &datafusion::logical_expr::LogicalPlan,
    ) -> Result<Self> {
        let plan = ctx.state().create_physical_plan(metrics).await?;
        let aggregate = find_aggregate(&plan)?;
        let (group_by, aggr, filters, input, input_schema) = match aggregate.mode() {
            AggregateMode::Final | AggregateMode::FinalPartitioned => {
                let partial = aggregate
                    .input()
                    .as_any()
                    .downcast_ref::<AggregateExec>()
                    .filter(|a| *a.mode() == AggregateMode::Partial)
                    .ok_or_else(|| unsupported("a final aggregate without a partial one below"))?;
                (
                    partial.group_expr().clone(),
                    partial.aggr_expr().to_vec(),
                    partial.filter_expr().to_vec(),
                    partial.input().clone(),
                    partial.input_schema(),
                )
            }
            AggregateMode::Single | AggregateMode::SinglePartitioned => (
                aggregate.group_expr().clone(),
                aggregate.aggr_expr().to_vec(),
                aggregate.filter_expr().to_vec(),
                aggregate.input().clone(),
                aggregate.input_schema(),
            ),
            other => return Err(unsupported(&format!("an aggregate in mode {other:?}"))),
        };
        let (input, reads) = read_only_what_is_used(input)?;
        if group_by.has_grouping_set() {
            return Err(unsupported("GROUPING SETS, CUBE or ROLLUP"));
        }
        let window_column = group_by
            .expr()
            .iter()
            .position(|(expr, _)| expr.to_string().contains("date_bin"))
            .ok_or_else(|| unsupported("a GROUP BY without the date_bin window"))?;

        let group_columns = group_by.expr().len();
        let partial = Arc::new(AggregateExec::try_new(
            AggregateMode::Partial,
            group_by.clone(),
            aggr.clone(),
            filters,
            input,
            input_schema.clone(),
        )?);
        let state_schema = partial.schema();
        let no_filters = vec![None; aggr.len()];
        let reduce_input = slot_exec(&state_schema)?;
        let reduce = Arc::new(AggregateExec::try_new(
            AggregateMode::PartialReduce,
            group_by.as_final(),
            aggr.clone(),
            no_filters.clone(),
            reduce_input,
            input_schema.clone(),
        )?);
        let final_input = slot_exec(&state_schema)?;
        let final_aggregate: Arc<dyn ExecutionPlan> = Arc::new(AggregateExec::try_new(
            AggregateMode::Final,
            group_by.as_final(),
            aggr,
            no_filters,
            final_input,
            input_schema,
        )?);
        // The SQL's own plan with its aggregate (and everything below) replaced by the final phase.
        let finish = plan
            .transform_down(|node| {
                if node.as_any().downcast_ref::<AggregateExec>().is_some() {
                    Ok(Transformed::new(
                        final_aggregate.clone(),
                        true,
                        datafusion::common::tree_node::TreeNodeRecursion::Jump,
                    ))
                } else {
                    Ok(Transformed::no(node))
                }
            })?
            .data;
        Ok(Self {
            reads,
            partial: SqlStage::from_physical(ctx, partial)?,
            reduce: SqlStage::from_physical(ctx, reduce)?,
            finish: SqlStage::from_physical(ctx, finish)?,
            state_schema,
            window_column,
            group_columns,
        })
    }

    /// The same phases with inputs of their own (another runner in this process).
    pub fn fork(&self) -> Self {
        Self {
            reads: self.reads.clone(),
            partial: self.partial.fork(),
            reduce: self.reduce.fork(),
            finish: self.finish.fork(),
            state_schema: self.state_schema.clone(),
            window_column: self.window_column,
            group_columns: self.group_columns,
        }
    }

    /// Schema of partial states: group columns, then the accumulators' state columns.
    pub fn state_schema(&self) -> &SchemaRef {
        &self.state_schema
    }

    /// Index of the window-start column among the state columns.
    pub fn window_column(&self) -> usize {
        self.window_column
    }

    /// Number of GROUP BY keys (the first state columns).
    pub fn group_columns(&self) -> usize {
        self.group_columns
    }

    /// The names of the columns of the events the SQL reads.
    pub fn read_columns(&self) -> impl Iterator<Item = &str> {
        self.reads
            .fields()
            .iter()
            .map(|field| field.name().as_str())
    }

    /// The columns of `events` the SQL reads (no copy): the window copies only these.
    pub fn reads(&self, events: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let columns = self
            .reads
            .fields()
            .iter()
            .map(|field| {
                events.column_by_name(field.name()).cloned().ok_or_else(|| {
                    ArrowError::SchemaError(format!(
                        "the metrics SQL reads `{}`, which the parsed events lack",
                        field.name()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rows = RecordBatchOptions::new().with_row_count(Some(events.num_rows()));
        RecordBatch::try_new_with_options(self.reads.clone(), columns, &rows)
    }

    /// Partial states of one micro-batch of parsed events, as [`Self::reads`] gives them.
    pub async fn partial(&self, events: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.partial.run(events).await
    }

    /// Merges partial states so that each group keeps one state row.
    pub async fn reduce(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.reduce.run(states).await
    }

    /// Final rows of the SQL for the given states.
    pub async fn finish(&self, states: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.finish.run(states).await
    }
}

fn unsupported(what: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "the metrics SQL must be one GROUP BY aggregate over the events with a date_bin window; found {what}"
    ))
}

fn find_aggregate(plan: &Arc<dyn ExecutionPlan>) -> Result<&AggregateExec> {
    if let Some(aggregate) = plan.as_any().downcast_ref::<AggregateExec>() {
        return Ok(aggregate);
    }
    match plan.children().as_slice() {
        [child] => find_aggregate(child),
        [] => Err(unsupported("no aggregate")),
        _ => Err(unsupported("a join or union above the aggregate")),
    }
}

/// `input` reading its one events table through a slot of only the columns it uses, and
/// those columns' schema. DataFusion's scan of the whole table picks them from each batch as it
/// comes; the window, which copies every batch it hands the partial phase (one per source
/// partition), then copies only these.
fn read_only_what_is_used(
    input: Arc<dyn ExecutionPlan>,
) -> Result<(Arc<dyn ExecutionPlan>, SchemaRef)> {
    let mut scans = 0;
    input.apply(|node| {
        scans += usize::from(node.as_any().is::<StreamingTableExec>());
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    if scans != 1 {
        return Err(unsupported(&format!(
            "an aggregate over {scans} reads of the events table (one is needed)"
        )));
    }
    let mut reads = None;
    let input = input
        .transform_up(|node| {
            let Some(scan) = node.as_any().downcast_ref::<StreamingTableExec>() else {
                return Ok(Transformed::no(node));
            };
            let schema = Arc::new(scan.projected_schema().clone());
            reads = Some(schema.clone());
            let slot = BatchSlot::new(schema.clone());
            // A limit pushed into the scan stays with it.
            let narrow =
                StreamingTableExec::try_new(schema, vec![slot], None, vec![], false, scan.limit())?;
            Ok(Transformed::yes(Arc::new(narrow) as Arc<dyn ExecutionPlan>))
        })?
        .data;
    let reads = reads.ok_or_else(|| unsupported("no read of the events table"))?;
    Ok((input, reads))
}

fn slot_exec(schema: &SchemaRef) -> Result<Arc<dyn ExecutionPlan>> {
    let slot = BatchSlot::new(schema.clone());
    let exec = StreamingTableExec::try_new(schema.clone(), vec![slot], None, vec![], false, None)?;
    Ok(Arc::new(exec))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, StringArray, TimestampNanosecondArray};
    use arrow::compute::concat_batches;
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use arrow::record_batch::RecordBatch;
    use arrow::util::pretty::pretty_format_batches;

    use super::SplitAggregate;
    use crate::engine::{new_session, BatchSlot};

    fn events(rows: &[(&str, &str, i64, f64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("campaign_id", DataType::Utf8, true),
            Field::new("event_type", DataType::Utf8, true),
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                true,
            ),
            Field::new("revenue", DataType::Float64, true),
            Field::new("user_id", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(
                    TimestampNanosecondArray::from_iter_values(
                        rows.iter().map(|r| r.2 * 1_000_000_000),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "u"))),
            ],
        )
        .unwrap()
    }

    /// Sorted text of the rows without the processing-time column, for comparison.
    fn text(batches: &[RecordBatch]) -> String {
        let batch = concat_batches(&batches[0].schema(), batches).unwrap();
        let keep: Vec<usize> = (0..batch.num_columns())
            .filter(|i| batch.schema().field(*i).name() != "processed_at")
            .collect();
        let batch = batch.project(&keep).unwrap();
        let mut lines: Vec<String> = pretty_format_batches(&[batch])
            .unwrap()
            .to_string()
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines.join("\n")
    }

    #[tokio::test]
    async fn partial_reduce_final_equals_the_sql_run_directly() {
        let sql = "SELECT campaign_id, date_bin(INTERVAL '1 minute', \"timestamp\") AS window_start,
                          count(*) FILTER (WHERE event_type = 'click') AS clicks,
                          count(*) AS events, sum(revenue) AS revenue, avg(revenue) AS avg_revenue,
                          count(DISTINCT event_type) AS kinds, max(revenue) AS top,
                          CAST(count(*) FILTER (WHERE event_type = 'click') AS DOUBLE) * 100.0 / nullif(count(*), 0) AS ctr,
                          now() AS processed_at
                   FROM ev GROUP BY campaign_id, date_bin(INTERVAL '1 minute', \"timestamp\")";
        let rows = [
            ("a", "impression", 0, 0.0),
            ("a", "click", 10, 0.0),
            ("b", "conversion", 30, 5.5),
            ("a", "conversion", 59, 2.0),
            ("a", "impression", 60, 0.0),
            ("b", "click", 61, 0.0),
            ("a", "click", 119, 0.0),
            ("b", "conversion", 70, 1.25),
            ("a", "impression", 5, 0.0),
        ];
        let all = events(&rows);
        let ctx = new_session();
        ctx.register_batch("ev", all.clone()).unwrap();
        let direct = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        BatchSlot::new(all.schema()).register(&ctx, "ev").unwrap();

        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let split = SplitAggregate::new(&ctx, &plan).await.unwrap();
        let mut states = Vec::new();
        for chunk in [&rows[..3], &rows[3..4], &rows[4..]] {
            let read = split.reads(&events(chunk)).unwrap();
            states.extend(split.partial(vec![read]).await.unwrap());
        }
        let merged = split.reduce(states).await.unwrap();
        let merged_rows: usize = merged.iter().map(|b| b.num_rows()).sum();
        assert_eq!(merged_rows, 4, "one state row per campaign and window");
        let finished = split.finish(merged).await.unwrap();
        assert_eq!(text(&finished), text(&direct));
        assert_eq!(split.window_column(), 1);
    }

    #[tokio::test]
    async fn windows_close_by_watermark_and_survive_a_checkpoint() {
        use crate::window::state::WindowState;
        let sql =
            "SELECT campaign_id, date_bin(INTERVAL '1 minute', \"timestamp\") AS window_start,
                          count(*) AS events, sum(revenue) AS revenue
                   FROM ev GROUP BY campaign_id, date_bin(INTERVAL '1 minute', \"timestamp\")";
        let rows = [
            ("a", "click", 1, 1.0),
            ("b", "click", 61, 2.0),
            ("a", "click", 62, 3.0),
            ("a", "click", 125, 4.0),
        ];
        let ctx = new_session();
        let slot = BatchSlot::new(events(&rows).schema());
        slot.register(&ctx, "ev").unwrap();
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let split = SplitAggregate::new(&ctx, &plan).await.unwrap();
        let mut state = WindowState::new(split.state_schema().clone(), split.window_column());
        for chunk in rows.chunks(1) {
            let read = split.reads(&events(chunk)).unwrap();
            state
                .add(&split.partial(vec![read]).await.unwrap())
                .unwrap();
        }
        let minute = 60_000_000;
        assert_eq!(state.open_windows(), vec![0, minute, 2 * minute]);
        assert_eq!(state.closable(minute + 5_000_000, minute), vec![0]);
        assert_eq!(state.closable(2 * minute, minute), vec![0, minute]);

        // A checkpoint round trip keeps every partial state.
        let mut restored = WindowState::new(split.state_schema().clone(), split.window_column());
        restored
            .restore_ipc(&state.to_ipc().unwrap(), split.group_columns())
            .unwrap();
        assert_eq!(restored.rows(), state.rows());

        let second = restored.take(minute);
        let closed = split
            .finish(split.reduce(second).await.unwrap())
            .await
            .unwrap();
        let text = text(&closed);
        assert!(
            text.contains("| a           | 1970-01-01T00:01:00Z | 1      | 3.0     |"),
            "{text}"
        );
        assert!(
            text.contains("| b           | 1970-01-01T00:01:00Z | 1      | 2.0     |"),
            "{text}"
        );
        assert_eq!(restored.open_windows(), vec![0, 2 * minute]);
    }

    #[tokio::test]
    async fn the_partial_phase_reads_only_the_columns_the_sql_uses() {
        let sql =
            "SELECT campaign_id, date_bin(INTERVAL '1 minute', \"timestamp\") AS window_start,
                          sum(revenue) AS revenue
                   FROM ev GROUP BY campaign_id, date_bin(INTERVAL '1 minute', \"timestamp\")";
        let rows = [
            ("a", "click", 1, 1.5),
            ("b", "click", 61, 2.0),
            ("a", "view", 2, 3.0),
        ];
        let ctx = new_session();
        BatchSlot::new(events(&rows).schema())
            .register(&ctx, "ev")
            .unwrap();
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let split = SplitAggregate::new(&ctx, &plan).await.unwrap();

        let read = split.reads(&events(&rows)).unwrap();
        let names: Vec<String> = read
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["campaign_id", "timestamp", "revenue"]);
        assert_eq!(read.num_rows(), 3);
        let states = split.partial(vec![read]).await.unwrap();
        let closed = split
            .finish(split.reduce(states).await.unwrap())
            .await
            .unwrap();
        let text = text(&closed);
        assert!(
            text.contains("| a           | 1970-01-01T00:00:00Z | 4.5     |"),
            "{text}"
        );
        assert!(
            text.contains("| b           | 1970-01-01T00:01:00Z | 2.0     |"),
            "{text}"
        );

        let missing = events(&rows).project(&[0, 1, 3]).unwrap();
        let err = split.reads(&missing).unwrap_err().to_string();
        assert!(err.contains("reads `timestamp`"), "{err}");
    }

    #[tokio::test]
    async fn an_aggregate_over_two_reads_of_the_events_is_refused() {
        let sql =
            "SELECT a.campaign_id, date_bin(INTERVAL '1 minute', a.\"timestamp\") AS window_start,
                          count(*) AS events
                   FROM ev a JOIN ev b ON a.user_id = b.user_id
                   GROUP BY a.campaign_id, date_bin(INTERVAL '1 minute', a.\"timestamp\")";
        let ctx = new_session();
        BatchSlot::new(events(&[]).schema())
            .register(&ctx, "ev")
            .unwrap();
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        let err = SplitAggregate::new(&ctx, &plan)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("2 reads of the events table"), "{err}");
    }
}
