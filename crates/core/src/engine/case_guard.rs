//! One guard in front of a long `CASE WHEN ... THEN ... END` chain, such as the parsing SQL's
//! validation rules.
//!
//! DataFusion evaluates such a `CASE` branch by branch, and after every branch that matches some
//! rows of a batch it copies every column the `CASE` reads for the rows still unmatched: a few
//! invalid events spread over 20 rules made 20 copies of the batch's string columns, a third of
//! the parsing SQL's work when profiled (docs/performance.md). `CASE WHEN w1 OR ... OR wn THEN <the same CASE> END` gives the
//! same result (no ELSE: a row no rule matches is NULL either way, and the inner `CASE` still
//! picks the first rule that matches) while the inner `CASE` only ever sees the rows some rule
//! matches. The guard evaluates every rule on every row, so it is only put in front of rules
//! that cannot fail on a row an earlier rule would have kept them from (no division, no cast
//! that can fail, no function outside a known list).

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, Literal,
    NotExpr, TryCastExpr,
};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::ExecutionPlan;

/// A `CASE` with fewer branches is left as planned: the copies it can save are few.
const MIN_BRANCHES: usize = 4;

/// Functions that return a value (or NULL) for every input of the types they were planned for.
const INFALLIBLE_FUNCTIONS: &[&str] = &[
    "btrim",
    "ltrim",
    "rtrim",
    "trim",
    "character_length",
    "char_length",
    "length",
    "octet_length",
    "bit_length",
    "lower",
    "upper",
    "get_field",
    "starts_with",
    "ends_with",
];

/// `plan` with a guard in front of every long, guardable `CASE` of its projections.
pub fn guard_long_cases(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    super::projections::rewrite_projections(plan, guard_expr)
}

/// `expr` with its long, guardable `CASE`s guarded.
fn guard_expr(
    expr: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    expr.transform_down(|e| {
        let Some(case) = e.as_any().downcast_ref::<CaseExpr>() else {
            return Ok(Transformed::no(e));
        };
        let whens: Vec<Arc<dyn PhysicalExpr>> = case
            .when_then_expr()
            .iter()
            .map(|(when, _)| when.clone())
            .collect();
        let guardable = case.expr().is_none()
            && case.else_expr().is_none()
            && whens.len() >= MIN_BRANCHES
            && whens.iter().all(|when| infallible(when, schema));
        let Some(guard) = whens
            .into_iter()
            .reduce(|a, b| Arc::new(BinaryExpr::new(a, Operator::Or, b)))
            .filter(|_| guardable)
        else {
            return Ok(Transformed::no(e));
        };
        let guarded: Arc<dyn PhysicalExpr> =
            Arc::new(CaseExpr::try_new(None, vec![(guard, e.clone())], None)?);
        // The inner CASE is the original: it is not guarded again.
        Ok(Transformed::new(guarded, true, TreeNodeRecursion::Jump))
    })
}

