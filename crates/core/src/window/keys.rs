//! Which source partition each group key (the metrics SQL's GROUP BY without the window) comes
//! from. Window state lives per partition, which is exact only while every key lives in one
//! partition (the topic is keyed by campaign_id); a key seen in two partitions gets its windows
//! split into one row per partition, and the operator says so once per key.

use std::collections::{HashMap, HashSet};

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{OwnedRow, RowConverter, SortField};
use arrow::util::display::array_value_to_string;

/// The partition each group key was first seen in, per held partition.
pub struct KeyPartitions {
    converter: RowConverter,
    /// Indices of the group key columns in the state batches (the window column excluded).
    columns: Vec<usize>,
    owners: HashMap<OwnedRow, i32>,
    warned: HashSet<OwnedRow>,
}

impl KeyPartitions {
    /// Tracks the first `group_columns` columns of state batches of `schema`, but the window's.
    pub fn new(
        schema: &SchemaRef,
        group_columns: usize,
        window_column: usize,
    ) -> Result<Self, ArrowError> {
        let columns: Vec<usize> = (0..group_columns).filter(|c| *c != window_column).collect();
        let fields = columns
            .iter()
            .map(|c| SortField::new(schema.field(*c).data_type().clone()))
            .collect();
        Ok(Self {
            converter: RowConverter::new(fields)?,
            columns,
            owners: HashMap::new(),
            warned: HashSet::new(),
        })
    }

    /// Notes the keys of partial-state batches of `partition`; warns once per key that another
    /// partition holds too.
    pub fn note(&mut self, partition: i32, batches: &[RecordBatch]) -> Result<(), ArrowError> {
        if self.columns.is_empty() {
            return Ok(());
        }
        for batch in batches {
            let arrays: Vec<ArrayRef> = self
                .columns
                .iter()
                .map(|c| batch.column(*c).clone())
                .collect();
            let rows = self.converter.convert_columns(&arrays)?;
            for (index, row) in rows.iter().enumerate() {
                let row = row.owned();
                let owner = *self.owners.entry(row.clone()).or_insert(partition);
                if owner != partition && self.warned.insert(row) {
                    let key = arrays
                        .iter()
                        .map(|a| array_value_to_string(a, index).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(", ");
                    tracing::warn!(
                        key = %key,
                        partitions = ?[owner, partition],
                        "one group key arrives in two source partitions: its windows are \
                         kept per partition and written as one row per partition (the \
                         topic must be keyed by the group key, see the README)"
                    );
                }
            }
        }
        Ok(())
    }

    /// Forgets the keys of a partition this runner no longer holds.
    pub fn release(&mut self, partition: i32) {
        self.owners.retain(|_, owner| *owner != partition);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    #[test]
    fn remembers_which_partition_a_key_came_from() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("campaign_id", DataType::Utf8, true),
            Field::new("w", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let batch = |campaigns: Vec<&str>| {
            let n = campaigns.len();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(campaigns)),
                    Arc::new(TimestampMicrosecondArray::from(vec![0; n])),
                ],
            )
            .unwrap()
        };
        let mut keys = KeyPartitions::new(&schema, 2, 1).unwrap();
        keys.note(0, &[batch(vec!["a", "b"])]).unwrap();
        keys.note(1, &[batch(vec!["c"])]).unwrap();
        keys.note(1, &[batch(vec!["a"])]).unwrap();
        assert_eq!(keys.warned.len(), 1, "a is in partitions 0 and 1");
        keys.release(0);
        keys.note(1, &[batch(vec!["b"])]).unwrap();
        assert_eq!(keys.warned.len(), 1, "b moved with its partition");
    }
}
