//! `json_fields(json, 'key', ...)`: many top-level fields of a JSON object from one parse.
//!
//! `json_get_str(value, 'a')`, `json_get_str(value, 'b')`... parse the document once per call;
//! on the per-event hot path one parse for all fields is several times cheaper. The result is a
//! struct with one nullable text field per key: string values decoded, other values as their
//! JSON text (`12.5`, `true`, `{...}`), NULL when the key is absent or null. Beside them a
//! struct `$type` holds each key's JSON type (`string`, `number`, `boolean`, `array`,
//! `object`; NULL when absent or null), so that rules can tell `"1"` from `1`:
//! `f['$type']['event_id'] <> 'string'`. The struct itself is NULL when the input is not a
//! well-formed JSON object, which is how `broken json` is told.

use std::any::Any;
use std::sync::Arc;

use arrow::array::BooleanBufferBuilder;
use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int8Array, StringArray, StructArray,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{exec_err, plan_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use jiter::{Jiter, JiterResult, Peek};

use super::flat_json::{read_flat, FlatValue, WantedKeys};

/// The `json_fields` scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonFields {
    signature: Signature,
}

impl Default for JsonFields {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// Name of the field holding the keys' JSON types.
pub const TYPE_FIELD: &str = "$type";

/// The literal key names of a call, in order.
fn keys(arguments: &[Option<&ScalarValue>]) -> Result<Vec<String>> {
    if arguments.len() < 2 {
        return plan_err!("json_fields(json, 'key', ...) needs the JSON and at least one key");
    }
    arguments[1..]
        .iter()
        .map(|a| match a {
            Some(
                ScalarValue::Utf8(Some(k))
                | ScalarValue::Utf8View(Some(k))
                | ScalarValue::LargeUtf8(Some(k)),
            ) if k == TYPE_FIELD => {
                plan_err!("json_fields: `{TYPE_FIELD}` names the field of types, not a key")
            }
            Some(
                ScalarValue::Utf8(Some(k))
                | ScalarValue::Utf8View(Some(k))
                | ScalarValue::LargeUtf8(Some(k)),
            ) => Ok(k.clone()),
            _ => plan_err!("json_fields: every key must be a string literal"),
        })
        .collect()
}

fn text_fields(keys: &[String]) -> Fields {
    keys.iter()
        .map(|k| Arc::new(Field::new(k, DataType::Utf8, true)))
        .collect::<Vec<FieldRef>>()
        .into()
}

/// The JSON type names, in the order of [`type_of`]'s codes.
const TYPE_NAMES: [&str; 5] = ["string", "number", "boolean", "array", "object"];

/// A type column: dictionary-encoded, so that comparing and filtering it moves one byte a row.
fn type_data_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8))
}

/// One text field per key, then `$type` with one type field per key.
fn struct_fields(keys: &[String]) -> Fields {
    let mut fields: Vec<FieldRef> = text_fields(keys).iter().cloned().collect();
    let types: Fields = keys
        .iter()
        .map(|k| Arc::new(Field::new(k, type_data_type(), true)))
        .collect::<Vec<FieldRef>>()
        .into();
    fields.push(Arc::new(Field::new(
        TYPE_FIELD,
        DataType::Struct(types),
        false,
    )));
    fields.into()
}

/// Indexes into [`TYPE_NAMES`].
const STRING: i8 = 0;
const NUMBER: i8 = 1;
const BOOLEAN: i8 = 2;
const ARRAY: i8 = 3;
const OBJECT: i8 = 4;

/// The JSON type of a value that is not null, as an index into [`TYPE_NAMES`].
fn type_of(peek: Peek) -> i8 {
    match peek {
        Peek::String => STRING,
        Peek::True | Peek::False => BOOLEAN,
        Peek::Array => ARRAY,
        Peek::Object => OBJECT,
        _ => NUMBER,
    }
}

