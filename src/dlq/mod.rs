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
pub use writer::DeadLetterWriter;
