//! Data compaction: which small files to rewrite, and the rewrite itself (rows read through
//! iceberg's Arrow reader, so files written under older schemas read as the current one, and
//! written with the sink's Parquet settings into files near the target size).

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use iceberg::scan::FileScanTask;
use iceberg::spec::{DataFile, DataFileFormat, ManifestEntryRef, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};

use super::files::LiveEntry;

/// The small files of one partition, rewritten together.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The partition they share.
    pub partition: Struct,
    /// The files, as the current snapshot lists them.
    pub inputs: Vec<ManifestEntryRef>,
}

impl Rewrite {
    /// Rows the inputs hold (the output must hold as many).
    pub fn rows(&self) -> u64 {
        self.inputs.iter().map(|e| e.record_count()).sum()
    }
}

/// Files of a partition that may wait for the smaller ones to add up to them: with sizes
/// doubling from tier to tier, they cover a 16-fold range before a rewrite takes the
/// smallest of them in.
const MAX_WAITING: usize = 4;

/// Most files one rewrite reads.
const MAX_REWRITE_FILES: usize = 2_000;
/// Most bytes one rewrite reads, in target file sizes.
const MAX_REWRITE_TARGETS: u64 = 8;

/// Partitions of the default spec holding at least `min_files` files smaller than three
/// quarters of `target_size`, with those files: the oldest of them, when they are more than one
/// rewrite reads ([`MAX_REWRITE_FILES`], [`MAX_REWRITE_TARGETS`]).
pub fn plan(
    alive: &[LiveEntry],
    default_spec: i32,
    target_size: u64,
    min_files: usize,
) -> Vec<Rewrite> {
    let small = target_size / 4 * 3;
    let mut partitions: HashMap<&Struct, Vec<ManifestEntryRef>> = HashMap::new();
    for LiveEntry { entry, spec_id } in alive {
        let file = entry.data_file();
        if *spec_id == default_spec
            && file.file_format() == DataFileFormat::Parquet
            && file.file_size_in_bytes() < small
        {
            partitions
                .entry(file.partition())
                .or_default()
                .push(entry.clone());
        }
    }
    let mut rewrites: Vec<Rewrite> = partitions
        .into_iter()
        .filter_map(|(partition, mut inputs)| {
            // Size tiers: a file larger than all the others together waits until they add up
            // to it, so each row is rewritten a logarithmic number of times, not once a pass.
            inputs.sort_by_key(|e| std::cmp::Reverse(e.file_size_in_bytes()));
            let mut rest: u64 = inputs.iter().map(|e| e.file_size_in_bytes()).sum();
            let mut start = 0;
            while let Some(largest) = inputs.get(start) {
                rest -= largest.file_size_in_bytes();
                if largest.file_size_in_bytes() <= rest {
                    break;
                }
                start += 1;
            }
            // ...but at most MAX_WAITING wait, so a partition keeps a bounded number of files
            // (and queries a flat cost) however long it grows: the smaller tiers join in.
            let mut inputs = inputs.split_off(start.min(MAX_WAITING));
            if inputs.len() < min_files {
                return None;
            }
            // A partition whose backlog one pass could not rewrite in time (see
            // `Maintainer::rewrite_for`) would never be compacted: it goes oldest first, a
            // bounded part a rewrite, the rest in the next passes.
            inputs.sort_by_key(|e| e.sequence_number());
            let mut bytes = 0;
            let fits = inputs
                .iter()
                .take(MAX_REWRITE_FILES)
                .take_while(|e| {
                    bytes += e.file_size_in_bytes();
                    bytes <= MAX_REWRITE_TARGETS * target_size
                })
                .count();
            inputs.truncate(fits.max(2));
            Some(Rewrite {
                partition: partition.clone(),
                inputs,
            })
        })
        .collect();
    // Oldest first, so that a pass cut short still made progress where files piled up longest.
    rewrites.sort_by_key(|r| r.inputs.iter().filter_map(|e| e.sequence_number()).min());
    rewrites
}