/// Whether `expr` yields a value or NULL for every row, never an error.
fn infallible(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> bool {
    let any = expr.as_any();
    let children = || expr.children().iter().all(|c| infallible(c, schema));
    if any.is::<Column>() || any.is::<Literal>() {
        return true;
    }
    if any.is::<IsNullExpr>()
        || any.is::<IsNotNullExpr>()
        || any.is::<NotExpr>()
        || any.is::<TryCastExpr>()
        || any.is::<InListExpr>()
    {
        return children();
    }
    if let Some(binary) = any.downcast_ref::<BinaryExpr>() {
        use Operator::*;
        let compares = matches!(
            binary.op(),
            Eq | NotEq | Lt | LtEq | Gt | GtEq | And | Or | IsDistinctFrom | IsNotDistinctFrom
        );
        return compares && children();
    }
    if let Some(cast) = any.downcast_ref::<CastExpr>() {
        let widens = cast
            .expr()
            .data_type(schema)
            .is_ok_and(|from| widening(&from, cast.cast_type()));
        return widens && children();
    }
    if let Some(function) = any.downcast_ref::<ScalarFunctionExpr>() {
        return INFALLIBLE_FUNCTIONS.contains(&function.name()) && children();
    }
    false
}

/// Whether every value of `from` has a value in `to`.
fn widening(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to {
        return true;
    }
    match (from, to) {
        (Dictionary(_, values), to) => widening(values, to),
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Int8, Int16 | Int32 | Int64) | (Int16, Int32 | Int64) | (Int32, Int64) => true,
        (UInt8, UInt16 | UInt32 | UInt64 | Int16 | Int32 | Int64) => true,
        (UInt16, UInt32 | UInt64 | Int32 | Int64) | (UInt32, UInt64 | Int64) => true,
        (from, Float64) => from.is_numeric(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::Field;
    use datafusion::physical_plan::collect;
    use datafusion::physical_plan::projection::ProjectionExec;
    use datafusion::prelude::SessionContext;

    use super::*;

    const RULES: &str = "CASE
        WHEN id IS NULL THEN 'missing id'
        WHEN trim(id) = '' THEN 'blank id'
        WHEN character_length(id) > 3 THEN 'too long: ' || id
        WHEN n < 0 THEN 'negative'
        WHEN kind NOT IN ('a', 'b') THEN 'unknown kind'
      END";

    async fn session() -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("kind", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("x"),
                    None,
                    Some(" "),
                    Some("long"),
                    Some("y"),
                    Some("z"),
                    Some("w"),
                    Some(""),
                ])),
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    Some(-1),
                    Some(1),
                    Some(-1),
                    Some(-5),
                    Some(2),
                    None,
                    Some(0),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("a"),
                    Some("c"),
                    Some("a"),
                    Some("c"),
                    Some("c"),
                    None,
                    Some("b"),
                ])),
            ],
        )
        .expect("batch");
        let ctx = SessionContext::new();
        let table =
            datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]]).expect("table");
        ctx.register_table("t", Arc::new(table)).expect("register");
        ctx
    }

    async fn plan(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        let frame = ctx.sql(sql).await.expect("sql");
        frame.create_physical_plan().await.expect("plan")
    }

    async fn reasons(ctx: &SessionContext, plan: Arc<dyn ExecutionPlan>) -> Vec<Option<String>> {
        let batches = collect(plan, ctx.task_ctx()).await.expect("run");
        batches
            .iter()
            .flat_map(|b| {
                let column = b.column(0).as_string::<i32>().clone();
                (0..column.len())
                    .map(|i| column.is_valid(i).then(|| column.value(i).to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn projected_case(plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn PhysicalExpr> {
        let projection = plan
            .as_any()
            .downcast_ref::<ProjectionExec>()
            .expect("a projection at the root");
        projection.expr()[0].expr.clone()
    }

    #[tokio::test]
    async fn a_guarded_chain_gives_every_row_the_same_reason() {
        let ctx = session().await;
        let sql = format!("SELECT {RULES} AS reason FROM t");
        let planned = plan(&ctx, &sql).await;
        let guarded = guard_long_cases(planned.clone()).expect("guard");
        let outer = projected_case(&guarded);
        let outer = outer
            .as_any()
            .downcast_ref::<CaseExpr>()
            .expect("a CASE at the top");
        assert_eq!(outer.when_then_expr().len(), 1, "one guard");
        let inner = &outer.when_then_expr()[0].1;
        let inner = inner
            .as_any()
            .downcast_ref::<CaseExpr>()
            .expect("the rules");
        assert_eq!(inner.when_then_expr().len(), 5);

        let expected = [
            None,
            Some("missing id"),
            Some("blank id"),
            Some("too long: long"),
            Some("negative"),
            Some("unknown kind"),
            None,
            Some("blank id"),
        ]
        .map(|r| r.map(String::from))
        .to_vec();
        assert_eq!(reasons(&ctx, planned).await, expected);
        assert_eq!(reasons(&ctx, guarded).await, expected);
    }

    #[tokio::test]
    async fn a_chain_with_a_rule_that_can_fail_is_left_alone() {
        let ctx = session().await;
        // `10 / n` fails where n = 0: guarded, it would run on the row the first rule keeps.
        let sql = "SELECT CASE
            WHEN n = 0 THEN 'zero'
            WHEN n IS NULL THEN 'missing'
            WHEN 10 / n > 1 THEN 'small'
            WHEN id IS NULL THEN 'no id'
          END AS reason FROM t";
        let planned = plan(&ctx, sql).await;
        let guarded = guard_long_cases(planned.clone()).expect("guard");
        let case = projected_case(&guarded);
        let case = case.as_any().downcast_ref::<CaseExpr>().expect("a CASE");
        assert_eq!(case.when_then_expr().len(), 4, "not guarded");
        assert!(reasons(&ctx, guarded).await.contains(&Some("zero".into())));
    }

    #[test]
    fn casts_that_widen_and_casts_that_can_fail() {
        use DataType::*;
        assert!(widening(&Int32, &Int64));
        assert!(widening(&Dictionary(Box::new(Int8), Box::new(Utf8)), &Utf8));
        assert!(widening(&Int64, &Float64));
        assert!(!widening(&Utf8, &Int64));
        assert!(!widening(&Int64, &Int32));
    }
}
