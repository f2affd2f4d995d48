//! Sixteen bytes compared at once with SSE2, which every x86-64 processor has: the byte scans
//! of the JSON reader's hot loops.

use std::arch::x86_64::{
    __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
    _mm_set1_epi8, _mm_setzero_si128,
};

/// A bit per byte of `block`, set where the byte ends a JSON string's plain run: a quote, a
/// backslash or a control character (`flat_json`'s `STRING_STOP` bytes).
pub(super) fn string_stops(block: &[u8; 16]) -> u32 {
    // SAFETY: SSE2 is part of x86-64, so these are available on every processor this code is
    // built for; the load reads the sixteen bytes of `block`, without alignment.
    unsafe {
        let bytes = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20 exactly where the unsigned minimum with 0x1f is the byte itself.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(bytes, _mm_set1_epi8(0x1f)), bytes);
        let any = _mm_or_si128(_mm_or_si128(quote, backslash), control);
        _mm_movemask_epi8(any) as u32
    }
}

/// A bit per byte of `block`, set where the byte is zero.
pub(super) fn zeros(block: &[u8; 16]) -> u16 {
    // SAFETY: as above.
    unsafe {
        let bytes = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_setzero_si128())) as u16
    }
}
