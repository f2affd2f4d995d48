//! Grouping a batch's rows by the table's partition spec, with work per partition, not per row.
//!
//! iceberg's `RecordBatchPartitionSplitter` builds a `Struct` of `Literal`s for every row (two
//! string allocations per event here). Here DataFusion's group-by hash table (the one its
//! aggregations use, hashing a column at a time) numbers each row's partition value, and one
//! row per group is converted to a `Struct`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StructArray, UInt32Array};
use arrow::datatypes::{DataType, Fields, Schema};
use datafusion::physical_plan::aggregates::group_values::new_group_values;
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use iceberg::arrow::{arrow_struct_to_literal, PartitionValueCalculator};
use iceberg::spec::{Literal, PartitionKey, PartitionSpecRef, SchemaRef, Struct, StructType};
use iceberg::transform::{create_transform_function, BoxedTransformFunction};
use iceberg::{Error, ErrorKind, Result};

/// Groups the rows of a table's batches by partition value.
pub struct PartitionSplitter {
    spec: PartitionSpecRef,
    schema: SchemaRef,
    /// `None` for an unpartitioned table.
    calculator: Option<(PartitionValueCalculator, StructType)>,
    /// When every partition field's source is a top-level column: where each is in the table's
    /// batches, its transform and the Arrow fields of the values.
    top_level: Option<TopLevelSources>,
}

/// Partition values computed from top-level columns alone. iceberg's calculator rebuilds each
/// source column through `ArrayData::build`, which checks every string's UTF-8 again.
struct TopLevelSources {
    /// Each partition field's source column.
    columns: Vec<SourceColumn>,
    transforms: Vec<BoxedTransformFunction>,
    fields: Fields,
}

/// A partition source column: its position in the table's schema (and so in its batches) and
/// its name there.
struct SourceColumn {
    at: usize,
    name: String,
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
        let top_level = match &calculator {
            Some((calculator, _)) => TopLevelSources::of(&spec, &schema, calculator)?,
            None => None,
        };
        Ok(Self {
            spec,
            schema,
            calculator,
            top_level,
        })
    }

    /// The partition key of rows whose partition value is `value`.
    pub fn key(&self, value: Struct) -> PartitionKey {
        PartitionKey::new((*self.spec).clone(), self.schema.clone(), value)
    }

    /// The batch's rows that `keep` marks (no nulls; every row when `None`) grouped by
    /// partition value, partitions in order of first appearance; a partition none of whose
    /// rows is kept is left out.
    pub fn groups(
        &self,
        batch: &RecordBatch,
        keep: Option<&BooleanArray>,
    ) -> Result<PartitionGroups> {
        if keep.is_some_and(|keep| keep.len() != batch.num_rows()) {
            return Err(Error::new(
                ErrorKind::Unexpected,
                "the rows to keep do not match the batch's",
            ));
        }
        let Some((calculator, partition_type)) = &self.calculator else {
            return Ok(match keep {
                None => PartitionGroups {
                    rows: None,
                    parts: vec![PartitionPart {
                        value: Struct::empty(),
                        rows: batch.num_rows(),
                    }],
                },
                Some(keep) => {
                    let rows: UInt32Array = kept_rows(keep).collect();
                    PartitionGroups {
                        parts: vec![PartitionPart {
                            value: Struct::empty(),
                            rows: rows.len(),
                        }],
                        rows: Some(rows),
                    }
                }
            });
        };
        let value_array = match &self.top_level {
            Some(sources) if sources.fit(batch) => sources.values(batch)?,
            _ => calculator.calculate(batch)?,
        };
        let values = value_array.as_struct();
        let grouping_err = |e: datafusion::error::DataFusionError| {
            Error::new(ErrorKind::Unexpected, "splitting by partition").with_source(e)
        };
        let mut numbering = new_group_values(
            Arc::new(Schema::new(values.fields().clone())),
            &GroupOrdering::None,
        )
        .map_err(grouping_err)?;
        let mut group_of = Vec::with_capacity(values.len());
        numbering
            .intern(values.columns(), &mut group_of)
            .map_err(grouping_err)?;
        // Rows not kept leave the numbering: a group of only those has no rows and no part.
        if let Some(keep) = keep {
            for (group, kept) in group_of.iter_mut().zip(keep.values()) {
                if !kept {
                    *group = usize::MAX;
                }
            }
        }
        let groups = numbering.len();
        let mut sizes = vec![0usize; groups];
        let mut first_row = vec![0usize; groups];
        for (row, &group) in group_of.iter().enumerate().rev() {
            if let Some(size) = sizes.get_mut(group) {
                *size += 1;
                first_row[group] = row;
            }
        }
        // Empty groups go from the numbering too, so that parts and row order agree.
        let mut renumbered = vec![usize::MAX; groups];
        let mut parts = Vec::with_capacity(groups);
        for (group, (&first, &rows)) in first_row.iter().zip(&sizes).enumerate() {
            if rows == 0 {
                continue;
            }
            renumbered[group] = parts.len();
            let literal = arrow_struct_to_literal(&value_array.slice(first, 1), partition_type)?;
            let Some(Some(Literal::Struct(value))) = literal.into_iter().next() else {
                return Err(Error::new(
                    ErrorKind::DataInvalid,
                    "partition value is not a struct",
                ));
            };
            parts.push(PartitionPart { value, rows });
        }
        match (parts.len(), keep) {
            (0 | 1, None) => return Ok(PartitionGroups { rows: None, parts }),
            (0 | 1, Some(keep)) => {
                return Ok(PartitionGroups {
                    rows: Some(kept_rows(keep).collect()),
                    parts,
                })
            }
            _ => {}
        }
        // A counting sort: each group's rows start where the groups before it end.
        let mut next: Vec<usize> = parts
            .iter()
            .scan(0, |start, part| {
                let at = *start;
                *start += part.rows;
                Some(at)
            })
            .collect();
        let mut rows = vec![0u32; parts.iter().map(|part| part.rows).sum()];
        for (row, &group) in group_of.iter().enumerate() {
            if let Some(&part) = renumbered.get(group) {
                rows[next[part]] = row as u32;
                next[part] += 1;
            }
        }
        Ok(PartitionGroups {
            rows: Some(UInt32Array::from(rows)),
            parts,
        })
    }
}

