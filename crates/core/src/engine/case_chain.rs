//! Which long `CASE WHEN ... THEN ... END` chains, such as the parsing SQL's validation rules,
//! run as one [`FirstMatch`] pass instead of branch by branch.
//!
//! DataFusion evaluates such a `CASE` branch by branch, and after every branch that matches some
//! rows of a batch it copies every column the `CASE` reads for the rows still unmatched: a few
//! invalid events spread over 20 rules made 20 copies of the batch's string columns, a third of
//! the parsing SQL's work when profiled (docs/performance.md). [`FirstMatch`] runs every rule on
//! every row instead, so it only takes rules that cannot fail on a row an earlier rule would
//! have kept them from (no division, no cast that can fail, no function outside a known list).

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

use super::first_match::FirstMatch;

/// A `CASE` with fewer branches is left as planned: the copies it saves are few.
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

/// `plan` with every long `CASE` of its projections whose rules cannot fail run as a
/// [`FirstMatch`].
pub fn first_match_long_cases(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    super::projections::rewrite_projections(plan, first_match_expr)
}

/// `expr` with its long `CASE`s whose rules cannot fail run as [`FirstMatch`]es.
fn first_match_expr(
    expr: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    expr.transform_down(|e| {
        let Some(case) = e.as_any().downcast_ref::<CaseExpr>() else {
            return Ok(Transformed::no(e));
        };
        let chained = case.expr().is_none()
            && case.else_expr().is_none()
            && case.when_then_expr().len() >= MIN_BRANCHES
            && case
                .when_then_expr()
                .iter()
                .all(|(when, _)| infallible(when, schema));
        if !chained {
            return Ok(Transformed::no(e));
        }
        let chain: Arc<dyn PhysicalExpr> = Arc::new(FirstMatch::new(
            case.when_then_expr().to_vec(),
            case.data_type(schema)?,
        ));
        // Its branches are the CASE's own: nothing in them to rewrite again.
        Ok(Transformed::new(chain, true, TreeNodeRecursion::Jump))
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
                let column = arrow::compute::cast(b.column(0), &DataType::Utf8).expect("text");
                let column = column.as_string::<i32>().clone();
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
    async fn a_chain_run_as_one_pass_gives_every_row_the_same_reason() {
        let ctx = session().await;
        let sql = format!("SELECT {RULES} AS reason FROM t");
        let planned = plan(&ctx, &sql).await;
        let chained = first_match_long_cases(planned.clone()).expect("rewrite");
        let chain = projected_case(&chained);
        let chain = chain
            .as_any()
            .downcast_ref::<FirstMatch>()
            .expect("the rules in one pass");
        assert_eq!(chain.branches().count(), 5);

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
        assert_eq!(reasons(&ctx, chained).await, expected);
    }

    #[tokio::test]
    async fn a_chain_with_a_rule_that_can_fail_is_left_alone() {
        let ctx = session().await;
        // `10 / n` fails where n = 0: in one pass, it would run on the row the first rule keeps.
        let sql = "SELECT CASE
            WHEN n = 0 THEN 'zero'
            WHEN n IS NULL THEN 'missing'
            WHEN 10 / n > 1 THEN 'small'
            WHEN id IS NULL THEN 'no id'
          END AS reason FROM t";
        let planned = plan(&ctx, sql).await;
        let rewritten = first_match_long_cases(planned.clone()).expect("rewrite");
        let case = projected_case(&rewritten);
        let case = case.as_any().downcast_ref::<CaseExpr>().expect("a CASE");
        assert_eq!(case.when_then_expr().len(), 4, "left as planned");
        assert!(reasons(&ctx, rewritten)
            .await
            .contains(&Some("zero".into())));
    }

    #[tokio::test]
    async fn a_result_runs_only_on_the_rows_that_take_its_branch() {
        let ctx = session().await;
        // `10 / n` fails where n = 0, and no row that takes its branch has 0: run on any other
        // row, it would fail the batch. A NULL condition (n and kind NULL) matches no row.
        let sql = "SELECT CASE
            WHEN id IS NULL THEN 'missing id'
            WHEN n < 0 THEN 'tenth: ' || CAST(10 / n AS VARCHAR)
            WHEN kind NOT IN ('a', 'b') THEN 'unknown: ' || kind
            WHEN id = 'none' THEN 'never'
          END AS reason FROM t";
        let planned = plan(&ctx, sql).await;
        let chained = first_match_long_cases(planned.clone()).expect("rewrite");
        let chain = projected_case(&chained);
        assert!(chain.as_any().is::<FirstMatch>(), "one pass: {chain}");
        let expected = [
            None,
            Some("missing id"),
            Some("unknown: c"),
            Some("tenth: -10"),
            Some("tenth: -2"),
            Some("unknown: c"),
            None,
            None,
        ]
        .map(|r| r.map(String::from))
        .to_vec();
        assert_eq!(reasons(&ctx, planned).await, expected);
        assert_eq!(reasons(&ctx, chained).await, expected);
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
