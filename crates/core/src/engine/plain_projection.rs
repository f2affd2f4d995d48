//! Projections executed without DataFusion's per-expression timers.
//!
//! `ProjectionExec` registers a timer named after each of its expressions every time it is
//! executed, formatting every expression as SQL to name it. A stage executes its plan once a
//! micro-batch, and the parsing SQL's validation expressions are long: on a small batch that
//! naming costs more than evaluating them. Nothing reads those timers (the stages time
//! themselves), so the stages' plans evaluate their projections with the same `Projector`,
//! untimed.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::projection::Projector;
use datafusion::physical_plan::execution_plan::has_same_children_properties;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// `plan` with each `ProjectionExec` replaced by a [`PlainProjection`] of the same expressions.
pub fn without_expression_timers(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(projection) = node.as_any().downcast_ref::<ProjectionExec>() else {
            return Ok(Transformed::no(node));
        };
        Ok(Transformed::yes(
            Arc::new(PlainProjection::of(projection)?) as Arc<dyn ExecutionPlan>
        ))
    })
    .map(|transformed| transformed.data)
}

/// A projection whose executions evaluate its expressions without timing each one.
#[derive(Debug)]
pub struct PlainProjection {
    projector: Arc<Projector>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl PlainProjection {
    fn of(projection: &ProjectionExec) -> Result<Self> {
        let input = projection.input().clone();
        Ok(Self {
            projector: Arc::new(
                projection
                    .projection_expr()
                    .make_projector(&input.schema())?,
            ),
            input,
            properties: projection.properties().clone(),
        })
    }
}

impl DisplayAs for PlainProjection {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let exprs: Vec<String> = self
            .projector
            .projection()
            .as_ref()
            .iter()
            .map(|projected| format!("{} as {}", projected.expr, projected.alias))
            .collect();
        write!(f, "PlainProjection: expr=[{}]", exprs.join(", "))
    }
}

impl ExecutionPlan for PlainProjection {
    fn name(&self) -> &str {
        "PlainProjection"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Every execution starts from a reset copy of the plan (see `SqlStage::run`): its
        // children keep their properties, and so does this node, without working them out again.
        if has_same_children_properties(self.as_ref(), &children)? {
            return Ok(Arc::new(Self {
                projector: self.projector.clone(),
                input: children.swap_remove(0),
                properties: self.properties.clone(),
            }));
        }
        let projection = ProjectionExec::try_new(
            self.projector.projection().as_ref().iter().cloned(),
            children.swap_remove(0),
        )?;
        Ok(Arc::new(Self::of(&projection)?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let projector = self.projector.clone();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            input.map(move |batch| batch.and_then(|batch| projector.project_batch(&batch))),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::collect;
    use datafusion::physical_plan::execution_plan::reset_plan_states;
    use datafusion::prelude::SessionContext;

    fn projections(plan: &Arc<dyn ExecutionPlan>) -> (usize, usize) {
        let mut counts = (0, 0);
        plan.apply(|node| {
            if node.as_any().is::<ProjectionExec>() {
                counts.0 += 1;
            }
            if node.as_any().is::<PlainProjection>() {
                counts.1 += 1;
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .expect("walk");
        counts
    }

    #[tokio::test]
    async fn every_projection_is_replaced_and_gives_the_same_rows_run_after_run() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4)])),
                Arc::new(StringArray::from(vec![
                    Some("x"),
                    Some("y"),
                    None,
                    Some("z"),
                ])),
            ],
        )
        .expect("batch");
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema, vec![vec![batch]]).expect("table");
        ctx.register_table("t", Arc::new(table)).expect("register");
        let sql = "SELECT a + 1 AS b, upper(s) AS u, CASE WHEN a > 2 THEN 'big' END AS size \
                   FROM (SELECT a * 2 AS a, s FROM t) WHERE s IS NOT NULL";
        let planned = ctx
            .sql(sql)
            .await
            .expect("sql")
            .create_physical_plan()
            .await
            .expect("plan");
        assert!(projections(&planned).0 >= 1, "the plan has a projection");
        let expected = collect(planned.clone(), ctx.task_ctx()).await.expect("run");

        let plain = without_expression_timers(planned).expect("rewrite");
        assert_eq!(projections(&plain).0, 0, "a ProjectionExec is left");
        assert!(projections(&plain).1 >= 1);
        let shown = datafusion::physical_plan::displayable(plain.as_ref())
            .indent(false)
            .to_string();
        assert!(shown.contains("PlainProjection: expr=["), "{shown}");
        for _ in 0..3 {
            let run = reset_plan_states(plain.clone()).expect("reset");
            let got = collect(run, ctx.task_ctx()).await.expect("run");
            assert_eq!(got, expected);
            assert_eq!(got[0].schema(), expected[0].schema());
        }
        assert_eq!(
            expected.iter().map(RecordBatch::num_rows).sum::<usize>(),
            3,
            "the filter kept three rows"
        );
    }
}