/// The numbers of the rows `keep` marks, in order.
fn kept_rows(keep: &BooleanArray) -> impl Iterator<Item = u32> + '_ {
    keep.values().set_indices().map(|row| row as u32)
}

impl TopLevelSources {
    /// The sources of `spec`'s fields, when all are top-level columns of `schema`.
    fn of(
        spec: &PartitionSpecRef,
        schema: &SchemaRef,
        calculator: &PartitionValueCalculator,
    ) -> Result<Option<Self>> {
        let top = schema.as_struct().fields();
        let Some(columns) = spec
            .fields()
            .iter()
            .map(|field| {
                let at = top.iter().position(|f| f.id == field.source_id)?;
                Some(SourceColumn {
                    at,
                    name: top[at].name.clone(),
                })
            })
            .collect::<Option<Vec<SourceColumn>>>()
        else {
            return Ok(None);
        };
        let transforms = spec
            .fields()
            .iter()
            .map(|field| create_transform_function(&field.transform))
            .collect::<Result<Vec<_>>>()?;
        let DataType::Struct(fields) = calculator.partition_arrow_type() else {
            return Ok(None);
        };
        Ok(Some(Self {
            columns,
            transforms,
            fields: fields.clone(),
        }))
    }

    /// Whether `batch` holds each source column where the table's schema does.
    fn fit(&self, batch: &RecordBatch) -> bool {
        let schema = batch.schema_ref();
        self.columns.iter().all(|column| {
            schema
                .fields()
                .get(column.at)
                .is_some_and(|field| *field.name() == column.name)
        })
    }