impl ScalarUDFImpl for JsonFields {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        "json_fields"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("json_fields: the return type depends on the key literals")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let keys = keys(args.scalar_arguments)?;
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Struct(struct_fields(&keys)),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let DataType::Struct(fields) = args.return_field.data_type() else {
            return exec_err!("json_fields: unexpected return type");
        };
        let keys: Vec<&str> = fields
            .iter()
            .map(|f| f.name().as_str())
            .filter(|name| *name != TYPE_FIELD)
            .collect();
        let input = match &args.args[0] {
            ColumnarValue::Array(array) => array.clone(),
            ColumnarValue::Scalar(scalar) => scalar.to_array_of_size(args.number_rows)?,
        };
        let input = arrow::compute::cast(&input, &DataType::Utf8)?;
        let input = input.as_string::<i32>();
        let rows = input.len();
        // Every extracted value is a part of its document at most as long (decoding escapes only
        // shortens), so the input's bytes bound what all columns together hold.
        let per_column = input.values().len() / keys.len().max(1);
        let mut columns: Vec<FieldColumn> = keys
            .iter()
            .map(|_| FieldColumn::with_capacity(rows, per_column))
            .collect();
        let mut valid = BooleanBufferBuilder::new(rows);
        let wanted = WantedKeys::new(&keys);
        for row in 0..rows {
            let ok =
                input.is_valid(row) && extract(input.value(row), &wanted, &mut columns).is_ok();
            valid.append(ok);
            for column in &mut columns {
                column.end_row(ok);
            }
        }
        let names: ArrayRef = Arc::new(StringArray::from(TYPE_NAMES.to_vec()));
        let mut texts = Vec::with_capacity(keys.len() + 1);
        let mut types = Vec::with_capacity(keys.len());
        for column in columns {
            let (text, kind) = column.finish(&names)?;
            texts.push(text);
            types.push(kind);
        }
        let DataType::Struct(type_fields) = fields[keys.len()].data_type() else {
            return exec_err!("json_fields: unexpected return type");
        };
        texts.push(Arc::new(StructArray::try_new(
            type_fields.clone(),
            types,
            None,
        )?));
        let array =
            StructArray::try_new(fields.clone(), texts, Some(NullBuffer::new(valid.finish())))?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// One key's text and type columns as they are built, straight from the parser. Unlike a
/// `StringBuilder` it can take back the value of the row being read: a key given twice (the
/// last one counts) and a document found broken after some of its fields were read need that.
struct FieldColumn {
    offsets: Vec<i32>,
    bytes: Vec<u8>,
    /// Each row's [`TypeCode`]. The rows' validity is derived from these once the batch is
    /// read: a bit appended per row and column cost more than the pass at the end.
    codes: Vec<TypeCode>,
    /// Where the row being read starts in `bytes`: the end of the last row closed.
    start: usize,
    /// The [`TypeCode`] of the value the row being read holds.
    current: TypeCode,
}

/// A row's JSON type as one plus its index into [`TYPE_NAMES`]; [`NULL_CODE`] where the value
/// is absent or null.
type TypeCode = u8;
const NULL_CODE: TypeCode = 0;

impl FieldColumn {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            offsets,
            bytes: Vec::with_capacity(bytes),
            codes: Vec::with_capacity(rows),
            start: 0,
            current: NULL_CODE,
        }
    }

    /// The row's value is `text`, of JSON type `kind` (replacing an earlier one of the row).
    #[inline]
    fn set(&mut self, text: &str, kind: i8) {
        self.bytes.truncate(self.start);
        self.bytes.extend_from_slice(text.as_bytes());
        self.current = kind as TypeCode + 1;
    }

    /// The row's value is null (replacing an earlier one of the row).
    #[inline]
    fn set_null(&mut self) {
        self.bytes.truncate(self.start);
        self.current = NULL_CODE;
    }

    /// Closes the row: with the value read when the document was `ok`, else null.
    #[inline]
    fn end_row(&mut self, ok: bool) {
        if !ok {
            self.set_null();
        }
        self.start = self.bytes.len();
        // Exact unless the text outgrew i32, which `finish` refuses (the rows' ends only grow,
        // so the last is the largest).
        self.offsets.push(self.start as i32);
        self.codes.push(self.current);
        self.current = NULL_CODE;
    }

    /// The text column and the type column (dictionary-encoded over `names`).
    fn finish(self, names: &ArrayRef) -> Result<(ArrayRef, ArrayRef)> {
        let codes = self.codes;
        let nulls = NullBuffer::new(present(&codes));
        if i32::try_from(self.bytes.len()).is_err() {
            return exec_err!("json_fields: more than 2 GiB of text in one batch");
        }
        if names.len() != TYPE_NAMES.len() {
            return exec_err!("json_fields: the type names are not the {TYPE_NAMES:?}");
        }
        // SAFETY: the offsets start at 0, only grow (each row's end is the text's length then)
        // and fit i32 (checked above); every part of the text was copied from a `&str` whole,
        // so it is UTF-8 with each row starting on a character boundary.
        let text = unsafe {
            StringArray::new_unchecked(
                OffsetBuffer::new_unchecked(ScalarBuffer::from(self.offsets)),
                Buffer::from_vec(self.bytes),
                Some(nulls.clone()),
            )
        };
        let keys: Vec<i8> = codes
            .iter()
            .map(|&code| code.saturating_sub(1) as i8)
            .collect();
        let kinds = Int8Array::new(ScalarBuffer::from(keys), Some(nulls));
        // SAFETY: every key is a `type_of` code or 0 (under a null), all below
        // `TYPE_NAMES.len()`, the number of names (checked above).
        let kinds = unsafe { DictionaryArray::new_unchecked(kinds, names.clone()) };
        Ok((Arc::new(text), Arc::new(kinds)))
    }
}

