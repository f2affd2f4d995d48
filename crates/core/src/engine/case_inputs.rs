//! A `CASE` that copies only the fields it reads.
//!
//! DataFusion evaluates a `CASE` branch by branch on the rows still unmatched, filtering the
//! columns the `CASE` reads for each branch. A column it reads may be a struct, though: the
//! parsing SQL's parsed document (every field of the event) and its type map. The event
//! time's two-branch `CASE` reads one field of the document (`f['timestamp']`) and so copied
//! every field of every row. Here each `CASE` gets a batch of just its inputs: the columns it
//! reads and the struct fields it reads, taken from the full batch first. Taking a column or a
//! field cannot fail and copies no values, so the result and the errors are the `CASE`'s own.

use std::any::Any;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::{CaseExpr, Column, Literal};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::ExecutionPlan;

use super::first_match::FirstMatch;

/// `plan` with every `CASE` of its projections evaluated on a batch of its inputs alone.
pub fn narrow_case_inputs(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    super::projections::rewrite_projections(plan, |expr, schema| {
        expr.transform_down(|e| {
            if !(e.as_any().is::<CaseExpr>() || e.as_any().is::<FirstMatch>()) {
                return Ok(Transformed::no(e));
            }
            let narrowed = NarrowCase::of(e, schema)?;
            // The CASEs inside it see the narrow batch already.
            Ok(Transformed::new(narrowed, true, TreeNodeRecursion::Jump))
        })
    })
}

/// Whether `expr` is a column, or a field of one (`get_field` with literal names), all the way
/// down: a value taken from the batch without computing anything.
fn is_input(expr: &Arc<dyn PhysicalExpr>) -> bool {
    let any = expr.as_any();
    if any.is::<Column>() {
        return true;
    }
    let Some(function) = any.downcast_ref::<ScalarFunctionExpr>() else {
        return false;
    };
    match function.args() {
        [from, names @ ..] if function.name() == "get_field" && !names.is_empty() => {
            names.iter().all(|n| n.as_any().is::<Literal>()) && is_input(from)
        }
        _ => false,
    }
}

/// A `CASE` evaluated on a batch of its inputs, taken from the full batch.
#[derive(Debug, Eq)]
pub struct NarrowCase {
    /// What the `CASE` reads, evaluated on the full batch.
    inputs: Vec<Arc<dyn PhysicalExpr>>,
    /// The narrow batch's schema: one column per input, each nullable (a field of a struct
    /// may be declared not null and still be null where the struct is).
    schema: SchemaRef,
    /// The `CASE`, reading the narrow batch.
    case: Arc<dyn PhysicalExpr>,
    /// The `CASE` as planned, reading the full batch: its type and nullability are the ones
    /// the plan was built with.
    planned: Arc<dyn PhysicalExpr>,
}

impl NarrowCase {
    /// `case` (of a batch of `schema`) reading a batch of its inputs instead.
    fn of(case: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Arc<dyn PhysicalExpr>> {
        let mut inputs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
        let mut fields: Vec<Field> = Vec::new();
        let remapped = case
            .clone()
            .transform_down(|e| {
                if !is_input(&e) {
                    return Ok(Transformed::no(e));
                }
                let index = match inputs.iter().position(|known| known == &e) {
                    Some(index) => index,
                    None => {
                        let field = e.return_field(schema)?;
                        fields.push(
                            Field::new(
                                format!("input_{}", inputs.len()),
                                field.data_type().clone(),
                                true,
                            )
                            .with_metadata(field.metadata().clone()),
                        );
                        inputs.push(e);
                        inputs.len() - 1
                    }
                };
                let column: Arc<dyn PhysicalExpr> =
                    Arc::new(Column::new(fields[index].name(), index));
                Ok(Transformed::new(column, true, TreeNodeRecursion::Jump))
            })?
            .data;
        Ok(Arc::new(NarrowCase {
            inputs,
            schema: Arc::new(Schema::new(fields)),
            case: remapped,
            planned: case,
        }))
    }
}

impl PartialEq for NarrowCase {
    fn eq(&self, other: &Self) -> bool {
        self.inputs == other.inputs && self.planned.eq(&other.planned)
    }
}

impl Hash for NarrowCase {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inputs.hash(state);
        self.planned.hash(state);
    }
}