    /// The partition values of `batch`'s rows, as iceberg's calculator gives them.
    fn values(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        let values = self
            .columns
            .iter()
            .zip(&self.transforms)
            .map(|(column, transform)| transform.transform(batch.column(column.at).clone()))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let values = StructArray::try_new(self.fields.clone(), values, None)
            .map_err(|e| Error::new(ErrorKind::DataInvalid, "partition values").with_source(e))?;
        Ok(Arc::new(values))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::array::{ArrayRef, Int32Array, StringArray, TimestampMicrosecondArray};
    use arrow::compute::take_record_batch;
    use arrow::datatypes::Schema as ArrowSchema;
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
            .groups(batch, None)
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
            let spec = spec(&schema, &fields);
            let splitter = PartitionSplitter::new(schema.clone(), spec.clone()).expect("splitter");
            assert!(
                splitter.top_level.is_some(),
                "{fields:?}: values from the columns themselves"
            );
            let [reference, ours] = both_ways(spec, &batch);
            assert!(reference.len() > 1, "{fields:?} splits into one partition");
            assert_eq!(ours, reference, "{fields:?}");
        }
    }

    #[test]
    fn a_batch_whose_columns_are_not_where_the_schema_has_them_is_refused_not_misplaced() {
        let schema = schema();
        let batch = batch(&schema, 300);
        // The same columns, with their field ids, in another order.
        let order = [2, 0, 3, 1];
        let fields: Vec<_> = order
            .iter()
            .map(|&i| batch.schema().field(i).clone())
            .collect();
        let columns = order.iter().map(|&i| batch.column(i).clone()).collect();
        let moved = RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), columns)
            .expect("reordered batch");
        let spec = spec(
            &schema,
            &[
                ("campaign", Transform::Identity),
                ("kind", Transform::Identity),
            ],
        );
        let splitter = PartitionSplitter::new(schema.clone(), spec).expect("splitter");
        let sources = splitter.top_level.as_ref().expect("top-level sources");
        assert!(sources.fit(&batch));
        assert!(!sources.fit(&moved));
        // iceberg's calculator reads its sources by place too, and refuses the wrong types
        // there: an error, never rows under another column's partition value.
        assert!(splitter.groups(&moved, None).is_err());
        assert!(splitter.groups(&batch, None).is_ok());
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
        let groups = splitter.groups(&batch, None).expect("groups");
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
            let groups = splitter.groups(&batch, None).expect("groups");
            assert_eq!(groups.parts.len(), 1);
            assert_eq!(groups.parts[0].rows, 50);
            assert_eq!(groups.rows, None, "the batch's own order is kept");
        }
        let empty = splitter_of(&schema)
            .groups(&batch.slice(0, 0), None)
            .expect("groups");
        assert!(empty.parts.is_empty() && empty.rows.is_none());
    }

    #[test]
    fn kept_rows_are_grouped_as_the_batch_of_only_those_rows_would_be() {
        let schema = schema();
        let batch = batch(&schema, 600);
        // Every row of some partitions is dropped (campaign-1), others lose some of theirs.
        let campaigns = batch.column(1).as_string::<i32>();
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|row| Some(campaigns.value(row) != "campaign-1" && row % 11 != 4))
            .collect();
        let kept = arrow::compute::filter_record_batch(&batch, &keep).expect("filter");
        for fields in [
            vec![
                ("campaign", Transform::Identity),
                ("kind", Transform::Identity),
            ],
            vec![("kind", Transform::Identity)],
            vec![],
        ] {
            let spec = spec(&schema, &fields);
            let splitter = PartitionSplitter::new(schema.clone(), spec).expect("splitter");
            let of_kept = splitter.groups(&kept, None).expect("groups");
            let chosen = splitter.groups(&batch, Some(&keep)).expect("groups");
            assert_eq!(
                chosen.parts, of_kept.parts,
                "{fields:?}: the same partitions, in the same order, of the same sizes"
            );
            let taken = take_record_batch(&batch, chosen.rows.as_ref().expect("rows chosen"))
                .expect("take");
            let expected = match &of_kept.rows {
                Some(rows) => take_record_batch(&kept, rows).expect("take"),
                None => kept.clone(),
            };
            assert_eq!(taken, expected, "{fields:?}");
        }
        let none = BooleanArray::from(vec![false; batch.num_rows()]);
        let groups = splitter_of(&schema)
            .groups(&batch, Some(&none))
            .expect("groups");
        assert!(groups.parts.is_empty());
        assert_eq!(groups.rows.map(|rows| rows.len()), Some(0));
        assert!(splitter_of(&schema)
            .groups(&batch, Some(&BooleanArray::from(vec![true])))
            .is_err());
    }

    fn splitter_of(schema: &SchemaRef) -> PartitionSplitter {
        PartitionSplitter::new(
            schema.clone(),
            spec(schema, &[("kind", Transform::Identity)]),
        )
        .expect("splitter")
    }
}