/// Reads `rewrite`'s files and writes their rows into new files of at most `target_size`.
pub async fn rewrite(
    table: &Table,
    rewrite: &Rewrite,
    target_size: u64,
) -> iceberg::Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().clone();
    let field_ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    let tasks: Vec<iceberg::Result<FileScanTask>> = rewrite
        .inputs
        .iter()
        .map(|entry| {
            Ok(FileScanTask::builder()
                .with_file_size_in_bytes(entry.file_size_in_bytes())
                .with_start(0)
                .with_length(entry.file_size_in_bytes())
                .with_record_count(Some(entry.record_count()))
                .with_data_file_path(entry.file_path().to_string())
                .with_data_file_format(DataFileFormat::Parquet)
                .with_schema(schema.clone())
                .with_project_field_ids(field_ids.clone())
                // Without the partition, identity columns are read from the file (they are
                // written there) as plain columns, not as run-end-encoded constants.
                .with_case_sensitive(true)
                .build())
        })
        .collect();
    let batches = table
        .reader_builder()
        .build()
        .read(futures::stream::iter(tasks).boxed())?
        .stream();

    let properties =
        crate::sink::iceberg::parquet_properties(metadata.properties()).map_err(|e| {
            iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string()).with_source(e)
        })?;
    let parquet = ParquetWriterBuilder::new(properties, schema.clone());
    let location = DefaultLocationGenerator::new(metadata)?;
    // A fresh prefix per rewrite: files of a rewrite that never committed are orphans, and
    // must never be overwritten by a later one.
    let names = DefaultFileNameGenerator::new(
        format!("compacted-{}", uuid::Uuid::now_v7()),
        None,
        DataFileFormat::Parquet,
    );
    let rolling = RollingFileWriterBuilder::new(
        parquet,
        usize::try_from(target_size).unwrap_or(usize::MAX),
        table.file_io().clone(),
        location,
        names,
    );
    let key = PartitionKey::new(spec.as_ref().clone(), schema, rewrite.partition.clone());
    let mut writer = DataFileWriterBuilder::new(rolling).build(Some(key)).await?;
    let mut batches = batches;
    while let Some(batch) = batches.try_next().await? {
        writer.write(batch).await?;
    }
    writer.close().await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use iceberg::spec::{DataContentType, DataFileBuilder, Literal, ManifestEntry, ManifestStatus};

    use super::*;

    const MB: u64 = 1 << 20;

    /// A live Parquet file of partition `p`, `size` bytes, added at sequence number `sequence`.
    fn file(p: &str, size: u64, sequence: i64) -> LiveEntry {
        let data_file = DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(format!("{p}/{sequence}.parquet"))
            .file_format(DataFileFormat::Parquet)
            .partition(Struct::from_iter([Some(Literal::string(p))]))
            .record_count(1)
            .file_size_in_bytes(size)
            .build()
            .expect("a data file");
        let entry = ManifestEntry::builder()
            .status(ManifestStatus::Added)
            .sequence_number(sequence)
            .data_file(data_file)
            .build();
        LiveEntry {
            entry: Arc::new(entry),
            spec_id: 0,
        }
    }

    fn sequences(rewrite: &Rewrite) -> Vec<i64> {
        let mut seen: Vec<i64> = rewrite
            .inputs
            .iter()
            .filter_map(|e| e.sequence_number())
            .collect();
        seen.sort_unstable();
        seen
    }

    #[test]
    fn a_backlog_is_rewritten_oldest_first_in_bounded_parts() {
        let target = 128 * MB;
        // Newest first in the listing: the plan must not rely on its order.
        let many: Vec<LiveEntry> = (0..5_000).rev().map(|s| file("a", 10_000, s)).collect();
        let rewrites = plan(&many, 0, target, 10);
        assert_eq!(rewrites.len(), 1);
        let expected: Vec<i64> = (0..MAX_REWRITE_FILES as i64).collect();
        assert_eq!(sequences(&rewrites[0]), expected);

        // 90 MB files: eight targets' worth is eleven of them.
        let large: Vec<LiveEntry> = (0..40).rev().map(|s| file("b", 90 * MB, s)).collect();
        let rewrites = plan(&large, 0, target, 10);
        assert_eq!(sequences(&rewrites[0]), (0..11).collect::<Vec<_>>());

        // A backlog within bounds is rewritten whole, as before.
        let few: Vec<LiveEntry> = (0..12).map(|s| file("c", MB, s)).collect();
        let rewrites = plan(&few, 0, target, 10);
        assert_eq!(sequences(&rewrites[0]), (0..12).collect::<Vec<_>>());
        assert!(plan(&few[..9], 0, target, 10).is_empty(), "below min_files");
    }
}
