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
