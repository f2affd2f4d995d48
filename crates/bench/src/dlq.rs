//! DLQ tools over a large dead letter topic: `dlq stats` and `dlq export` read speed against a
//! plain consumer reading the same topic.

use anyhow::Context;

use super::{cpu_per_million, per_second, plain_consume, records, timed, Timed};
use crate::kafka::admin::{TopicAdmin, TopicSpec};
use crate::kafka::producer::EventProducer;
use crate::kafka::reader::TopicReader;
use campaign_tools::dlq::entry::Entry;
use campaign_tools::dlq::export::{ExportFormat, ExportWriter};
use campaign_tools::dlq::stats::StatsBuilder;
use campaign_tools::dlq::{DeadLetter, SourceCoordinates};

/// Adds the DLQ rows to the table: `count` dead letters with the generator's malformed payloads
/// and reasons that vary per record (so that patterns have to fold).
pub async fn measure(
    client: &rdkafka::ClientConfig,
    count: usize,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let topic = super::scratch_topic("bench_dlq");
    TopicAdmin::new(client)?
        .ensure_topic(&TopicSpec {
            name: topic.clone(),
            partitions: 1,
            replication: 1,
            configs: Default::default(),
        })
        .await?;
    let reasons = [
        "bad timestamp: ",
        "unknown event_type: ",
        "negative revenue: -",
    ];
    let now = chrono::Utc::now().to_rfc3339();
    let letters: Vec<(Vec<u8>, Vec<u8>)> = records(count)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let source = SourceCoordinates {
                topic: "campaign_events".into(),
                partition: (i % 3) as i32,
                offset: i as i64,
                timestamp: None,
            };
            let reason = format!("{}{}", reasons[i % reasons.len()], i % 997);
            let letter = DeadLetter::new(&reason, &r.payload, source, "bench", &now);
            (r.key, letter.to_json())
        })
        .collect();
    let producer = EventProducer::new(client, &topic)?;
    for chunk in letters.chunks(20_000) {
        producer
            .send_records(chunk.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .await
            .context("producing benchmark dead letters")?;
    }

    let (_, plain) = timed(async { plain_consume(client, &topic, 1, count) }).await?;
    row(
        &format!("baseline: plain consumer over {count} dead letters"),
        per_second(count, plain.wall),
    );

    let (stats, stats_time) = timed(async {
        read(client, &topic, |entry, builder| {
            builder.add(&entry);
            Ok(())
        })
    })
    .await?;
    anyhow::ensure!(
        stats.report().total == count as u64,
        "dlq stats counted {} of {count}",
        stats.report().total
    );
    row("dlq stats", against(count, &stats_time, &plain));

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dlq.jsonl");
    let mut writer = ExportWriter::create(&path, ExportFormat::Jsonl)?;
    let (_, export_time) = timed(async {
        read(client, &topic, |entry, _| {
            if let Entry::Letter(letter) = entry {
                writer.write(&letter)?;
            }
            Ok(())
        })
    })
    .await?;
    writer.finish()?;
    row(
        "dlq export (JSON lines)",
        against(count, &export_time, &plain),
    );
    Ok(())
}

/// Reads the whole topic as the tools do, handing each entry to `each`.
fn read(
    client: &rdkafka::ClientConfig,
    topic: &str,
    mut each: impl FnMut(Entry, &mut StatsBuilder) -> anyhow::Result<()>,
) -> anyhow::Result<StatsBuilder> {
    let mut builder = StatsBuilder::default();
    let mut reader = TopicReader::open(client, &format!("{topic}-tools"), topic)?
        .context("the benchmark topic vanished")?;
    let mut failure = None;
    tokio::task::block_in_place(|| {
        reader.read_to_end(|message| {
            if failure.is_none() {
                failure = each(Entry::from_message(&message), &mut builder).err();
            }
            Ok(())
        })
    })?;
    match failure {
        Some(err) => Err(err),
        None => Ok(builder),
    }
}

/// Throughput, the wall-clock ratio to the baseline and the CPU cost.
fn against(count: usize, measured: &Timed, baseline: &Timed) -> String {
    format!(
        "{} ({:.2}x the plain consumer's wall clock, {})",
        per_second(count, measured.wall),
        measured.wall.as_secs_f64() / baseline.wall.as_secs_f64().max(1e-9),
        cpu_per_million(count, measured.cpu)
    )
}
