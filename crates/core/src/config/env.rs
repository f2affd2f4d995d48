//! `${ENV_VAR}` expansion for configuration strings, so secrets stay out of pipelines.yaml.
//!
//! Expansion happens while deserializing each string value (not on the raw file text), so a
//! reference inside a YAML comment is never expanded and an error keeps the key's path and line.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// Expands `${NAME}` and `${NAME:-default}` references; `$$` stands for a literal `$`.
///
/// An unset variable without a default is an error that names it.
pub fn expand(input: &str) -> Result<String, String> {
    expand_with(input, |name| std::env::var(name).ok())
}

/// Expansion against any variable lookup (the process environment in production).
pub fn expand_with(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
            let reference = &body[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{reference}}}` is not a valid variable reference"
                ));
            }
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (referenced as `${{{name}}}`; \
                         set it, or write `${{{name}:-default}}`)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Serde helper: a string with `${ENV_VAR}` references expanded.
pub fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let raw = String::deserialize(deserializer)?;
    expand(&raw).map_err(serde::de::Error::custom)
}

/// Serde helper: an optional string with `${ENV_VAR}` references expanded.
pub fn opt_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|raw| expand(&raw).map_err(serde::de::Error::custom))
        .transpose()
}

/// Serde helper: a string map (client properties) with every value expanded.
pub fn string_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_yaml::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Bool(b) => b.to_string(),
                serde_yaml::Value::Number(n) => n.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "property `{key}` must be a string, number or boolean, not {other:?}"
                    )))
                }
            };
            let value = expand(&text).map_err(serde::de::Error::custom)?;
            Ok((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_string())
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(expand_with("a-${SET}-b", lookup).unwrap(), "a-value-b");
        assert_eq!(expand_with("${UNSET:-x:9092}", lookup).unwrap(), "x:9092");
        assert_eq!(
            expand_with("cost $$5 and $x", lookup).unwrap(),
            "cost $5 and $x"
        );
    }

    #[test]
    fn unset_variable_is_named_in_the_error() {
        let err = expand_with("${KAFKA_PASSWORD}", lookup).unwrap_err();
        assert!(err.contains("`KAFKA_PASSWORD` is not set"), "{err}");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(expand_with("${OPEN", lookup).is_err());
        assert!(expand_with("${BAD-NAME}", lookup).is_err());
    }
}