impl fmt::Display for NarrowCase {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let inputs: Vec<String> = self.inputs.iter().map(|i| i.to_string()).collect();
        write!(f, "{} WITH INPUTS [{}]", self.case, inputs.join(", "))
    }
}

impl PhysicalExpr for NarrowCase {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.planned.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.planned.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.planned.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let columns = self
            .inputs
            .iter()
            .map(|input| input.evaluate(batch)?.into_array(batch.num_rows()))
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let narrow = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        self.case.evaluate(&narrow)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.inputs.iter().collect()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(NarrowCase {
            inputs: children,
            schema: self.schema.clone(),
            case: self.case.clone(),
            planned: self.planned.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.case.fmt_sql(f)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray, Int64Array, StringArray, StructArray};
    use arrow::buffer::NullBuffer;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// A batch whose struct column `f` holds a text field `ts` (null in some rows) and a wide
    /// field nobody's CASE reads, with a number column `n`.
    fn batch() -> RecordBatch {
        let ts = StringArray::from(vec![Some("a"), None, Some("c"), None]);
        let wide = StringArray::from(vec!["x".repeat(100); 4]);
        // `wide` is declared not null in a struct that is null in one row.
        let f = StructArray::new(
            vec![
                Arc::new(Field::new("ts", DataType::Utf8, true)),
                Arc::new(Field::new("wide", DataType::Utf8, false)),
            ]
            .into(),
            vec![Arc::new(ts), Arc::new(wide)],
            Some(NullBuffer::from(vec![true, true, true, false])),
        );
        RecordBatch::try_from_iter(vec![
            ("f", Arc::new(f) as Arc<dyn Array>),
            (
                "n",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as Arc<dyn Array>,
            ),
        ])
        .expect("batch")
    }

    #[tokio::test]
    async fn a_case_gives_the_same_answers_reading_only_its_inputs() {
        let ctx = SessionContext::new();
        ctx.register_batch("t", batch()).expect("register");
        let sql = "SELECT CASE WHEN f['ts'] IS NULL THEN CAST(n * 10 AS VARCHAR) \
                   ELSE f['ts'] END AS picked, \
                   CASE WHEN n > 2 THEN CASE WHEN f['ts'] = 'c' THEN 'third' END END AS nested, \
                   CASE WHEN n > 1 THEN f['wide'] END AS wide \
                   FROM t";
        let planned = ctx
            .sql(sql)
            .await
            .expect("sql")
            .create_physical_plan()
            .await
            .expect("plan");
        let narrowed = narrow_case_inputs(planned.clone()).expect("rewrite");
        let shown = datafusion::physical_plan::displayable(narrowed.as_ref())
            .indent(true)
            .to_string();
        assert!(shown.contains("WITH INPUTS"), "{shown}");
        let run = |plan: Arc<dyn ExecutionPlan>| {
            let ctx = ctx.task_ctx();
            async move { datafusion::physical_plan::collect(plan, ctx).await }
        };
        let expected = run(planned).await.expect("as planned");
        let got = run(narrowed).await.expect("narrowed");
        assert_eq!(got, expected);
        let text = |column: usize| {
            arrow::compute::cast(got[0].column(column), &DataType::Utf8).expect("text")
        };
        let picked = text(0);
        let picked = picked.as_string::<i32>();
        assert_eq!(picked.value(0), "a");
        assert_eq!(picked.value(1), "20");
        assert_eq!(picked.value(3), "40", "a null struct's field is null");
        let nested = text(1);
        let nested = nested.as_string::<i32>();
        assert_eq!(nested.value(2), "third");
        assert!(nested.is_null(0) && nested.is_null(3));
        let wide = text(2);
        let wide = wide.as_string::<i32>();
        assert!(wide.is_null(0));
        assert_eq!(wide.value(1).len(), 100);
    }
}