/// A bit per code, set where the row holds a value (the code is not [`NULL_CODE`]): sixteen
/// codes at a time with SSE2 (every x86-64 processor has it); a closure per row was a visible
/// share of `json_fields`.
fn present(codes: &[TypeCode]) -> BooleanBuffer {
    #[cfg(target_arch = "x86_64")]
    {
        let mut words: Vec<u64> = Vec::with_capacity(codes.len().div_ceil(64));
        let mut chunks = codes.chunks_exact(64);
        for chunk in &mut chunks {
            let word = chunk
                .chunks_exact(16)
                .enumerate()
                .fold(0_u64, |word, (i, block)| {
                    let block = block.first_chunk::<16>().expect("chunks of 16");
                    word | u64::from(!super::sse2::zeros(block)) << (16 * i)
                });
            words.push(word);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            words.push(rest.iter().enumerate().fold(0_u64, |word, (i, &code)| {
                word | u64::from(code != NULL_CODE) << i
            }));
        }
        // Little-endian: bit i of the words is bit i % 8 of byte i / 8, as Arrow numbers them.
        BooleanBuffer::new(Buffer::from_vec(words), 0, codes.len())
    }
    #[cfg(not(target_arch = "x86_64"))]
    BooleanBuffer::collect_bool(codes.len(), |row| codes[row] != NULL_CODE)
}

// The SSE2 comparison is with zero.
const _: () = assert!(NULL_CODE == 0);

/// Sets the value of each wanted key found at the top level of `json` in its column (a null
/// value leaves the column's row null). An error when `json` is not a well-formed object.
#[inline]
fn extract(json: &str, keys: &WantedKeys<'_>, columns: &mut [FieldColumn]) -> JiterResult<()> {
    // Nearly every event is a flat object, which the flat reader takes at a fraction of the full
    // parser's cost; it gives up on anything else, and the full parser starts the row over.
    let flat = read_flat(json, keys, |i, value| {
        let column = &mut columns[i];
        match value {
            FlatValue::Null => column.set_null(),
            FlatValue::String(text) => column.set(text, STRING),
            FlatValue::Number(text) => column.set(text, NUMBER),
            FlatValue::Boolean(text) => column.set(text, BOOLEAN),
        }
    });
    if flat.is_some() {
        return Ok(());
    }
    for column in columns.iter_mut() {
        column.set_null();
    }
    extract_full(json, keys, columns)
}

