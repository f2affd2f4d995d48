//! The dead letter queue: rejected rows as self-describing records on a Kafka topic.

pub mod entry;
pub mod export;
pub mod monitor;
pub mod pattern;
pub mod record;
pub mod replay;
pub mod stats;
pub mod writer;

pub use pattern::pattern_of;
pub use record::{category_of, DeadLetter, PayloadEncoding, SourceCoordinates};
pub use writer::{DeadLetterWriter, Delivery, KafkaDelivery};

/// Largest dead letter record: the dead letter topic's `max.message.bytes` (set by `setup`) and
/// its producer's `message.max.bytes`. A source message of up to 4 MiB fits with its
/// JSON-escaped (or base64) payload and envelope.
pub const MAX_RECORD_BYTES: usize = 10 * 1024 * 1024;
