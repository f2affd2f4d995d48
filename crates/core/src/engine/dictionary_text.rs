//! `column = 'text'` (or `<>`) of dictionary-encoded text decided once per dictionary value
//! instead of once per row.
//!
//! The parsing SQL's rules compare each field's JSON type with a name (`t['event_id'] <>
//! 'string'`) on every row, and the type columns are dictionaries of a handful of names. Arrow's
//! comparison of a dictionary with a scalar still compares the text of every row; here the
//! comparison is made for each dictionary value and every row takes its value's answer by key.
//! NULL stays NULL, as the comparison gives it.

use std::any::Any;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, DictionaryArray};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{
    ArrowDictionaryKeyType, ArrowNativeType, DataType, Int16Type, Int32Type, Int64Type, Int8Type,
    Schema, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::expressions::{BinaryExpr, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

/// `plan` with every `=` or `<>` between dictionary-encoded `Utf8` text and a text literal in
/// its projections decided by [`DictionaryTextComparison`].
pub fn compare_dictionary_text_once(
    plan: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    super::projections::rewrite_projections(plan, |expr, schema| {
        expr.transform_up(|e| {
            let Some(binary) = e.as_any().downcast_ref::<BinaryExpr>() else {
                return Ok(Transformed::no(e));
            };
            if !matches!(binary.op(), Operator::Eq | Operator::NotEq) {
                return Ok(Transformed::no(e));
            }
            let (dictionary, literal, literal_left) = match (binary.left(), binary.right()) {
                (left, right) if literal_text(right).is_some() => (left, right, false),
                (left, right) if literal_text(left).is_some() => (right, left, true),
                _ => return Ok(Transformed::no(e)),
            };
            let DataType::Dictionary(_, values) = dictionary.data_type(schema)? else {
                return Ok(Transformed::no(e));
            };
            if *values != DataType::Utf8 {
                return Ok(Transformed::no(e));
            }
            let comparison = DictionaryTextComparison::new(
                dictionary.clone(),
                literal.clone(),
                literal_left,
                *binary.op(),
            );
            Ok(Transformed::yes(comparison as Arc<dyn PhysicalExpr>))
        })
    })
}

/// The text of a literal that is text, plain or as a dictionary's value.
fn literal_text(expr: &Arc<dyn PhysicalExpr>) -> Option<String> {
    fn text(value: &ScalarValue) -> Option<String> {
        match value {
            ScalarValue::Utf8(Some(text)) => Some(text.clone()),
            ScalarValue::Dictionary(_, value) => text(value),
            _ => None,
        }
    }
    text(expr.as_any().downcast_ref::<Literal>()?.value())
}

/// `=` or `<>` between a dictionary of `Utf8` text and a text literal.
#[derive(Debug, Eq)]
pub struct DictionaryTextComparison {
    dictionary: Arc<dyn PhysicalExpr>,
    literal: Arc<dyn PhysicalExpr>,
    /// Whether the literal is the comparison's left side.
    literal_left: bool,
    /// `Eq` or `NotEq`.
    op: Operator,
    /// The literal's text.
    text: String,
    /// The comparison as DataFusion plans it, for what is not a dictionary of text without
    /// NULL values (a scalar, say).
    planned: Arc<dyn PhysicalExpr>,
}

impl PartialEq for DictionaryTextComparison {
    fn eq(&self, other: &Self) -> bool {
        self.planned.eq(&other.planned)
    }
}

impl Hash for DictionaryTextComparison {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.planned.hash(state);
    }
}

impl fmt::Display for DictionaryTextComparison {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} (once per dictionary value)", self.planned)
    }
}

impl DictionaryTextComparison {
    /// `dictionary` compared by `op` (`Eq` or `NotEq`) with `literal`, a text literal, on the
    /// side `literal_left` says.
    fn new(
        dictionary: Arc<dyn PhysicalExpr>,
        literal: Arc<dyn PhysicalExpr>,
        literal_left: bool,
        op: Operator,
    ) -> Arc<Self> {
        let (left, right) = if literal_left {
            (literal.clone(), dictionary.clone())
        } else {
            (dictionary.clone(), literal.clone())
        };
        Arc::new(Self {
            text: literal_text(&literal).unwrap_or_default(),
            planned: Arc::new(BinaryExpr::new(left, op, right)),
            dictionary,
            literal,
            literal_left,
            op,
        })
    }

    /// The answer for each row of `array`, if it is a dictionary of text without NULL values.
    fn compare(&self, array: &ArrayRef) -> Option<BooleanArray> {
        let DataType::Dictionary(key, _) = array.data_type() else {
            return None;
        };
        match key.as_ref() {
            DataType::Int8 => self.compare_keys(array.as_dictionary::<Int8Type>()),
            DataType::Int16 => self.compare_keys(array.as_dictionary::<Int16Type>()),
            DataType::Int32 => self.compare_keys(array.as_dictionary::<Int32Type>()),
            DataType::Int64 => self.compare_keys(array.as_dictionary::<Int64Type>()),
            DataType::UInt8 => self.compare_keys(array.as_dictionary::<UInt8Type>()),
            DataType::UInt16 => self.compare_keys(array.as_dictionary::<UInt16Type>()),
            DataType::UInt32 => self.compare_keys(array.as_dictionary::<UInt32Type>()),
            DataType::UInt64 => self.compare_keys(array.as_dictionary::<UInt64Type>()),
            _ => None,
        }
    }

