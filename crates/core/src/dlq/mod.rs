//! Dead letters: the self-describing record of a rejected message, and the writer that sends
//! each rejection once per runner until a commit moves past it, over a [`Delivery`].

pub mod record;
pub mod writer;

pub use record::{category_of, DeadLetter, PayloadEncoding, SourceCoordinates};
pub use writer::{DeadLetterWriter, Delivery, DeliveryError};

/// Largest dead letter record: the dead letter topic's `max.message.bytes` (set by `setup`) and
/// its producer's `message.max.bytes`. A source message of up to 4 MiB fits with its
/// JSON-escaped (or base64) payload and envelope.
pub const MAX_RECORD_BYTES: usize = 10 * 1024 * 1024;
