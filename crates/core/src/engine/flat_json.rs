//! A reader for the common shape of an event: one JSON object whose values are plain strings
//! (no escapes), numbers, booleans or null.
//!
//! `json_fields` spends most of the parsing SQL's time in the JSON parse, and nearly every event
//! has this shape. This reader only answers when it is sure: the moment it meets anything else
//! (an escape or a control character in a string, a nested value, a byte out of place) it
//! gives up on the document and the caller hands it to the full parser, which decides whether it
//! is well formed and what it holds. So it never has to tell a broken document, and what it
//! reads is the same as what the full parser reads (a test holds the two equal).

/// A value of a flat object, as its text in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlatValue<'a> {
    /// `null`.
    Null,
    /// A string without escapes, its quotes removed.
    String(&'a str),
    /// A number, as written.
    Number(&'a str),
    /// `true` or `false`.
    Boolean(&'a str),
}

/// Bytes that end the fast read of a string: its closing quote, or what the full parser must
/// see (an escape, or a control character, which JSON does not allow unescaped).
static STRING_STOP: [bool; 256] = {
    let mut stop = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        stop[byte] = true;
        byte += 1;
    }
    stop[b'"' as usize] = true;
    stop[b'\\' as usize] = true;
    stop
};

/// Each byte of a word, as a multiplier.
const EVERY_BYTE: u64 = u64::from_le_bytes([1; 8]);
/// The top bit of each byte of a word.
const TOP_BITS: u64 = EVERY_BYTE << 7;

/// The position of the first [`STRING_STOP`] byte of `bytes`: sixteen bytes at a time with SSE2
/// (every x86-64 processor has it), else a word (eight bytes) at a time; byte by byte, the scan
/// of the strings was the largest part of the read.
fn first_stop(bytes: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    let at = {
        let mut at = 0;
        while let Some(block) = bytes.get(at..).and_then(<[u8]>::first_chunk::<16>) {
            let stops = super::sse2::string_stops(block);
            if stops != 0 {
                return Some(at + stops.trailing_zeros() as usize);
            }
            at += 16;
        }
        at
    };
    #[cfg(not(target_arch = "x86_64"))]
    let at = 0;
    first_stop_by_words(bytes, at)
}

/// [`first_stop`] from `start` on, a word at a time.
fn first_stop_by_words(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    while let Some(word) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*word);
        // A byte of `x` below `n` (n <= 0x80) sets its top bit in `(x - n) & !x`; the borrow
        // can also flag bytes above a flagged one, never below it, so the lowest flag is exact
        // (and so is the lowest of several such masks ORed together).
        let below = |x: u64, n: u8| x.wrapping_sub(EVERY_BYTE * u64::from(n)) & !x & TOP_BITS;
        let stops = below(word, 0x20)
            | below(word ^ (EVERY_BYTE * u64::from(b'"')), 1)
            | below(word ^ (EVERY_BYTE * u64::from(b'\\')), 1);
        if stops != 0 {
            // Little-endian: the lowest byte of the word is the first in the text.
            return Some(at + (stops.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    rest.iter()
        .position(|&b| STRING_STOP[usize::from(b)])
        .map(|i| at + i)
}

/// Whether `a` and `b` hold the same bytes. Keys are short: two of one length from 8 to 16
/// bytes are compared as two overlapping words, without the call `==` makes to `memcmp`.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let word = |s: &[u8]| s.first_chunk::<8>().map(|w| u64::from_ne_bytes(*w));
    let last = |s: &[u8]| s.last_chunk::<8>().map(|w| u64::from_ne_bytes(*w));
    if a.len() == b.len() && (8..=16).contains(&a.len()) {
        return word(a) == word(b) && last(a) == last(b);
    }
    a == b
}

/// The keys a caller wants from each document, prepared once for every document of a batch.
pub struct WantedKeys<'k> {
    names: &'k [&'k str],
    /// Each name with its closing quote, when it can be matched against a document's bytes as
    /// they stand: one without a quote, backslash or control character is written the same in
    /// every document that has it without escapes.
    quoted: Vec<Option<Vec<u8>>>,
}

