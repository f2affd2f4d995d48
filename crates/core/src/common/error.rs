//! One line for an error and its causes.
//!
//! Each error type here says what it was doing and keeps the error that stopped it as its
//! `source`, without repeating that cause in its own message; this module writes the chain as
//! one line. Some foreign errors (iceberg's, DataFusion's) already print their cause, so a
//! cause whose text the line already holds is left out rather than said twice.

use std::error::Error;
use std::fmt;

/// `what failed: why: the root cause`, each cause once.
pub fn join_causes<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut line = String::new();
    for error in chain {
        let text = error.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

/// An error and its causes, displayed as one line by [`join_causes`].
pub struct Causes<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chain = std::iter::successors(Some(self.0), cause_of);
        f.write_str(&join_causes(chain))
    }
}

fn cause_of<'a>(error: &&'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
    (*error).source()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {file}")]
    struct Outer {
        file: &'static str,
        #[source]
        source: Middle,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("decoding the header: {source}")]
    struct Middle {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_appears_once() {
        let error = Outer {
            file: "a.arrow",
            source: Middle {
                source: std::io::Error::other("unexpected end of file"),
            },
        };
        assert_eq!(
            Causes(&error).to_string(),
            "reading a.arrow: decoding the header: unexpected end of file"
        );
    }
}
