//! Rows written to a table since its last commit, held as Arrow and grouped by partition value
//! until the commit encodes them, one partition at a time.
//!
//! Encoding as rows arrive kept a Parquet writer open per partition until the commit, and each
//! open writer holds a zstd compression and decompression context per column chunk before it
//! holds a row, so memory grew with campaigns × event types (docs/performance.md has the
//! figures). Memory now follows the rows buffered (which `commit.max_rows` bounds), whatever
//! the number of partitions.

use std::collections::HashMap;

use arrow::compute::{concat_batches, take_record_batch};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use iceberg::spec::Struct;

use super::partition::{PartitionGroups, PartitionPart};

/// Rows handed to the encoder at a time: bounds the copy a partition's rows make on their way
/// into its file.
pub const ENCODE_CHUNK_ROWS: usize = 8192;

/// Rows since the last commit: per partition value, its rows as slices of the batches written,
/// in arrival order.
#[derive(Default)]
pub struct BufferedRows {
    partitions: HashMap<Struct, Vec<RecordBatch>>,
    rows: u64,
}

impl BufferedRows {
    /// Keeps the rows of `batch` that `groups` lists by partition value (all of them when it
    /// lists them in the batch's own order).
    ///
    /// The rows are put in partition order now, while the batch the SQL just produced is still
    /// in the CPU's cache: gathering them at the commit instead read each row back from
    /// wherever it lay among everything buffered (`interleave` led the commit's profile).
    pub fn push(&mut self, batch: RecordBatch, groups: PartitionGroups) -> Result<(), ArrowError> {
        self.rows += groups
            .parts
            .iter()
            .map(|part| part.rows as u64)
            .sum::<u64>();
        let grouped = match &groups.rows {
            Some(rows) => take_record_batch(&batch, rows)?,
            None => batch,
        };
        let mut start = 0;
        for PartitionPart { value, rows } in groups.parts {
            let slice = grouped.slice(start, rows);
            start += rows;
            self.partitions.entry(value).or_default().push(slice);
        }
        Ok(())
    }

    /// Rows held.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The partition values held, each with its rows in chunks of at most
    /// [`ENCODE_CHUNK_ROWS`], built only when asked for.
    pub fn partitions(&self) -> impl Iterator<Item = (&Struct, PartitionChunks<'_>)> {
        self.partitions.iter().map(|(value, slices)| {
            (
                value,
                PartitionChunks {
                    slices,
                    next: 0,
                    offset: 0,
                },
            )
        })
    }
}

/// One partition's buffered rows, as batches of at most [`ENCODE_CHUNK_ROWS`] rows.
pub struct PartitionChunks<'a> {
    slices: &'a [RecordBatch],
    /// The slice the next chunk starts in, and its first row there.
    next: usize,
    offset: usize,
}

impl Iterator for PartitionChunks<'_> {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut parts = Vec::new();
        let mut rows = 0;
        while rows < ENCODE_CHUNK_ROWS {
            let Some(slice) = self.slices.get(self.next) else {
                break;
            };
            let taken = (slice.num_rows() - self.offset).min(ENCODE_CHUNK_ROWS - rows);
            parts.push(slice.slice(self.offset, taken));
            rows += taken;
            self.offset += taken;
            if self.offset == slice.num_rows() {
                self.next += 1;
                self.offset = 0;
            }
        }
        match parts.as_slice() {
            [] => None,
            // Rows of one written batch: a slice of it, no copy.
            [one] => Some(Ok(one.clone())),
            [first, ..] => Some(concat_batches(&first.schema(), &parts)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use iceberg::spec::Literal;

    use super::*;

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))])
            .expect("one column")
    }

    fn partition(name: &str) -> Struct {
        Struct::from_iter([Some(Literal::string(name))])
    }

    fn values(chunks: PartitionChunks<'_>) -> Vec<i64> {
        chunks
            .flat_map(|chunk| {
                let chunk = chunk.expect("chunk");
                chunk
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    /// Each partition value with its rows, as the splitter lists them.
    fn groups(parts: Vec<(Struct, Vec<u32>)>) -> PartitionGroups {
        PartitionGroups {
            rows: (parts.len() > 1).then(|| {
                parts
                    .iter()
                    .flat_map(|(_, rows)| rows.iter().copied())
                    .collect()
            }),
            parts: parts
                .into_iter()
                .map(|(value, rows)| PartitionPart {
                    value,
                    rows: rows.len(),
                })
                .collect(),
        }
    }

    #[test]
    fn each_partition_gets_its_rows_across_batches_in_arrival_order() {
        let mut buffered = BufferedRows::default();
        buffered
            .push(
                batch(&[1, 2, 3, 4]),
                groups(vec![
                    (partition("a"), vec![0, 2]),
                    (partition("b"), vec![1, 3]),
                ]),
            )
            .expect("push");
        buffered
            .push(batch(&[5, 6]), groups(vec![(partition("a"), vec![0, 1])]))
            .expect("push");
        buffered
            .push(batch(&[7, 8]), groups(vec![(partition("b"), vec![0, 1])]))
            .expect("push");
        assert_eq!(buffered.rows(), 8);
        let mut seen: Vec<(String, Vec<i64>)> = buffered
            .partitions()
            .map(|(value, chunks)| (format!("{value:?}"), values(chunks)))
            .collect();
        seen.sort();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1, vec![1, 3, 5, 6]);
        assert_eq!(seen[1].1, vec![2, 4, 7, 8]);
    }

    #[test]
    fn a_large_partition_comes_in_bounded_chunks() {
        let rows = ENCODE_CHUNK_ROWS * 2 + 5;
        let all: Vec<i64> = (0..rows as i64).collect();
        let mut buffered = BufferedRows::default();
        // Every other row of the first batch (gathered), all of the second (kept as it is).
        buffered
            .push(
                batch(&all),
                groups(vec![
                    (partition("even"), (0..rows as u32).step_by(2).collect()),
                    (partition("odd"), (1..rows as u32).step_by(2).collect()),
                ]),
            )
            .expect("push");
        buffered
            .push(
                batch(&all),
                groups(vec![(partition("even"), (0..rows as u32).collect())]),
            )
            .expect("push");
        for (value, chunks) in buffered.partitions() {
            let even = *value == partition("even");
            let chunks: Vec<RecordBatch> = chunks.map(|c| c.expect("chunk")).collect();
            let sizes: Vec<usize> = chunks.iter().map(RecordBatch::num_rows).collect();
            assert!(sizes.iter().all(|&s| s <= ENCODE_CHUNK_ROWS), "{sizes:?}");
            // Only the last chunk is short: the others span the two batches' rows.
            assert!(
                sizes[..sizes.len() - 1]
                    .iter()
                    .all(|&s| s == ENCODE_CHUNK_ROWS),
                "{sizes:?}"
            );
            let got: Vec<i64> = chunks
                .iter()
                .flat_map(|c| c.column(0).as_primitive::<Int64Type>().values().to_vec())
                .collect();
            let expected: Vec<i64> = if even {
                all.iter()
                    .copied()
                    .step_by(2)
                    .chain(all.iter().copied())
                    .collect()
            } else {
                all.iter().copied().skip(1).step_by(2).collect()
            };
            assert_eq!(got, expected, "{value:?}");
        }
    }
}
