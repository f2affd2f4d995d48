//! Grouping a batch's rows by the table's partition spec, with work per partition, not per row.
//!
//! iceberg's `RecordBatchPartitionSplitter` builds a `Struct` of `Literal`s for every row (two
//! string allocations per event here). Here each row's partition value is hashed a column at a
//! time and numbered by a small table of the values seen, and one row per number is converted
//! to a `Struct`.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use arrow::array::{make_comparator, DynComparator};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::SortOptions;
use arrow::error::ArrowError;
use datafusion::common::hash_utils::create_hashes;
use iceberg::arrow::{arrow_struct_to_literal, PartitionValueCalculator};
use iceberg::spec::{Literal, PartitionKey, PartitionSpecRef, SchemaRef, Struct, StructType};
use iceberg::{Error, ErrorKind, Result};

/// Groups the rows of a table's batches by partition value.
pub struct PartitionSplitter {
    spec: PartitionSpecRef,
    schema: SchemaRef,
    /// `None` for an unpartitioned table.
    calculator: Option<(PartitionValueCalculator, StructType)>,
}

/// A batch's rows in partition order.
#[derive(Debug, PartialEq)]
pub struct PartitionGroups {
    /// Row numbers of the batch, each partition's together, in arrival order within it;
    /// `None` when the batch's own order is that already (it holds one partition at most).
    pub rows: Option<UInt32Array>,
    /// The partitions in the order `rows` lists them.
    pub parts: Vec<PartitionPart>,
}

/// One partition's share of [`PartitionGroups::rows`].
#[derive(Debug, PartialEq)]
pub struct PartitionPart {
    /// The partition value.
    pub value: Struct,
    /// How many rows, following the previous part's.
    pub rows: usize,
}

impl PartitionSplitter {
    /// A splitter for `spec` over `schema`.
    pub fn new(schema: SchemaRef, spec: PartitionSpecRef) -> Result<Self> {
        let calculator = if spec.is_unpartitioned() {
            None
        } else {
            Some((
                PartitionValueCalculator::try_new(&spec, &schema)?,
                spec.partition_type(&schema)?,
            ))
        };
        Ok(Self {
            spec,
            schema,
            calculator,
        })
    }

    /// The partition key of rows whose partition value is `value`.
    pub fn key(&self, value: Struct) -> PartitionKey {
        PartitionKey::new((*self.spec).clone(), self.schema.clone(), value)
    }

    /// The batch's rows grouped by partition value, partitions in order of first appearance.
    pub fn groups(&self, batch: &RecordBatch) -> Result<PartitionGroups> {
        let Some((calculator, partition_type)) = &self.calculator else {
            return Ok(PartitionGroups {
                rows: None,
                parts: vec![PartitionPart {
                    value: Struct::empty(),
                    rows: batch.num_rows(),
                }],
            });
        };
        let value_array = calculator.calculate(batch)?;
        let values = value_array.as_struct();
        let Numbering {
            group_of,
            first_rows,
        } = Numbering::of(values.columns()).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "splitting by partition").with_source(e)
        })?;
        let groups = first_rows.len();
        let mut sizes = vec![0usize; groups];
        for &group in &group_of {
            sizes[group as usize] += 1;
        }
        let mut parts = Vec::with_capacity(groups);
        for (&first, &rows) in first_rows.iter().zip(&sizes) {
            let literal = arrow_struct_to_literal(&value_array.slice(first, 1), partition_type)?;
            let Some(Some(Literal::Struct(value))) = literal.into_iter().next() else {
                return Err(Error::new(
                    ErrorKind::DataInvalid,
                    "partition value is not a struct",
                ));
            };
            parts.push(PartitionPart { value, rows });
        }
        if groups <= 1 {
            return Ok(PartitionGroups { rows: None, parts });
        }
        // A counting sort: each group's rows start where the groups before it end.
        let mut next: Vec<usize> = sizes
            .iter()
            .scan(0, |start, &size| {
                let at = *start;
                *start += size;
                Some(at)
            })
            .collect();
        let mut rows = vec![0u32; group_of.len()];
        for (row, &group) in group_of.iter().enumerate() {
            let at = &mut next[group as usize];
            rows[*at] = row as u32;
            *at += 1;
        }
        Ok(PartitionGroups {
            rows: Some(UInt32Array::from(rows)),
            parts,
        })
    }
}

/// Each row's partition value as a number: equal values get one, numbered as they first appear.
struct Numbering {
    /// Each row's number.
    group_of: Vec<u32>,
    /// The first row of each number.
    first_rows: Vec<usize>,
}

/// No number: the end of a chain of values that share a hash.
const NO_GROUP: u32 = u32::MAX;

impl Numbering {
    /// Numbers the rows of `columns` (the partition values, one column per field). Rows are
    /// hashed a column at a time; a hash leads to the first value seen with it, and values that
    /// share a hash are chained, each compared field by field with the row.
    fn of(columns: &[ArrayRef]) -> std::result::Result<Self, NumberingError> {
        let rows = columns.first().map_or(0, |c| c.len());
        let mut hashes = vec![0u64; rows];
        if !columns.is_empty() {
            create_hashes(columns, &HASH_STATE, &mut hashes)?;
        }
        Self::with_hashes(columns, &hashes)
    }

