//! A request body split into events, each kept as the exact bytes the app sent.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One event of a request: its bytes as sent, and the key it is produced under.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The event's JSON text, byte for byte as it was in the body.
    pub bytes: &'a [u8],
    /// Its `campaign_id` (a string's value or a number's text), so that one campaign's events
    /// share a partition; `None` when it has no readable one: produced unkeyed, the parsing
    /// SQL dead-letters it.
    pub key: Option<Cow<'a, str>>,
}

/// Why a body holds no events to produce.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Nothing but whitespace.
    #[error(
        "the body is empty: send one JSON object, a JSON array of objects or one object per line"
    )]
    Empty,
    /// Not JSON where an event should be.
    #[error("the body is not JSON at line {line}, column {column}: {message}")]
    NotJson {
        line: usize,
        column: usize,
        message: String,
    },
}

/// The events of `body`: one JSON value, a JSON array of values, or values separated by
/// whitespace (newline-delimited JSON). Anything but a JSON value fails the whole body, so
/// that an app learns of it at once; a value that is not an event (no object, no
/// `campaign_id`) is the parsing SQL's to reject.
pub fn split(body: &[u8]) -> Result<Vec<Event<'_>>, BodyError> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(BodyError::Empty)?;
    let raws: Vec<&RawValue> = if body[start] == b'[' {
        serde_json::from_slice(body).map_err(not_json)?
    } else {
        serde_json::Deserializer::from_slice(body)
            .into_iter::<&RawValue>()
            .collect::<Result<_, _>>()
            .map_err(not_json)?
    };
    Ok(raws
        .into_iter()
        .map(|raw| Event {
            bytes: raw.get().as_bytes(),
            key: campaign_id(raw),
        })
        .collect())
}

fn not_json(error: serde_json::Error) -> BodyError {
    BodyError::NotJson {
        line: error.line(),
        column: error.column(),
        message: error.to_string(),
    }
}

/// The `campaign_id` of an event, if it is an object with a string or number there.
fn campaign_id(raw: &RawValue) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Keyed<'a> {
        #[serde(borrow, default)]
        campaign_id: Option<&'a RawValue>,
    }
    if !raw.get().starts_with('{') {
        return None;
    }
    let id = serde_json::from_str::<Keyed<'_>>(raw.get())
        .ok()?
        .campaign_id?;
    let text = id.get();
    if text.starts_with('"') {
        serde_json::from_str::<Cow<'_, str>>(text).ok()
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Some(Cow::Borrowed(text))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &str) -> Vec<(String, Option<String>)> {
        split(body.as_bytes())
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    String::from_utf8(e.bytes.to_vec()).unwrap(),
                    e.key.map(|k| k.into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn one_object_an_array_and_lines_give_the_events_byte_for_byte() {
        let one = r#"{"campaign_id": "c1",  "x": 1.50}"#;
        assert_eq!(texts(one), vec![(one.to_string(), Some("c1".into()))]);
        let array = r#" [ {"campaign_id":"c1"} ,{"campaign_id":"c2","n":[1, 2]}]"#;
        assert_eq!(
            texts(array),
            vec![
                (r#"{"campaign_id":"c1"}"#.into(), Some("c1".into())),
                (
                    r#"{"campaign_id":"c2","n":[1, 2]}"#.into(),
                    Some("c2".into())
                ),
            ]
        );
        let lines = "{\"campaign_id\":\"c1\"}\n{\"campaign_id\":\"c2\"}\r\n\n{\"a\":1}\n";
        assert_eq!(
            texts(lines),
            vec![
                (r#"{"campaign_id":"c1"}"#.into(), Some("c1".into())),
                (r#"{"campaign_id":"c2"}"#.into(), Some("c2".into())),
                (r#"{"a":1}"#.into(), None),
            ]
        );
    }

    #[test]
    fn keys_are_read_where_there_is_one_and_left_out_otherwise() {
        let body = r#"[{"campaign_id":"caf\u00e9"},{"campaign_id":42},{"campaign_id":null},{"campaign_id":{"a":1}},7,"text",{"campaign_id":"c","campaign_id2":1}]"#;
        let keys: Vec<_> = texts(body).into_iter().map(|(_, k)| k).collect();
        assert_eq!(
            keys,
            vec![
                Some("café".into()),
                Some("42".into()),
                None,
                None,
                None,
                None,
                Some("c".into())
            ]
        );
    }

    #[test]
    fn what_is_not_json_fails_the_body_naming_where() {
        assert_eq!(split(b"  \n"), Err(BodyError::Empty));
        let Err(BodyError::NotJson { line, .. }) = split(b"{\"a\":1}\n{\"a\":\n") else {
            panic!("a broken second line is not JSON");
        };
        assert_eq!(line, 3);
        assert!(matches!(
            split(b"[{\"a\":1},"),
            Err(BodyError::NotJson { .. })
        ));
        assert!(matches!(split(b"hello"), Err(BodyError::NotJson { .. })));
        assert!(matches!(
            split(b"{\"campaign_id\":\"\xff\"}"),
            Err(BodyError::NotJson { .. })
        ));
    }
}