    fn compare_keys<K: ArrowDictionaryKeyType>(
        &self,
        dictionary: &DictionaryArray<K>,
    ) -> Option<BooleanArray> {
        let values = dictionary.values().as_string_opt::<i32>()?;
        if values.null_count() > 0 {
            return None;
        }
        let answers: Vec<bool> = (0..values.len())
            .map(|i| (values.value(i) == self.text) == (self.op == Operator::Eq))
            .collect();
        let keys = dictionary.keys();
        // A null row's key may be any number: its answer is masked by the nulls.
        let answer = BooleanBuffer::collect_bool(keys.len(), |row| {
            answers
                .get(keys.values()[row].as_usize())
                .copied()
                .unwrap_or(false)
        });
        Some(BooleanArray::new(answer, keys.nulls().cloned()))
    }
}

impl PhysicalExpr for DictionaryTextComparison {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.planned.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        if let ColumnarValue::Array(array) = self.dictionary.evaluate(batch)? {
            if let Some(answer) = self.compare(&array) {
                return Ok(ColumnarValue::Array(Arc::new(answer)));
            }
        }
        self.planned.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.dictionary]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Self::new(
            children[0].clone(),
            self.literal.clone(),
            self.literal_left,
            self.op,
        ))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.planned.fmt_sql(f)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int8Array, StringArray, StructArray, UInt16Array};
    use arrow::datatypes::{Field, Fields};
    use datafusion::datasource::MemTable;

    use super::*;

    /// A table `t` of `a`, a dictionary with `Int8` keys; `b`, one with `UInt16` keys and a
    /// NULL value; and `s`, a struct (sometimes NULL) holding `a`'s dictionary as `k`.
    fn table() -> MemTable {
        let names: ArrayRef = Arc::new(StringArray::from(vec!["string", "number", "object"]));
        let keys = Int8Array::from(vec![
            Some(0),
            Some(1),
            None,
            Some(2),
            Some(0),
            None,
            Some(1),
        ]);
        let a: ArrayRef =
            Arc::new(DictionaryArray::try_new(keys, names.clone()).expect("dictionary"));
        let with_null: ArrayRef = Arc::new(StringArray::from(vec![Some("string"), None]));
        let keys = UInt16Array::from(vec![
            Some(0),
            Some(1),
            None,
            Some(0),
            Some(1),
            Some(0),
            None,
        ]);
        let b: ArrayRef = Arc::new(DictionaryArray::try_new(keys, with_null).expect("dictionary"));
        let struct_fields = Fields::from(vec![Field::new("k", a.data_type().clone(), true)]);
        let struct_nulls =
            arrow::buffer::NullBuffer::from(vec![true, true, true, false, true, true, true]);
        let s: ArrayRef = Arc::new(
            StructArray::try_new(struct_fields.clone(), vec![a.clone()], Some(struct_nulls))
                .expect("struct"),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", a.data_type().clone(), true),
            Field::new("b", b.data_type().clone(), true),
            Field::new("s", DataType::Struct(struct_fields), true),
        ]));
        let batch = RecordBatch::try_new(schema.clone(), vec![a, b, s]).expect("batch");
        MemTable::try_new(schema, vec![vec![batch]]).expect("table")
    }

    /// The query, planned by DataFusion and rewritten, gives what DataFusion's own plan gives;
    /// the rewritten plan decides `rewritten` comparisons once per value.
    async fn same_as_datafusion(select: &str, rewritten: usize) {
        crate::engine::projections::assert_rewrite_same_as_datafusion::<DictionaryTextComparison>(
            table(),
            select,
            compare_dictionary_text_once,
            rewritten,
        )
        .await;
    }

    #[tokio::test]
    async fn equal_and_not_equal_to_text_give_what_datafusion_gives() {
        same_as_datafusion(
            "SELECT a = 'string' AS e, a <> 'string' AS n, 'number' = a AS l, \
             a <> 'absent' AS x, s['k'] <> 'string' AS f, b <> 'string' AS v, \
             CASE WHEN s['k'] <> 'object' THEN 'not an object' END AS c FROM t",
            // `b`'s too, though its NULL value leaves it to DataFusion's comparison when run.
            7,
        )
        .await;
    }

    #[tokio::test]
    async fn other_comparisons_are_left_to_datafusion() {
        same_as_datafusion(
            "SELECT a < 'string' AS o, a = a AS s, a IS DISTINCT FROM 'string' AS d FROM t",
            0,
        )
        .await;
    }

    #[test]
    fn a_dictionary_of_many_values_gives_arrows_answers() {
        let names: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
        let values: ArrayRef = Arc::new(StringArray::from(names));
        let keys = Int8Array::from(vec![Some(0), Some(5), Some(63), Some(64), Some(99), None]);
        let dictionary: ArrayRef =
            Arc::new(DictionaryArray::try_new(keys, values).expect("dictionary"));
        let texts = arrow::compute::cast(&dictionary, &DataType::Utf8).expect("decoded");
        let column = Arc::new(datafusion::physical_expr::expressions::Column::new("d", 0));
        for (op, text) in [
            (Operator::Eq, "v64"),
            (Operator::NotEq, "v64"),
            (Operator::Eq, "v5"),
        ] {
            let literal = Arc::new(Literal::new(ScalarValue::Utf8(Some(text.to_string()))));
            let comparison = DictionaryTextComparison::new(column.clone(), literal, false, op);
            let scalar = StringArray::new_scalar(text);
            let expected = match op {
                Operator::Eq => arrow::compute::kernels::cmp::eq(&texts, &scalar),
                _ => arrow::compute::kernels::cmp::neq(&texts, &scalar),
            }
            .expect("compares");
            assert_eq!(
                comparison.compare(&dictionary),
                Some(expected),
                "{op} {text}"
            );
        }
    }
}