    /// [`Numbering::of`] with each row's hash given.
    fn with_hashes(
        columns: &[ArrayRef],
        hashes: &[u64],
    ) -> std::result::Result<Self, NumberingError> {
        let rows = hashes.len();
        let comparators = columns
            .iter()
            .map(|c| make_comparator(c.as_ref(), c.as_ref(), SortOptions::default()))
            .collect::<std::result::Result<Vec<DynComparator>, ArrowError>>()?;
        let same = |a: usize, b: usize| comparators.iter().all(|compare| compare(a, b).is_eq());
        let mut first_of_hash: HashMap<u64, u32, foldhash::fast::FixedState> = HashMap::default();
        let mut next_of_hash: Vec<u32> = Vec::new();
        let mut first_rows: Vec<usize> = Vec::new();
        let mut group_of: Vec<u32> = Vec::with_capacity(rows);
        for (row, &hash) in hashes.iter().enumerate() {
            // Rows of one partition often come together: the previous row's number, when equal.
            if let Some(&previous) = group_of.last() {
                if hashes[row - 1] == hash && same(row, row - 1) {
                    group_of.push(previous);
                    continue;
                }
            }
            let new_group = first_rows.len() as u32;
            let group = match first_of_hash.entry(hash) {
                Entry::Vacant(entry) => {
                    entry.insert(new_group);
                    new_group
                }
                Entry::Occupied(entry) => {
                    let mut group = *entry.get();
                    loop {
                        if same(row, first_rows[group as usize]) {
                            break group;
                        }
                        let next = next_of_hash[group as usize];
                        if next == NO_GROUP {
                            next_of_hash[group as usize] = new_group;
                            break new_group;
                        }
                        group = next;
                    }
                }
            };
            if group == new_group {
                first_rows.push(row);
                next_of_hash.push(NO_GROUP);
            }
            group_of.push(group);
        }
        Ok(Self {
            group_of,
            first_rows,
        })
    }
}

/// The seeds of the partition values' hashes: any fixed ones do, the numbers live one batch.
static HASH_STATE: ahash::RandomState = ahash::RandomState::with_seeds(
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
);