/// [`extract`] with the full parser alone: any JSON document.
fn extract_full(json: &str, keys: &WantedKeys<'_>, columns: &mut [FieldColumn]) -> JiterResult<()> {
    let mut jiter = Jiter::new(json.as_bytes());
    let mut next = 0;
    let mut key = jiter.next_object()?.map(|k| keys.position(k, next));
    while let Some(wanted) = key {
        match wanted {
            Some(i) => {
                let column = &mut columns[i];
                next = i + 1;
                match jiter.peek()? {
                    Peek::Null => {
                        jiter.known_null()?;
                        column.set_null();
                    }
                    Peek::String => column.set(jiter.known_str()?, type_of(Peek::String)),
                    peek => {
                        let start = jiter.current_index();
                        jiter.known_skip(peek)?;
                        // A value other than a string begins and ends with ASCII bytes, so
                        // its slice of the (UTF-8) document is UTF-8 too.
                        let text = json.get(start..jiter.current_index()).unwrap_or_default();
                        column.set(text, type_of(peek));
                    }
                }
            }
            None => jiter.next_skip()?,
        }
        key = jiter.next_key()?.map(|k| keys.position(k, next));
    }
    jiter.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_holding_a_value_are_those_whose_code_is_not_null() {
        // Every length up to three words and a half, with codes of every kind at every place.
        for len in 0..230 {
            let codes: Vec<TypeCode> = (0..len).map(|i| ((i * 7 + len) % 4) as TypeCode).collect();
            let expected = BooleanBuffer::collect_bool(len, |row| codes[row] != NULL_CODE);
            assert_eq!(present(&codes), expected, "{len} codes");
        }
    }

    fn run(json: &str) -> Option<Vec<Option<String>>> {
        typed(json).map(|fields| fields.into_iter().map(|f| f.map(|(v, _)| v)).collect())
    }

    /// A document's fields `a`, `b`, `c`: value and JSON type, `None` where absent or null.
    type Fields = Vec<Option<(String, &'static str)>>;

    /// Each document's fields `a`, `b`, `c` (value and JSON type), or `None` for a broken one,
    /// read as one batch through the columns the function builds.
    fn batch(docs: &[&str]) -> Vec<Option<Fields>> {
        batch_of(docs, &["a", "b", "c"], extract)
    }

    type Extractor = fn(&str, &WantedKeys<'_>, &mut [FieldColumn]) -> JiterResult<()>;

    /// [`batch`] for any keys and either reader.
    fn batch_of(docs: &[&str], keys: &[&str], extract: Extractor) -> Vec<Option<Fields>> {
        let mut columns: Vec<FieldColumn> = keys
            .iter()
            .map(|_| FieldColumn::with_capacity(docs.len(), 16))
            .collect();
        let mut valid = Vec::new();
        let wanted = WantedKeys::new(keys);
        for doc in docs {
            let ok = extract(doc, &wanted, &mut columns).is_ok();
            valid.push(ok);
            for column in &mut columns {
                column.end_row(ok);
            }
        }
        let names: ArrayRef = Arc::new(StringArray::from(TYPE_NAMES.to_vec()));
        let finished: Vec<(ArrayRef, ArrayRef)> = columns
            .into_iter()
            .map(|c| c.finish(&names).unwrap())
            .collect();
        (0..docs.len())
            .map(|row| {
                valid[row].then(|| {
                    finished
                        .iter()
                        .map(|(text, kind)| {
                            let text = text.as_string::<i32>();
                            let kind = kind.as_dictionary::<arrow::datatypes::Int8Type>();
                            assert_eq!(text.is_valid(row), kind.is_valid(row));
                            text.is_valid(row).then(|| {
                                let name = TYPE_NAMES[kind.keys().value(row) as usize];
                                (text.value(row).to_string(), name)
                            })
                        })
                        .collect()
                })
            })
            .collect()
    }

    fn typed(json: &str) -> Option<Fields> {
        batch(&[json]).remove(0)
    }

    #[test]
    fn tells_each_value_its_json_type() {
        let types = |json: &str| -> Vec<Option<&'static str>> {
            typed(json)
                .unwrap()
                .into_iter()
                .map(|f| f.map(|(_, t)| t))
                .collect()
        };
        assert_eq!(
            types(r#"{"a": "1", "b": 1, "c": 1.5}"#),
            [Some("string"), Some("number"), Some("number")]
        );
        assert_eq!(
            types(r#"{"a": true, "b": [], "c": {}}"#),
            [Some("boolean"), Some("array"), Some("object")]
        );
        assert_eq!(
            types(r#"{"a": null, "c": -2e3}"#),
            [None, None, Some("number")]
        );
    }

    #[test]
    fn extracts_strings_decoded_and_other_values_as_json_text() {
        assert_eq!(
            run(r#"{"b": 12.5, "x": [1, {"a": 1}], "a": "h\u00e9", "c": null}"#),
            Some(vec![Some("hé".into()), Some("12.5".into()), None])
        );
        assert_eq!(
            run(r#"{"c": {"d": true}}"#),
            Some(vec![None, None, Some(r#"{"d": true}"#.into())])
        );
    }

    #[test]
    fn broken_json_and_non_objects_are_errors() {
        assert_eq!(run(r#"{"a": "x""#), None);
        assert_eq!(run(r#"{"a" "x"}"#), None);
        assert_eq!(run(r#"{"a": "x"}}"#), None);
        assert_eq!(run("[1]"), None);
        assert_eq!(run(""), None);
    }

    #[test]
    fn a_broken_document_or_a_repeated_key_leaves_no_trace_in_other_rows() {
        let rows = batch(&[
            r#"{"a": "first", "b": 1}"#,
            r#"{"a": "long enough to notice", "b": 2, "c": "x" "#,
            r#"{"c": "c1", "a": "a1", "a": "a2", "c": null}"#,
            r#"{"b": true}"#,
        ]);
        let value = |v: &str, t| Some((v.to_string(), t));
        assert_eq!(
            rows,
            vec![
                Some(vec![value("first", "string"), value("1", "number"), None]),
                None,
                Some(vec![value("a2", "string"), None, None]),
                Some(vec![None, value("true", "boolean"), None]),
            ]
        );
    }

    /// Valid events, the generator's malformed records, and every truncation and one-byte
    /// mutation of an event: the flat reader and the full parser must read each the same.
    #[test]
    fn the_flat_reader_reads_what_the_full_parser_reads() {
        use campaign_generator::{EventGenerator, GeneratorOptions};
        let mut generator = EventGenerator::new(GeneratorOptions {
            campaigns: 5,
            invalid_ratio: 0.5,
            out_of_order_ratio: 0.0,
            late_ratio: 0.0,
            seed: 7,
            start_time: chrono::DateTime::UNIX_EPOCH,
            spacing: chrono::TimeDelta::seconds(1),
            window: chrono::TimeDelta::minutes(1),
            allowed_lateness: chrono::TimeDelta::seconds(10),
        });
        let mut docs: Vec<String> = (0..3000)
            .filter_map(|_| String::from_utf8(generator.next_record().payload).ok())
            .collect();
        let event = docs
            .iter()
            .find(|d| d.contains("\"revenue\":0.0"))
            .expect("a valid event")
            .clone();
        for cut in 0..=event.len() {
            docs.push(event[..cut].to_string());
        }
        for at in 0..event.len() {
            for byte in [
                " ", "\n", "\"", "\\", "{", "}", "[", ",", ":", "0", "e", ".", "-", "t", "\u{1}",
                "é",
            ] {
                let mut mutated = event.clone();
                mutated.replace_range(at..at + 1, byte);
                docs.push(mutated.clone());
                mutated.insert_str(at, byte);
                docs.push(mutated);
            }
        }
        for number in [
            "0",
            "-0",
            "1.5e10",
            "1E-2",
            "2e+8",
            "123456789012345678901234567890",
            "1e400",
            "-1e-400",
            "0.000",
            "-",
            "01",
            "-01",
            "1.",
            "1e+",
            ".5",
            "+1",
            "0x10",
            "NaN",
            "Infinity",
            "1_000",
        ] {
            docs.push(format!(r#"{{"revenue":{number},"event_id":"x"}}"#));
        }
        docs.extend(
            [
                r#"{"event_id":"a\"b","user_id":"\u00e9"}"#,
                r#"{"event_id": "x", "event_id": null}"#,
                r#"{"user_id":true,"campaign_id":false,"x":nul}"#,
                r#"{"event_id":"x"} "#,
                " \t\r\n{ } ",
                "{}",
                "",
                "null",
                r#""event_id""#,
            ]
            .map(String::from),
        );
        let keys = [
            "event_id",
            "user_id",
            "campaign_id",
            "event_type",
            "platform",
            "timestamp",
            "revenue",
            "country",
            "device_type",
        ];
        let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let flat = batch_of(&docs, &keys, extract);
        let full = batch_of(&docs, &keys, extract_full);
        for ((doc, flat), full) in docs.iter().zip(&flat).zip(&full) {
            assert_eq!(flat, full, "{doc}");
        }
        // Keys the flat reader cannot match byte for byte, and one that is not ASCII.
        let odd_keys = ["a\"b", "a\\b", "é", "event_id"];
        let odd_docs = [
            r#"{"a\"b":1,"a\\b":2,"é":3,"event_id":"x"}"#,
            r#"{"a"b":1}"#,
            r#"{"a\b":1}"#,
            r#"{"\u00e9":"e","event_id":"y"}"#,
            r#"{"é":"e","a":"b"}"#,
        ];
        assert_eq!(
            batch_of(&odd_docs, &odd_keys, extract),
            batch_of(&odd_docs, &odd_keys, extract_full)
        );
        let broken = full.iter().filter(|row| row.is_none()).count();
        let wanted = WantedKeys::new(&keys);
        let read_flat = docs
            .iter()
            .filter(|d| read_flat(d, &wanted, |_, _| ()).is_some());
        let read_flat = read_flat.count();
        assert!(
            broken > 1000 && broken < docs.len() - 1000,
            "{broken} broken"
        );
        assert!(read_flat > 3000, "only {read_flat} read flat");
    }
}
