//! `trim(text) = ''` (or `ltrim`, `rtrim`, on either side of the `=`) read as "the text is
//! nothing but spaces", without the trimmed copy of every row the function makes.
//!
//! The parsing SQL's rules ask it of each identifier on every row (`blank event_id`), and the
//! trim functions build a new string column each time to compare it with `''`. Without a
//! second argument they remove spaces (` `) only, so the text trims to `''` exactly when every
//! byte of it is a space; NULL stays NULL.

use std::any::Any;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::expressions::{BinaryExpr, Literal};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::ExecutionPlan;

/// `plan` with every `trim(text) = ''` of `Utf8` text in its projections tested by
/// [`AllSpaces`].
pub fn test_blanks_directly(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    super::projections::rewrite_projections(plan, |expr, schema| {
        expr.transform_up(|e| {
            let Some(binary) = e.as_any().downcast_ref::<BinaryExpr>() else {
                return Ok(Transformed::no(e));
            };
            if *binary.op() != Operator::Eq {
                return Ok(Transformed::no(e));
            }
            let trimmed = match (binary.left(), binary.right()) {
                (side, other) | (other, side) if is_empty_text(other) => trimmed_text(side),
                _ => None,
            };
            let Some(text) = trimmed else {
                return Ok(Transformed::no(e));
            };
            if text.data_type(schema)? != DataType::Utf8 {
                return Ok(Transformed::no(e));
            }
            Ok(Transformed::yes(
                Arc::new(AllSpaces { expr: text }) as Arc<dyn PhysicalExpr>
            ))
        })
    })
}

/// The text of `trim(text)`, `ltrim(text)` or `rtrim(text)` (spaces only, no second argument).
fn trimmed_text(expr: &Arc<dyn PhysicalExpr>) -> Option<Arc<dyn PhysicalExpr>> {
    let function = expr.as_any().downcast_ref::<ScalarFunctionExpr>()?;
    match (function.name(), function.args()) {
        ("btrim" | "ltrim" | "rtrim", [text]) => Some(text.clone()),
        _ => None,
    }
}

/// Whether `expr` is the literal `''`.
fn is_empty_text(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.as_any()
        .downcast_ref::<Literal>()
        .is_some_and(|literal| match literal.value() {
            ScalarValue::Utf8(Some(text))
            | ScalarValue::Utf8View(Some(text))
            | ScalarValue::LargeUtf8(Some(text)) => text.is_empty(),
            _ => false,
        })
}

/// Whether each `Utf8` text is nothing but spaces (empty included): `trim(expr) = ''`.
#[derive(Debug, Eq)]
pub struct AllSpaces {
    expr: Arc<dyn PhysicalExpr>,
}

impl PartialEq for AllSpaces {
    fn eq(&self, other: &Self) -> bool {
        self.expr.eq(&other.expr)
    }
}

impl Hash for AllSpaces {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.expr.hash(state);
    }
}

impl fmt::Display for AllSpaces {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "btrim({}) = ''", self.expr)
    }
}

fn all_spaces(text: &str) -> bool {
    text.bytes().all(|b| b == b' ')
}

impl PhysicalExpr for AllSpaces {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.expr.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        match self.expr.evaluate(batch)? {
            ColumnarValue::Array(array) => {
                let Some(text) = array.as_string_opt::<i32>() else {
                    return datafusion::common::exec_err!(
                        "trim(text) = '': {} is not Utf8 text",
                        array.data_type()
                    );
                };
                Ok(ColumnarValue::Array(Arc::new(BooleanArray::from_unary(
                    text, all_spaces,
                ))))
            }
            ColumnarValue::Scalar(ScalarValue::Utf8(text)) => Ok(ColumnarValue::Scalar(
                ScalarValue::Boolean(text.as_deref().map(all_spaces)),
            )),
            ColumnarValue::Scalar(other) => datafusion::common::exec_err!(
                "trim(text) = '': {} is not Utf8 text",
                other.data_type()
            ),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.expr]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(AllSpaces {
            expr: children[0].clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "btrim(")?;
        self.expr.fmt_sql(f)?;
        write!(f, ") = ''")
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::Field;
    use datafusion::datasource::MemTable;

    use super::*;

    /// Each test of the query, planned by DataFusion and rewritten, gives what DataFusion's own
    /// plan gives; the rewritten plan reads `rewritten` of them with [`AllSpaces`].
    async fn same_as_datafusion(select: &str, rewritten: usize) {
        let texts: ArrayRef = Arc::new(StringArray::from(vec![
            Some(""),
            Some(" "),
            Some("   "),
            Some(" x "),
            Some("x"),
            Some("\t"),
            Some(" \u{a0} "),
            Some("é"),
            None,
        ]));
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![texts]).expect("batch");
        let table = MemTable::try_new(schema, vec![vec![batch]]).expect("table");
        crate::engine::projections::assert_rewrite_same_as_datafusion::<AllSpaces>(
            table,
            select,
            test_blanks_directly,
            rewritten,
        )
        .await;
    }

    #[tokio::test]
    async fn trim_equal_to_empty_text_gives_what_datafusion_gives() {
        same_as_datafusion(
            "SELECT trim(a) = '' AS b, '' = ltrim(a) AS l, rtrim(a) = '' AS r, \
             CASE WHEN trim(a) = '' THEN 'blank' END AS c FROM t",
            // The first and the last share one common expression.
            3,
        )
        .await;
    }

    #[tokio::test]
    async fn other_comparisons_and_trims_are_left_to_datafusion() {
        same_as_datafusion(
            "SELECT trim(a) = 'x' AS x, trim(a) <> '' AS n, btrim(a, 'x') = '' AS c, \
             upper(a) = '' AS u FROM t",
            0,
        )
        .await;
    }
}
