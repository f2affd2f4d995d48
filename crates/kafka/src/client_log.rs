//! What librdkafka reports, logged through the repeated-error log so that an outage gives a
//! few lines, not one per reconnect attempt of every client (see [`crate::telemetry::repeated`]).

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

use crate::telemetry::repeated::repeated_errors;

/// Reports an error librdkafka raised (end of partition is bookkeeping, not an error).
pub fn report_error(error: &KafkaError, reason: &str) {
    if super::is_end_of_partition(error) {
        return;
    }
    let kind = match error.rdkafka_error_code() {
        Some(code) => format!("librdkafka {code:?}"),
        None => "librdkafka".to_string(),
    };
    repeated_errors().error(&kind, &format!("librdkafka: {error}: {reason}"));
}

/// Reports one of librdkafka's own log lines: warnings and worse as repeated errors of their
/// facility, the rest at info and debug level.
pub fn report_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => {
            repeated_errors().error(
                &format!("librdkafka {facility}"),
                &format!("librdkafka {facility}: {message}"),
            );
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(facility, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
    }
}

/// The context of the clients that need nothing else: producers, admin, readers.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientLog;

impl ClientContext for ClientLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        report_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        report_error(&error, reason);
    }
}

impl ConsumerContext for ClientLog {}
