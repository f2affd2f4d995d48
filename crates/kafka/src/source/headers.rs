//! Whether a fetched message carries headers, told without librdkafka parsing them.
//!
//! The source looks for one header on every message (`dlq replay`'s mark), and almost no message
//! has any. `rd_kafka_message_headers` parses a consumed message's headers on first use, and
//! every record of Kafka's v2 format holds a header count, zero or not: so librdkafka allocates,
//! fills and frees a parse buffer for every message only to read a count of zero, a visible share
//! of the reading thread. The unparsed header bytes are kept in librdkafka's own message
//! (`rd_kafka_msg_t` in its `rdkafka_msg.h`, whose first field is the public
//! `rd_kafka_message_t`), where a lone zero byte means no headers.
//!
//! That struct is private to librdkafka, so [`MessageLayout`] mirrors it for the release this
//! build links, and the mirror is trusted only when the library linked is that release and the
//! first message with a payload reads through it as librdkafka reads it (see [`layout_agrees`]).
//! Otherwise every message is asked through the API, as before, for the rest of the process.

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use rdkafka::bindings as rd;

/// The librdkafka release whose `rd_kafka_msg_t` [`MessageLayout`] mirrors (2.12.1).
const MIRRORED_VERSION: c_int = 0x020c_01ff;

/// Whether the mirror matched the linked librdkafka: one of [`UNDECIDED`], [`TRUSTED`] and
/// [`DISTRUSTED`], decided on the first message with a payload.
static LAYOUT: AtomicU8 = AtomicU8::new(UNDECIDED);
const UNDECIDED: u8 = 0;
const TRUSTED: u8 = 1;
const DISTRUSTED: u8 = 2;

/// librdkafka 2.12.1's `rd_kafka_msg_t`, as far as its consumer's fields.
#[repr(C)]
struct MessageLayout {
    _message: rd::rd_kafka_message_t,
    /// `rkm_link`, a `TAILQ_ENTRY`: next and previous.
    _link: [*mut c_void; 2],
    _flags: c_int,
    /// An `rd_kafka_timestamp_type_t`.
    timestamp_type: c_int,
    timestamp: i64,
    /// `rkm_headers`: the headers once parsed.
    parsed_headers: *mut c_void,
    /// An `rd_kafka_msg_status_t`.
    _status: c_int,
    broker_id: i32,
    /// `rkm_u.consumer` (the union's producer side is larger, but comes after nothing read here).
    consumer: ConsumerPart,
}

/// `rkm_u.consumer` of `rd_kafka_msg_t`.
#[repr(C)]
struct ConsumerPart {
    /// `binhdrs`: the record's header bytes as fetched, starting with their count.
    unparsed_headers: KafkaBytes,
    leader_epoch: i32,
}

/// librdkafka's `rd_kafkap_bytes_t`.
#[repr(C)]
struct KafkaBytes {
    len: i32,
    data: *const u8,
    /// `_data[1]`, bytes that may follow the struct when librdkafka allocates it whole.
    _inline: [u8; 1],
}

/// Whether `message` (a consumed message without error, owned by the caller) may carry headers:
/// `false` only when it certainly has none, so that the API need not be asked.
pub(super) fn may_have_headers(message: NonNull<rd::rd_kafka_message_t>) -> bool {
    match LAYOUT.load(Ordering::Relaxed) {
        TRUSTED => {}
        DISTRUSTED => return true,
        _ => match layout_agrees(message) {
            None => return true,
            Some(agrees) => {
                LAYOUT.store(if agrees { TRUSTED } else { DISTRUSTED }, Ordering::Relaxed);
                if !agrees {
                    return true;
                }
            }
        },
    }
    // SAFETY: the layout matched this library on a message before; a consumed message is an
    // `rd_kafka_msg_t` whose consumer fields are set, alive while the caller owns it.
    let mirror = unsafe { message.cast::<MessageLayout>().as_ref() };
    if !mirror.parsed_headers.is_null() {
        return true;
    }
    let unparsed = &mirror.consumer.unparsed_headers;
    match unparsed.len {
        // A count of zero is the single byte 0 (a zigzag varint); any other count is left to
        // librdkafka to read, including a negative one.
        // SAFETY: `data` holds `len` bytes of the fetched record while the message lives.
        1 => unparsed.data.is_null() || unsafe { *unparsed.data } != 0,
        len => len > 1,
    }
}

/// Whether the linked librdkafka is the mirrored release and the mirror reads `message` as
/// librdkafka does: its timestamp and type, broker and leader epoch as the public accessors
/// give them, and its unparsed headers right after its payload, where a v2 record keeps them.
/// `None` for a message without payload, which cannot show the last.
fn layout_agrees(message: NonNull<rd::rd_kafka_message_t>) -> Option<bool> {
    // SAFETY: `rd_kafka_version` only returns a constant.
    if unsafe { rd::rd_kafka_version() } != MIRRORED_VERSION {
        tracing::debug!("librdkafka is not the release whose message layout the source mirrors: every message's headers are parsed");
        return Some(false);
    }
    let raw = message.as_ptr().cast_const();
    // SAFETY: the message is valid (the caller's).
    let public = unsafe { message.as_ref() };
    if public.payload.is_null() {
        return None;
    }
    let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY: the message is valid; the accessors only read it, and the mirror reads no further
    // than librdkafka's message of this release extends. The payload's end is only compared.
    let agrees = unsafe {
        let mirror = message.cast::<MessageLayout>().as_ref();
        let payload_end = public
            .payload
            .cast::<u8>()
            .cast_const()
            .wrapping_add(public.len);
        let timestamp = rd::rd_kafka_message_timestamp(raw, &mut kind);
        mirror.timestamp == timestamp
            && mirror.timestamp_type == kind as c_int
            && mirror.broker_id == rd::rd_kafka_message_broker_id(raw)
            && mirror.consumer.leader_epoch == rd::rd_kafka_message_leader_epoch(raw)
            && mirror.consumer.unparsed_headers.len >= 0
            && mirror.consumer.unparsed_headers.data == payload_end
    };
    if !agrees {
        tracing::warn!("librdkafka's message does not read as the source's mirror of it: every message's headers are parsed");
    }
    Some(agrees)
}

/// Whether the mirror was found to match the linked librdkafka (`None` before it was decided).
#[cfg(test)]
pub(super) fn layout_trusted() -> Option<bool> {
    match LAYOUT.load(Ordering::Relaxed) {
        TRUSTED => Some(true),
        DISTRUSTED => Some(false),
        _ => None,
    }
}