/// Why partition values could not be numbered.
#[derive(Debug, thiserror::Error)]
enum NumberingError {
    #[error("hashing the partition values")]
    Hash(#[from] datafusion::error::DataFusionError),
    #[error("comparing the partition values")]
    Compare(#[from] ArrowError),
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::collections::HashMap;

    use arrow::array::{ArrayRef, Int32Array, StringArray, TimestampMicrosecondArray};
    use arrow::compute::take_record_batch;
    use iceberg::arrow::{schema_to_arrow_schema, RecordBatchPartitionSplitter};
    use iceberg::spec::{
        NestedField, PartitionSpec, PrimitiveType, Schema as IcebergSchema, Transform, Type,
    };

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(
            IcebergSchema::builder()
                .with_fields(vec![
                    NestedField::required(1, "id", Type::Primitive(PrimitiveType::Int)).into(),
                    NestedField::optional(2, "campaign", Type::Primitive(PrimitiveType::String))
                        .into(),
                    NestedField::required(3, "kind", Type::Primitive(PrimitiveType::String)).into(),
                    NestedField::optional(4, "at", Type::Primitive(PrimitiveType::Timestamptz))
                        .into(),
                ])
                .build()
                .expect("schema"),
        )
    }

    /// Rows whose partition values repeat out of order, with nulls among them.
    fn batch(schema: &SchemaRef, rows: usize) -> RecordBatch {
        let arrow_schema = Arc::new(schema_to_arrow_schema(schema).expect("arrow schema"));
        let id = Int32Array::from_iter_values((0..rows as i32).map(|i| i * 7));
        let campaign: StringArray = (0..rows)
            .map(|i| (i % 5 != 3).then(|| format!("campaign-{}", (i * 3) % 4)))
            .collect();
        let kind: StringArray = (0..rows)
            .map(|i| Some(["click", "impression", "conversion"][(i * i + i / 2) % 3]))
            .collect();
        let at: TimestampMicrosecondArray = (0..rows)
            .map(|i| (i % 7 != 0).then_some(i as i64 * 9_000_000_000))
            .collect::<TimestampMicrosecondArray>()
            .with_timezone("+00:00");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id),
            Arc::new(campaign),
            Arc::new(kind),
            Arc::new(at),
        ];
        RecordBatch::try_new(arrow_schema, columns).expect("batch")
    }

    fn spec(schema: &SchemaRef, fields: &[(&str, Transform)]) -> PartitionSpecRef {
        let mut builder = PartitionSpec::builder(schema.clone());
        for (column, transform) in fields {
            builder = builder
                .add_partition_field(*column, format!("{column}_part"), *transform)
                .expect("partition field");
        }
        Arc::new(builder.build().expect("spec"))
    }

    /// The rows of each partition as iceberg's own splitter gives them, and as `groups` does.
    fn both_ways(spec: PartitionSpecRef, batch: &RecordBatch) -> [HashMap<Struct, RecordBatch>; 2] {
        let schema = schema();
        let reference = RecordBatchPartitionSplitter::try_new_with_computed_values(
            schema.clone(),
            spec.clone(),
        )
        .expect("reference splitter")
        .split(batch)
        .expect("reference split")
        .into_iter()
        .map(|(key, rows)| (key.data().clone(), rows))
        .collect();
        let groups = PartitionSplitter::new(schema, spec)
            .expect("splitter")
            .groups(batch)
            .expect("groups");
        let taken = match &groups.rows {
            Some(rows) => take_record_batch(batch, rows).expect("take"),
            None => batch.clone(),
        };
        let mut start = 0;
        let mut ours = HashMap::new();
        for PartitionPart { value, rows } in groups.parts {
            assert!(rows > 0, "an empty part for {value:?}");
            let previous = ours.insert(value, taken.slice(start, rows));
            assert!(previous.is_none(), "a partition value listed twice");
            start += rows;
        }
        assert_eq!(start, batch.num_rows());
        [reference, ours]
    }

    #[test]
    fn groups_rows_as_icebergs_splitter_does_under_every_transform() {
        let schema = schema();
        let batch = batch(&schema, 1000);
        for fields in [
            vec![
                ("campaign", Transform::Identity),
                ("kind", Transform::Identity),
            ],
            vec![("id", Transform::Bucket(4)), ("at", Transform::Day)],
            vec![("kind", Transform::Truncate(3)), ("at", Transform::Hour)],
            vec![("campaign", Transform::Identity)],
        ] {
            let [reference, ours] = both_ways(spec(&schema, &fields), &batch);
            assert!(reference.len() > 1, "{fields:?} splits into one partition");
            assert_eq!(ours, reference, "{fields:?}");
        }
    }

    #[test]
    fn keeps_arrival_order_within_a_partition_and_lists_partitions_as_they_first_appear() {
        let schema = schema();
        let batch = batch(&schema, 200);
        let splitter = PartitionSplitter::new(
            schema.clone(),
            spec(&schema, &[("kind", Transform::Identity)]),
        )
        .expect("splitter");
        let groups = splitter.groups(&batch).expect("groups");
        let kinds: Vec<&Literal> = groups
            .parts
            .iter()
            .map(|part| part.value.fields()[0].as_ref().expect("kind"))
            .collect();
        assert_eq!(
            kinds,
            ["click", "impression", "conversion"]
                .map(Literal::string)
                .iter()
                .collect::<Vec<_>>()
        );
        let order = groups
            .rows
            .as_ref()
            .expect("three partitions: rows reordered");
        let mut start = 0;
        for part in &groups.parts {
            let rows = &order.values()[start..start + part.rows];
            assert!(rows.windows(2).all(|w| w[0] < w[1]), "{rows:?}");
            start += part.rows;
        }
    }

    #[test]
    fn one_partition_keeps_the_batch_as_it_is() {
        let schema = schema();
        let batch = batch(&schema, 50);
        let unpartitioned = Arc::new(PartitionSpec::unpartition_spec());
        for splitter in [
            PartitionSplitter::new(schema.clone(), unpartitioned).expect("splitter"),
            PartitionSplitter::new(schema.clone(), spec(&schema, &[("id", Transform::Void)]))
                .expect("splitter"),
        ] {
            let groups = splitter.groups(&batch).expect("groups");
            assert_eq!(groups.parts.len(), 1);
            assert_eq!(groups.parts[0].rows, 50);
            assert_eq!(groups.rows, None, "the batch's own order is kept");
        }
        let empty = splitter_of(&schema)
            .groups(&batch.slice(0, 0))
            .expect("groups");
        assert!(empty.parts.is_empty() && empty.rows.is_none());
    }

    #[test]
    fn values_whose_hashes_collide_still_get_numbers_of_their_own() {
        let schema = schema();
        let batch = batch(&schema, 300);
        let columns = [batch.column(1).clone(), batch.column(2).clone()];
        let hashed = Numbering::of(&columns).expect("numbering");
        assert!(hashed.first_rows.len() > 4, "several partition values");
        // Every row on one hash: each value is told apart by comparing it alone.
        let collided = Numbering::with_hashes(&columns, &[7; 300]).expect("numbering");
        assert_eq!(collided.group_of, hashed.group_of);
        assert_eq!(collided.first_rows, hashed.first_rows);
    }

    fn splitter_of(schema: &SchemaRef) -> PartitionSplitter {
        PartitionSplitter::new(
            schema.clone(),
            spec(schema, &[("kind", Transform::Identity)]),
        )
        .expect("splitter")
    }
}
