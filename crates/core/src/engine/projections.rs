//! Rewriting the expressions of every projection of a physical plan (the parsing SQL's plan is
//! a chain of projections over the batch slot).

use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::ExecutionPlan;

/// `plan` with `rewrite` applied to each projected expression (given the projection's input
/// schema); projections it leaves alone are kept as they are.
pub fn rewrite_projections(
    plan: Arc<dyn ExecutionPlan>,
    rewrite: impl Fn(Arc<dyn PhysicalExpr>, &Schema) -> Result<Transformed<Arc<dyn PhysicalExpr>>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(projection) = node.as_any().downcast_ref::<ProjectionExec>() else {
            return Ok(Transformed::no(node));
        };
        let schema = projection.input().schema();
        let mut changed = false;
        let mut exprs = Vec::with_capacity(projection.expr().len());
        for projected in projection.expr() {
            let rewritten = rewrite(projected.expr.clone(), &schema)?;
            changed |= rewritten.transformed;
            exprs.push(ProjectionExpr {
                expr: rewritten.data,
                alias: projected.alias.clone(),
            });
        }
        if !changed {
            return Ok(Transformed::no(node));
        }
        let rewritten = ProjectionExec::try_new(exprs, projection.input().clone())?;
        Ok(Transformed::yes(
            Arc::new(rewritten) as Arc<dyn ExecutionPlan>
        ))
    })
    .map(|t| t.data)
}

/// For the rewrites' tests: `select` over the table `t`, run as DataFusion plans it and as
/// `rewrite` rewrites that plan; asserts both give the same batches and the rewritten
/// projections hold `rewritten` expressions of type `E`.
#[cfg(test)]
pub(crate) async fn assert_rewrite_same_as_datafusion<E: 'static>(
    t: datafusion::datasource::MemTable,
    select: &str,
    rewrite: impl Fn(Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>>,
    rewritten: usize,
) {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::physical_plan::{collect, displayable};

    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", Arc::new(t)).expect("register");
    let frame = ctx.sql(select).await.expect("plans");
    let plan = frame.create_physical_plan().await.expect("physical plan");
    let ours = rewrite(plan.clone()).expect("rewrites");
    let mut found = 0;
    ours.apply(|node| {
        if let Some(projection) = node.as_any().downcast_ref::<ProjectionExec>() {
            for projected in projection.expr() {
                projected.expr.apply(|e| {
                    found += usize::from(e.as_any().is::<E>());
                    Ok(TreeNodeRecursion::Continue)
                })?;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("walks the plan");
    let shown = displayable(ours.as_ref()).indent(true).to_string();
    assert_eq!(found, rewritten, "{shown}");
    let theirs = collect(plan, ctx.task_ctx()).await.expect("runs");
    let ours = collect(ours, ctx.task_ctx()).await.expect("runs");
    assert_eq!(theirs, ours, "{shown}");
}
