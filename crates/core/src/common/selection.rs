//! Some rows of a batch, chosen but not copied out.
//!
//! The parsing SQL's valid rows go to the events table and to the window. Filtering them out
//! of its output copied every column of every valid row once before the events table's buffer
//! copied them again into partition order; with a selection, that buffer's one copy takes the
//! chosen rows straight from the output, and the window copies only the columns it reads.

use std::sync::Arc;

use arrow::array::{make_array, Array, ArrayRef, AsArray, BooleanArray, GenericByteArray};
use arrow::compute::{and, filter_record_batch};
use arrow::datatypes::{ByteArrayType, DataType};
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

/// The rows of `batch` that `keep` marks (every row when it is `None`), in the batch's order.
#[derive(Debug, Clone)]
pub struct Selection {
    batch: RecordBatch,
    /// One bit per row of `batch`, no nulls; `None` when every row is chosen.
    keep: Option<BooleanArray>,
}

impl Selection {
    /// Every row of `batch`.
    pub fn all(batch: RecordBatch) -> Self {
        Self { batch, keep: None }
    }

    /// The rows of `batch` where `keep` is true (a null counts as false).
    pub fn of(batch: RecordBatch, keep: BooleanArray) -> Result<Self, ArrowError> {
        if keep.len() != batch.num_rows() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "a selection of {} rows over a batch of {}",
                keep.len(),
                batch.num_rows()
            )));
        }
        let keep = match keep.nulls() {
            Some(nulls) if nulls.null_count() > 0 => {
                BooleanArray::new(keep.values() & nulls.inner(), None)
            }
            _ => BooleanArray::new(keep.values().clone(), None),
        };
        let keep = (keep.true_count() < batch.num_rows()).then_some(keep);
        Ok(Self { batch, keep })
    }

    /// The whole batch the rows are chosen from.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// Which rows of [`Self::batch`] are chosen (no nulls); `None` when all are.
    pub fn keep(&self) -> Option<&BooleanArray> {
        self.keep.as_ref()
    }

    /// How many rows are chosen.
    pub fn num_rows(&self) -> usize {
        self.keep
            .as_ref()
            .map_or(self.batch.num_rows(), BooleanArray::true_count)
    }

    /// The chosen rows that `also` marks too (`also` has a bit per row of [`Self::batch`]).
    pub fn and(&self, also: &BooleanArray) -> Result<Self, ArrowError> {
        let both = match &self.keep {
            Some(keep) => and(keep, also)?,
            None => also.clone(),
        };
        Self::of(self.batch.clone(), both)
    }

    /// The same rows of only the named columns, in that order (no copy).
    pub fn columns(&self, names: &[&str]) -> Result<Self, ArrowError> {
        let schema = self.batch.schema();
        let indices = names
            .iter()
            .map(|name| schema.index_of(name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            batch: self.batch.project(&indices)?,
            keep: self.keep.clone(),
        })
    }

    /// The same choice with the null bits dropped from every column that has no null among
    /// the chosen rows. Rows left out (the ones the parsing SQL rejected) are where most nulls
    /// of the events' columns are; without their bits, copying the chosen rows takes arrow's
    /// path for columns without nulls and hashing partition values skips the null tests.
    pub fn without_unchosen_nulls(&self) -> Result<Self, ArrowError> {
        let Some(keep) = &self.keep else {
            return Ok(self.clone());
        };
        let columns = self
            .batch
            .columns()
            .iter()
            .map(|column| without_unchosen_nulls(column, keep))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = RecordBatchOptions::new().with_row_count(Some(self.batch.num_rows()));
        Ok(Self {
            batch: RecordBatch::try_new_with_options(self.batch.schema(), columns, &rows)?,
            keep: self.keep.clone(),
        })
    }

    /// The chosen rows, copied out into a batch of their own (none copied when all are chosen).
    pub fn to_batch(&self) -> Result<RecordBatch, ArrowError> {
        match &self.keep {
            None => Ok(self.batch.clone()),
            Some(keep) if self.batch.num_columns() == 0 => {
                let rows = RecordBatchOptions::new().with_row_count(Some(keep.true_count()));
                RecordBatch::try_new_with_options(self.batch.schema(), vec![], &rows)
            }
            Some(keep) => filter_record_batch(&self.batch, keep),
        }
    }
}

/// `column` without null bits when `keep` chooses none of its null rows and its type has a
/// value of its own under every null; otherwise `column` as it is.
fn without_unchosen_nulls(column: &ArrayRef, keep: &BooleanArray) -> Result<ArrayRef, ArrowError> {
    let Some(nulls) = column.nulls().filter(|nulls| nulls.null_count() > 0) else {
        return Ok(column.clone());
    };
    if (keep.values() & &!nulls.inner()).count_set_bits() > 0 {
        return Ok(column.clone());
    }
    let data_type = column.data_type();
    if data_type.is_primitive() || *data_type == DataType::Boolean {
        // Any bits are a value of these types: the array is valid without its null bits (and
        // checking that costs nothing per row).
        return Ok(make_array(
            column.to_data().into_builder().nulls(None).build()?,
        ));
    }
    match data_type {
        DataType::Utf8 => Ok(Arc::new(without_nulls(column.as_string::<i32>()))),
        DataType::LargeUtf8 => Ok(Arc::new(without_nulls(column.as_string::<i64>()))),
        DataType::Binary => Ok(Arc::new(without_nulls(column.as_binary::<i32>()))),
        DataType::LargeBinary => Ok(Arc::new(without_nulls(column.as_binary::<i64>()))),
        _ => Ok(column.clone()),
    }
}

