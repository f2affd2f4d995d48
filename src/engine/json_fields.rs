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

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int8Array, StringArray, StringBuilder, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{exec_err, plan_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use jiter::{Jiter, JiterResult, Peek};

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

/// The JSON type of a value that is not null, as an index into [`TYPE_NAMES`].
fn type_of(peek: Peek) -> i8 {
    match peek {
        Peek::String => 0,
        Peek::True | Peek::False => 2,
        Peek::Array => 3,
        Peek::Object => 4,
        _ => 1,
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
        let mut builders: Vec<StringBuilder> = keys
            .iter()
            .map(|_| StringBuilder::with_capacity(rows, rows * 16))
            .collect();
        let mut type_keys: Vec<Vec<Option<i8>>> =
            keys.iter().map(|_| Vec::with_capacity(rows)).collect();
        let mut valid = Vec::with_capacity(rows);
        // Reused across rows: one buffer per key, so the loop allocates nothing per row.
        let mut values: Vec<String> = keys.iter().map(|_| String::with_capacity(64)).collect();
        let mut types: Vec<Option<i8>> = vec![None; keys.len()];
        for row in 0..rows {
            types.iter_mut().for_each(|t| *t = None);
            let ok = input.is_valid(row)
                && extract(input.value(row).as_bytes(), &keys, &mut values, &mut types).is_ok();
            valid.push(ok);
            for (i, (builder, type_keys)) in builders.iter_mut().zip(&mut type_keys).enumerate() {
                let kind = types[i].filter(|_| ok);
                match kind {
                    Some(_) => builder.append_value(&values[i]),
                    None => builder.append_null(),
                }
                type_keys.push(kind);
            }
        }
        let mut columns: Vec<ArrayRef> = builders
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let names: ArrayRef = Arc::new(StringArray::from(TYPE_NAMES.to_vec()));
        let type_columns = type_keys
            .into_iter()
            .map(|keys| {
                DictionaryArray::try_new(Int8Array::from(keys), names.clone())
                    .map(|array| Arc::new(array) as ArrayRef)
            })
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
        let DataType::Struct(type_fields) = fields[keys.len()].data_type() else {
            return exec_err!("json_fields: unexpected return type");
        };
        columns.push(Arc::new(StructArray::try_new(
            type_fields.clone(),
            type_columns,
            None,
        )?));
        let array = StructArray::try_new(fields.clone(), columns, Some(NullBuffer::from(valid)))?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// Fills `values[i]` and `types[i]` for each wanted key found at the top level of `json` (a
/// null value leaves `types[i]` as `None`).
fn extract(
    json: &[u8],
    keys: &[&str],
    values: &mut [String],
    types: &mut [Option<i8>],
) -> JiterResult<()> {
    let mut jiter = Jiter::new(json);
    let mut key = jiter
        .next_object()?
        .map(|k| keys.iter().position(|w| *w == k));
    while let Some(wanted) = key {
        match wanted {
            Some(i) => {
                let peek = jiter.peek()?;
                let value = &mut values[i];
                value.clear();
                match peek {
                    Peek::Null => {
                        jiter.known_null()?;
                        types[i] = None;
                    }
                    Peek::String => {
                        value.push_str(jiter.known_str()?);
                        types[i] = Some(type_of(peek));
                    }
                    _ => {
                        let start = jiter.current_index();
                        jiter.known_skip(peek)?;
                        value.push_str(&String::from_utf8_lossy(jiter.slice_to_current(start)));
                        types[i] = Some(type_of(peek));
                    }
                }
            }
            None => jiter.next_skip()?,
        }
        key = jiter.next_key()?.map(|k| keys.iter().position(|w| *w == k));
    }
    jiter.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(json: &str) -> Option<Vec<Option<String>>> {
        typed(json).map(|fields| fields.into_iter().map(|f| f.map(|(v, _)| v)).collect())
    }

    fn typed(json: &str) -> Option<Vec<Option<(String, &'static str)>>> {
        let keys = ["a", "b", "c"];
        let mut values = vec![String::new(); 3];
        let mut types = vec![None; 3];
        extract(json.as_bytes(), &keys, &mut values, &mut types).ok()?;
        Some(
            (0..3)
                .map(|i| types[i].map(|t| (values[i].clone(), TYPE_NAMES[t as usize])))
                .collect(),
        )
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
}
