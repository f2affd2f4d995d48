//! Running a pipeline on Kafka: the core's [`Runner`] over the Kafka consumer and the dead
//! letter producer.

use std::sync::Arc;

use campaign_core::catalog::{check_warehouse, open_catalog};
use campaign_core::common::SystemClock;
use campaign_core::config::{CommitMode, Config, PipelineConfig};
use campaign_core::control::Control;
use campaign_core::pipeline::{
    resume_offsets, Connections, PipelineError, Planned, RunOptions, RunSummary, Runner,
};

use crate::admin::TopicAdmin;
use crate::control_topic::KafkaControl;
use crate::delivery::KafkaDelivery;
use crate::source::{KafkaSource, ResumeLookup, SourceOptions};
use crate::{client_config, KafkaError};

/// Runs one pipeline until it is caught up (with `until_caught_up`) or told to shut down.
pub async fn run(
    config: &Config,
    pipeline: &PipelineConfig,
    options: RunOptions,
) -> Result<RunSummary, PipelineError> {
    // Everything that can be wrong with the SQL or the tables is found before consuming.
    let planned = Planned::new(config, pipeline).await?;
    let sink_err = |source| PipelineError::Sink {
        pipeline: pipeline.name.clone(),
        source,
    };
    let catalog = open_catalog(config, &pipeline.sink)
        .await
        .map_err(|e| sink_err(e.into()))?;
    check_warehouse(config, &pipeline.sink)
        .await
        .map_err(|e| sink_err(e.into()))?;
    let accept_offset_jumps = options.accept_offset_jumps;
    let runner = Runner::open(
        config,
        pipeline,
        options,
        planned,
        catalog,
        Arc::new(SystemClock),
        |catalog| connect_kafka(pipeline, catalog, accept_offset_jumps),
    )
    .await?;
    runner.run().await
}

/// The consumer in the pipeline's group and the dead letter producer; the topics must exist.
fn connect_kafka(
    pipeline: &PipelineConfig,
    catalog: Arc<dyn iceberg::Catalog>,
    accept_offset_jumps: bool,
) -> Result<Connections<KafkaSource, KafkaDelivery>, Box<PipelineError>> {
    let kafka_err = |source: KafkaError| {
        Box::new(PipelineError::Connect {
            pipeline: pipeline.name.clone(),
            source: Box::new(source),
        })
    };
    let client = client_config(&pipeline.source.brokers, &pipeline.source.properties);
    let admin = TopicAdmin::new(&client).map_err(kafka_err)?;
    let partitions_of = |topic: &String| {
        admin
            .partition_count(topic)?
            .ok_or_else(|| KafkaError::Admin {
                topic: topic.clone(),
                message: "does not exist; run `campaign-pipeline setup` first".into(),
            })
    };
    let topic_partitions = partitions_of(&pipeline.source.topic).map_err(kafka_err)?;
    partitions_of(&pipeline.dead_letter.topic).map_err(kafka_err)?;
    let dead_letters =
        KafkaDelivery::writer(&client, &pipeline.dead_letter.topic).map_err(kafka_err)?;
    let source = KafkaSource::start(
        &client,
        SourceOptions {
            topic: pipeline.source.topic.clone(),
            group_id: pipeline.source.group_id.clone(),
            start_from: pipeline.source.start_from,
            max_rows: pipeline.batch.max_rows,
            max_wait: pipeline.batch.max_wait,
            accept_offset_jumps,
            partitions: topic_partitions,
        },
        resume_lookup(pipeline, catalog),
    )
    .map_err(|source| {
        Box::new(PipelineError::Source {
            pipeline: pipeline.name.clone(),
            source,
        })
    })?;
    let control = match pipeline.commit.mode {
        CommitMode::EachRunner => None,
        CommitMode::OneCommitter => {
            let topic = pipeline.control_topic();
            partitions_of(&topic).map_err(kafka_err)?;
            let control = KafkaControl::start(&client, &pipeline.source.group_id, &topic)
                .map_err(kafka_err)?;
            Some(Box::new(control) as Box<dyn Control>)
        }
    };
    Ok(Connections {
        source,
        dead_letters,
        topic_partitions,
        control,
    })
}

/// Where assigned partitions resume, read from the tables on the consumer's thread (inside the
/// rebalance callback, which cannot await).
fn resume_lookup(pipeline: &PipelineConfig, catalog: Arc<dyn iceberg::Catalog>) -> ResumeLookup {
    let handle = tokio::runtime::Handle::current();
    let pipeline = pipeline.clone();
    Box::new(move |partitions: &[i32]| {
        handle
            .block_on(resume_offsets(catalog.as_ref(), &pipeline, partitions))
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
    })
}