/// A byte array's values with no null bits.
fn without_nulls<T: ByteArrayType>(array: &GenericByteArray<T>) -> GenericByteArray<T> {
    let (offsets, values, _) = array.clone().into_parts();
    // SAFETY: arrow checks every slot of a byte array, null or not, when it builds one (its
    // offsets within the values, and for text, UTF-8 on character boundaries: `try_new` and
    // `ArrayData`'s full validation ignore the null bits), and its unchecked constructors
    // require what those checks check. So every slot under a null bit already holds a valid
    // value, and the same offsets and values make a valid array without the bits.
    unsafe { GenericByteArray::new_unchecked(offsets, values, None) }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Int64Type;

    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as _),
            (
                "s",
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])) as _,
            ),
        ])
        .unwrap()
    }

    fn numbers(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn chooses_rows_in_order_and_counts_nulls_as_not_chosen() {
        let keep = BooleanArray::from(vec![Some(true), None, Some(false), Some(true)]);
        let chosen = Selection::of(batch(), keep).unwrap();
        assert_eq!(chosen.num_rows(), 2);
        assert_eq!(numbers(&chosen.to_batch().unwrap()), [1, 4]);
        assert_eq!(chosen.keep().unwrap().null_count(), 0);
        assert_eq!(chosen.batch().num_rows(), 4, "the batch stays whole");

        let fewer = chosen
            .and(&BooleanArray::from(vec![false, true, true, true]))
            .unwrap();
        assert_eq!(numbers(&fewer.to_batch().unwrap()), [4]);
    }

    #[test]
    fn every_row_chosen_is_no_mask_and_no_copy() {
        let whole = batch();
        let all = Selection::of(whole.clone(), BooleanArray::from(vec![true; 4])).unwrap();
        assert!(all.keep().is_none());
        assert_eq!(all.num_rows(), 4);
        let rows = all.to_batch().unwrap();
        assert!(rows.column(1).to_data().ptr_eq(&whole.column(1).to_data()));
        let none = Selection::all(batch())
            .and(&BooleanArray::from(vec![false; 4]))
            .unwrap();
        assert_eq!(none.num_rows(), 0);
        assert_eq!(none.to_batch().unwrap().num_rows(), 0);
    }

    #[test]
    fn null_bits_go_only_where_no_chosen_row_is_null() {
        let batch = RecordBatch::try_from_iter([
            (
                "n",
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3), None])) as _,
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some("c"),
                    Some("d"),
                ])) as _,
            ),
            (
                "b",
                Arc::new(BooleanArray::from(vec![
                    None,
                    Some(true),
                    Some(true),
                    Some(false),
                ])) as _,
            ),
        ])
        .unwrap();
        let keep = BooleanArray::from(vec![false, false, true, true]);
        let chosen = Selection::of(batch.clone(), keep).unwrap();
        let stripped = chosen.without_unchosen_nulls().unwrap();
        let nulls: Vec<usize> = stripped
            .batch()
            .columns()
            .iter()
            .map(|column| column.null_count())
            .collect();
        assert_eq!(
            nulls,
            [2, 0, 0],
            "n holds a null in a chosen row (3), so keeps its bits"
        );
        assert_eq!(
            stripped.to_batch().unwrap(),
            chosen.to_batch().unwrap(),
            "the chosen rows are the same"
        );
        let texts = stripped.batch().column(1).as_string::<i32>();
        assert_eq!(
            texts.value(1),
            "",
            "the slot under the dropped bit is a value of its own"
        );
        let all = Selection::all(batch.clone())
            .without_unchosen_nulls()
            .unwrap();
        assert_eq!(
            all.batch(),
            &batch,
            "with every row chosen, nothing changes"
        );
    }

    #[test]
    fn a_mask_of_another_length_is_refused() {
        let err = Selection::of(batch(), BooleanArray::from(vec![true])).unwrap_err();
        assert!(
            err.to_string().contains("1 rows over a batch of 4"),
            "{err}"
        );
    }

    #[test]
    fn columns_keep_the_choice() {
        let keep = BooleanArray::from(vec![false, true, false, true]);
        let chosen = Selection::of(batch(), keep)
            .unwrap()
            .columns(&["s"])
            .unwrap();
        let rows = chosen.to_batch().unwrap();
        assert_eq!(rows.num_columns(), 1);
        let texts: Vec<&str> = rows.column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(texts, ["b", "d"]);
        let empty = Selection::of(batch(), BooleanArray::from(vec![true, false, true, true]))
            .unwrap()
            .columns(&[])
            .unwrap();
        assert_eq!(empty.to_batch().unwrap().num_rows(), 3);
        assert!(Selection::all(batch()).columns(&["missing"]).is_err());
    }
}