impl<'k> WantedKeys<'k> {
    /// The keys `names`, in the order the caller numbers them.
    pub fn new(names: &'k [&'k str]) -> Self {
        let quoted = names
            .iter()
            .map(|name| {
                (!name.bytes().any(|b| STRING_STOP[usize::from(b)]))
                    .then(|| [name.as_bytes(), b"\""].concat())
            })
            .collect();
        Self { names, quoted }
    }

    /// The index of `key`, trying `guess` first: documents tend to list their fields in one
    /// order, and the caller's keys usually follow it, so most lookups take one comparison.
    pub fn position(&self, key: &str, guess: usize) -> Option<usize> {
        if self.names.get(guess) == Some(&key) {
            return Some(guess);
        }
        self.names.iter().position(|k| *k == key)
    }
}

/// Reads `json` when it is a flat object, calling `field` with the index in `keys` and the value
/// of each wanted key, in document order (a repeated key is given each time). `None` when the
/// document is not of that shape or not well formed: then `field` may have been called for some
/// of its fields, and the caller must throw those away and ask the full parser.
// Inlined into its one caller, the per-row loop: the compiler's own choice flips with
// unrelated changes elsewhere in the crate, and costs a call and its spills per field.
#[inline(always)]
pub fn read_flat<'a>(
    json: &'a str,
    keys: &WantedKeys<'_>,
    mut field: impl FnMut(usize, FlatValue<'a>),
) -> Option<()> {
    let mut reader = Reader {
        bytes: json.as_bytes(),
        at: 0,
    };
    reader.skip_space();
    reader.expect(b'{')?;
    reader.skip_space();
    if reader.peek() == Some(b'}') {
        reader.at += 1;
    } else {
        let mut next = 0;
        loop {
            reader.expect(b'"')?;
            let wanted = reader.key(keys, next)?;
            reader.skip_space();
            reader.expect(b':')?;
            reader.skip_space();
            let value = reader.value()?;
            if let Some(i) = wanted {
                next = i + 1;
                field(i, value);
            }
            reader.skip_space();
            match reader.next()? {
                b',' => reader.skip_space(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    reader.skip_space();
    (reader.at == reader.bytes.len()).then_some(())
}

// Its steps are inlined into `read_flat` too: called, each saved and restored the loop's
// registers once per field, which cost more than the step's own work.
struct Reader<'a> {
    /// The document's bytes: those of a `&str`, so UTF-8.
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The key whose opening quote was just read, as its index in `keys` (`None`: not wanted),
    /// trying the one after the last found first.
    #[inline(always)]
    fn key(&mut self, keys: &WantedKeys<'_>, guess: usize) -> Option<Option<usize>> {
        // The expected key and its closing quote, byte for byte: no need to look for the end
        // of the string and compare it apart.
        if let Some(Some(quoted)) = keys.quoted.get(guess) {
            let end = self.at + quoted.len();
            if self
                .bytes
                .get(self.at..end)
                .is_some_and(|text| same_bytes(text, quoted))
            {
                self.at = end;
                return Some(Some(guess));
            }
        }
        let key = self.string()?;
        Some(keys.position(key, guess))
    }

    /// The text up to the closing quote (the opening one already read).
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        let start = self.at;
        let end = start + first_stop(self.bytes.get(start..)?)?;
        if self.bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        self.text_between(start, end)
    }

    #[inline(always)]
    fn value(&mut self) -> Option<FlatValue<'a>> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string().map(FlatValue::String)
            }
            b'-' | b'0'..=b'9' => self.number().map(FlatValue::Number),
            b't' => self.literal("true").map(FlatValue::Boolean),
            b'f' => self.literal("false").map(FlatValue::Boolean),
            b'n' => self.literal("null").map(|_| FlatValue::Null),
            _ => None,
        }
    }

    fn literal(&mut self, word: &'static str) -> Option<&'a str> {
        let end = self.at + word.len();
        let text = self.text_between(self.at, end)?;
        if text != word {
            return None;
        }
        self.at = end;
        Some(text)
    }

    /// A number as JSON's grammar has it: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        self.text_between(start, self.at)
    }

    /// The text from `start` to `end`; `None` unless both are character boundaries (the reader
    /// only slices where it stands next to an ASCII byte, which always is one). `str::get`
    /// checks the same, but the compiler called it out of line for every value.
    #[inline(always)]
    fn text_between(&self, start: usize, end: usize) -> Option<&'a str> {
        let bytes = self.bytes.get(start..end)?;
        // A UTF-8 continuation byte is 0b10xx_xxxx: every other byte, or the end, starts a
        // character.
        let boundary = |at: usize| self.bytes.get(at).is_none_or(|&byte| (byte as i8) >= -0x40);
        if !(boundary(start) && boundary(end)) {
            return None;
        }
        // SAFETY: `bytes` is the part of the UTF-8 document between two character boundaries
        // (checked above), so it is UTF-8 itself.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 7] = ["event_id", "revenue", "ok", "gone", "n", "a", "q\"uote"];

    fn read(json: &str) -> Option<Vec<(&str, FlatValue<'_>)>> {
        let mut fields = Vec::new();
        read_flat(json, &WantedKeys::new(&KEYS), |key, value| {
            fields.push((KEYS[key], value))
        })?;
        Some(fields)
    }

    #[test]
    fn reads_a_compact_event() {
        let json = r#"{"event_id":"e-1","revenue":12.5,"ok":true,"gone":null,"n":-0.5e+3}"#;
        assert_eq!(
            read(json),
            Some(vec![
                ("event_id", FlatValue::String("e-1")),
                ("revenue", FlatValue::Number("12.5")),
                ("ok", FlatValue::Boolean("true")),
                ("gone", FlatValue::Null),
                ("n", FlatValue::Number("-0.5e+3")),
            ])
        );
        assert_eq!(read(" {\n} \t"), Some(vec![]));
        assert_eq!(
            read(r#"{"x":1,"n":2,"event_idx":"no","event_id":"yes"}"#),
            Some(vec![
                ("n", FlatValue::Number("2")),
                ("event_id", FlatValue::String("yes")),
            ])
        );
        assert_eq!(
            read(r#"{ "a" : "hé" , "a" : false }"#),
            Some(vec![
                ("a", FlatValue::String("hé")),
                ("a", FlatValue::Boolean("false")),
            ])
        );
    }

    #[test]
    fn the_word_scan_stops_where_the_byte_scan_does() {
        let bytewise = |bytes: &[u8]| bytes.iter().position(|&b| STRING_STOP[usize::from(b)]);
        // Every byte value at every place of texts around a word's length, after plain text
        // and after bytes next to the stops (space, DEL, UTF-8's high bytes), so a borrow from
        // one byte into the next would show.
        for len in 0..=40 {
            for fill in [
                b'a', b' ', b'!', 0x7f, 0x80, 0xc3, 0xff, b'#', b'[', 0x1f, 0x20,
            ] {
                for at in 0..len {
                    for byte in 0..=255u8 {
                        let mut text = vec![fill; len];
                        text[at] = byte;
                        let expected = bytewise(&text);
                        assert_eq!(first_stop(&text), expected, "{text:?}");
                        assert_eq!(first_stop_by_words(&text, 0), expected, "{text:?}");
                    }
                }
                let text = vec![fill; len];
                assert_eq!(first_stop(&text), bytewise(&text), "{text:?}");
            }
        }
        // Two stops: the first counts.
        assert_eq!(first_stop(b"abcdefgh\\i\"j"), Some(8));
        assert_eq!(first_stop(b"ab\"cdefgh\\"), Some(2));
        assert_eq!(
            first_stop("h\u{e9}llo w\u{f6}rld, caf\u{e9}\"".as_bytes()),
            Some(20)
        );
    }

    #[test]
    fn short_texts_compare_equal_only_when_every_byte_is() {
        for len in 0..=20 {
            let text: Vec<u8> = (0..len).map(|i| b'a' + i as u8).collect();
            assert!(same_bytes(&text, &text.clone()));
            for at in 0..len {
                let mut other = text.clone();
                other[at] ^= 0x20;
                assert!(!same_bytes(&text, &other), "{len} bytes, byte {at}");
            }
        }
        assert!(!same_bytes(b"abcdefgh", b"abcdefghi"));
    }

    #[test]
    fn leaves_everything_else_to_the_full_parser() {
        for json in [
            r#"{"a":"x\"y"}"#,
            r#"{"q"uote":1}"#,
            r#"{"q\"uote":1}"#,
            r#"{"a\u0062":1}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":[1]}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":1,}"#,
            r#"{"a":1"#,
            r#"{"a" 1}"#,
            r#"{"a":1}}"#,
            r#"{"a":1} x"#,
            r#"[1]"#,
            "",
            r#"{"a":"x"#,
            // Multi-byte characters where a value ends or a literal is read.
            r#"{"a":1é}"#,
            r#"{"a":tr€}"#,
            r#"{"a":nu€"#,
            r#"{"a":-€}"#,
            "{\"a\":\"€",
        ] {
            assert_eq!(read(json), None, "{json}");
        }
    }
}
