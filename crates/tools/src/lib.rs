//! campaign-pipeline's tools around a running pipeline: the dead letter queue's tools
//! (statistics, patterns, monitor, export, replay) and `check --sample`, which runs both SQL
//! files over sample payloads through the core's own routing.

pub mod dlq;
pub mod sample;

use campaign_core::{common, config, engine, pipeline, source, window};
use campaign_kafka as kafka;
