//! A long `CASE WHEN ... THEN ... END` chain evaluated in one pass over the batch.
//!
//! DataFusion evaluates a `CASE` branch by branch on the rows still unmatched: after every
//! branch that matches some rows it copies every column the `CASE` reads for the rows left, and
//! the parsing SQL's validation rules are twenty such branches over batches where a few rows in
//! a hundred match one. When no rule can fail ([`super::case_chain`] decides), every rule can
//! run on every row instead: each row takes the first rule it matches, and only the results
//! that are not constants are computed, each on the rows that take its branch alone.

use std::any::Any;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::compute::{filter_record_batch, interleave};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::{exec_err, internal_err};
use datafusion::error::Result;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::utils::scatter;

/// `CASE WHEN w1 THEN t1 ... WHEN wn THEN tn END` (no ELSE) whose conditions can run on every
/// row: the same values as the `CASE`, from one pass of each condition over the whole batch.
#[derive(Debug, Eq)]
pub struct FirstMatch {
    /// The branches, in the order the first match is taken.
    branches: Vec<Branch>,
    /// The type of every result, and of the `CASE`.
    data_type: DataType,
}

/// One `WHEN ... THEN ...` of a [`FirstMatch`].
#[derive(Debug, Clone, Eq)]
struct Branch {
    when: Arc<dyn PhysicalExpr>,
    then: Arc<dyn PhysicalExpr>,
}

impl PartialEq for Branch {
    fn eq(&self, other: &Self) -> bool {
        self.when.eq(&other.when) && self.then.eq(&other.then)
    }
}

impl Hash for Branch {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.when.hash(state);
        self.then.hash(state);
    }
}

/// Where a row's value comes from: one of the branches' result arrays, and its row there.
#[derive(Debug, Clone, Copy)]
struct Pick {
    row: usize,
    array: usize,
    value: usize,
}

impl FirstMatch {
    /// The chain of `(when, then)` branches, each result of `data_type`.
    pub fn new(
        branches: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
        data_type: DataType,
    ) -> Self {
        Self {
            branches: branches
                .into_iter()
                .map(|(when, then)| Branch { when, then })
                .collect(),
            data_type,
        }
    }

    /// The branches' conditions and results, as pairs.
    pub fn branches(
        &self,
    ) -> impl Iterator<Item = (&Arc<dyn PhysicalExpr>, &Arc<dyn PhysicalExpr>)> {
        self.branches.iter().map(|b| (&b.when, &b.then))
    }

    /// The rows of `batch` that `when` holds for (a NULL condition does not match).
    fn matches(when: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanBuffer> {
        let rows = batch.num_rows();
        let value = when.evaluate(batch)?.into_array(rows)?;
        let Some(value) = value.as_boolean_opt() else {
            return exec_err!("a CASE condition gave {}, not a boolean", value.data_type());
        };
        Ok(match value.nulls() {
            Some(nulls) => value.values() & nulls.inner(),
            None => value.values().clone(),
        })
    }
}

impl PartialEq for FirstMatch {
    fn eq(&self, other: &Self) -> bool {
        self.branches == other.branches && self.data_type == other.data_type
    }
}

impl Hash for FirstMatch {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.branches.hash(state);
        self.data_type.hash(state);
    }
}

impl fmt::Display for FirstMatch {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CASE (first match)")?;
        for Branch { when, then } in &self.branches {
            write!(f, " WHEN {when} THEN {then}")?;
        }
        write!(f, " END")
    }
}

impl PhysicalExpr for FirstMatch {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(self.data_type.clone())
    }

    fn nullable(&self, _input_schema: &Schema) -> Result<bool> {
        // A row no branch matches is NULL.
        Ok(true)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let rows = batch.num_rows();
        let mut unmatched = BooleanBuffer::new_set(rows);
        // The first array is the NULL of rows no branch matches; each branch that matches
        // adds its results.
        let mut arrays: Vec<ArrayRef> = Vec::new();
        let mut picks: Vec<Pick> = Vec::new();
        for Branch { when, then } in &self.branches {
            if unmatched.count_set_bits() == 0 {
                break;
            }
            let taken = &Self::matches(when, batch)? & &unmatched;
            if taken.count_set_bits() == 0 {
                continue;
            }
            unmatched = &unmatched & &!&taken;
            let array = arrays.len();
            if let Some(literal) = then.as_any().downcast_ref::<Literal>() {
                arrays.push(literal.value().to_array_of_size(1)?);
                picks.extend(taken.set_indices().map(|row| Pick {
                    row,
                    array,
                    value: 0,
                }));
            } else {
                // Only the rows that take this branch: a result may fail on any other row.
                let selected = filter_record_batch(batch, &BooleanArray::new(taken.clone(), None))?;
                let values = then.evaluate(&selected)?.into_array(selected.num_rows())?;
                arrays.push(values);
                picks.extend(taken.set_indices().enumerate().map(|(value, row)| Pick {
                    row,
                    array,
                    value,
                }));
            }
        }
        if picks.is_empty() {
            return Ok(ColumnarValue::Array(new_null_array(&self.data_type, rows)));
        }
        if let Some(other) = arrays.iter().find(|a| a.data_type() != &self.data_type) {
            return internal_err!(
                "a CASE branch gave {}, the CASE is {}",
                other.data_type(),
                self.data_type
            );
        }
        picks.sort_unstable_by_key(|p| p.row);
        let sources: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
        let indices: Vec<(usize, usize)> = picks.iter().map(|p| (p.array, p.value)).collect();
        let matched = interleave(&sources, &indices)?;
        let mask = BooleanArray::new(!&unmatched, None);
        Ok(ColumnarValue::Array(scatter(&mask, matched.as_ref())?))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.branches
            .iter()
            .flat_map(|b| [&b.when, &b.then])
            .collect()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        if children.len() != 2 * self.branches.len() {
            return internal_err!(
                "FirstMatch: {} children for {} branches",
                children.len(),
                self.branches.len()
            );
        }
        let branches = children
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect();
        Ok(Arc::new(FirstMatch::new(branches, self.data_type.clone())))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CASE")?;
        for Branch { when, then } in &self.branches {
            write!(f, " WHEN ")?;
            when.fmt_sql(f)?;
            write!(f, " THEN ")?;
            then.fmt_sql(f)?;
        }
        write!(f, " END")
    }
}
