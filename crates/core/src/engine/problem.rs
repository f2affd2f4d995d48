//! A problem found in a SQL file, located by file, line and column.

use std::fmt;
use std::path::PathBuf;

use datafusion::error::DataFusionError;

/// One problem in one SQL file; displays as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlProblem {
    /// The SQL file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SqlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, ":{line}:{column}")?,
            (Some(line), None) => write!(f, ":{line}")?,
            _ => {}
        }
        write!(f, ": {}", self.message)
    }
}

impl SqlProblem {
    /// A problem about the file as a whole (no position).
    pub fn whole_file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    /// Locates a DataFusion error in `sql`: by its diagnostic span, by the `Line: L, Column: C`
    /// that parser errors carry, or by the first occurrence of the identifier it names.
    pub fn from_datafusion(file: impl Into<PathBuf>, sql: &str, err: &DataFusionError) -> Self {
        let message = clean_message(err);
        let mut problem = Self::whole_file(file, message);
        if let Some(span) = err.diagnostic().and_then(|d| d.span) {
            if span.start.line > 0 {
                problem.line = Some(span.start.line);
                problem.column = Some(span.start.column);
                return problem;
            }
        }
        let text = err.to_string();
        if let Some((line, column)) = parser_position(&text) {
            problem.line = Some(line);
            problem.column = Some(column);
        } else if let Some(ident) = quoted_identifier(&text) {
            if let Some((line, column)) = find_identifier(sql, &ident) {
                problem.line = Some(line);
                problem.column = Some(column);
            }
        }
        problem
    }
}

/// The innermost useful message, without DataFusion's layered prefixes and backtraces.
fn clean_message(err: &DataFusionError) -> String {
    let text = match err.diagnostic() {
        Some(d) => d.message.clone(),
        None => err.find_root().to_string(),
    };
    let text = text
        .trim_start_matches("SQL error: ")
        .trim_start_matches("Schema error: ")
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("ParserError(\"")
        .trim_end_matches("\")");
    // Parser messages carry their position, which the problem shows separately.
    match text.rfind(" at Line: ") {
        Some(pos) => text[..pos].to_string(),
        None => text.to_string(),
    }
}

/// `... at Line: 3, Column: 15` as printed by sqlparser.
fn parser_position(text: &str) -> Option<(u64, u64)> {
    let after = &text[text.rfind("Line: ")? + "Line: ".len()..];
    let (line, rest) = after.split_once(',')?;
    let column = rest.trim_start().strip_prefix("Column: ")?;
    let column: String = column.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

/// The first identifier an error message quotes, such as `no_such_col` in
/// `No field named no_such_col` or `'no_such_col'`.
fn quoted_identifier(text: &str) -> Option<String> {
    if let Some(pos) = text.find("No field named ") {
        let rest = &text[pos + "No field named ".len()..];
        let ident: String = rest
            .trim_start_matches('"')
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        let ident = ident.rsplit('.').next().unwrap_or_default().to_string();
        return (!ident.is_empty()).then_some(ident);
    }
    let start = text.find(['\'', '"'])?;
    let quote = text[start..].chars().next()?;
    let rest = &text[start + 1..];
    let end = rest.find(quote)?;
    let ident = &rest[..end];
    (!ident.is_empty()).then(|| ident.to_string())
}

/// First whole-word occurrence of `ident` in `sql` outside `--` comments, as (line, column).
fn find_identifier(sql: &str, ident: &str) -> Option<(u64, u64)> {
    for (index, line) in sql.lines().enumerate() {
        let code = line.split("--").next().unwrap_or_default();
        let mut from = 0;
        while let Some(pos) = code[from..].find(ident) {
            let start = from + pos;
            let end = start + ident.len();
            let before = code[..start].chars().next_back();
            let after = code[end..].chars().next();
            let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            if !is_word(before) && !is_word(after) {
                return Some((index as u64 + 1, code[..start].chars().count() as u64 + 1));
            }
            from = end;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_parser_position() {
        assert_eq!(
            parser_position("Expected: end of statement, found: FORM at Line: 3, Column: 15"),
            Some((3, 15))
        );
    }

    #[test]
    fn finds_identifiers_outside_comments() {
        let sql = "-- uses foo\nSELECT a,\n  foo_bar, foo\nFROM t";
        assert_eq!(find_identifier(sql, "foo"), Some((3, 12)));
    }
}
