//! Finds the tumbling window in the metrics SQL: `date_bin(INTERVAL '1 minute', "timestamp")`.
//! The window size lives only in the SQL; the runner reads it from there with sqlparser.

use std::ops::ControlFlow;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{
    visit_expressions, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// The form the runner recognises, shown when it finds none.
pub const EXPECTED_FORM: &str = "GROUP BY ..., date_bin(INTERVAL '1 minute', \"timestamp\")";

/// A tumbling event-time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window length.
    pub size: Duration,
    /// Event-time column the window bins.
    pub time_column: String,
}

/// Why no window could be read from the SQL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowSpecError {
    /// The SQL does not parse.
    #[error("cannot parse the metrics SQL: {0}")]
    Parse(String),
    /// No `date_bin(INTERVAL ..., column)` call.
    #[error("the metrics SQL has no tumbling window; write one as {EXPECTED_FORM}")]
    Missing,
    /// A `date_bin` call whose arguments are not an interval literal and a column.
    #[error(
        "date_bin must have an INTERVAL literal and a column, as in {EXPECTED_FORM}; found {0}"
    )]
    Unrecognised(String),
    /// Several `date_bin` calls that disagree.
    #[error(
        "the metrics SQL bins by two different windows ({0} and {1}); use one size and one column"
    )]
    Conflicting(String, String),
}

impl WindowSpec {
    /// Reads the window from metrics SQL text.
    pub fn from_sql(sql: &str) -> Result<Self, WindowSpecError> {
        let statements = Parser::parse_sql(&GenericDialect {}, sql)
            .map_err(|e| WindowSpecError::Parse(e.to_string()))?;
        let mut found: Option<(WindowSpec, String)> = None;
        let mut problem: Option<WindowSpecError> = None;
        let _ = visit_expressions(&statements, |expr| {
            let Expr::Function(function) = expr else {
                return ControlFlow::<()>::Continue(());
            };
            if !function.name.to_string().eq_ignore_ascii_case("date_bin") {
                return ControlFlow::Continue(());
            }
            let text = expr.to_string();
            match window_of(&function.args) {
                Some(spec) => match &found {
                    Some((first, first_text)) if *first != spec => {
                        problem = Some(WindowSpecError::Conflicting(first_text.clone(), text));
                        return ControlFlow::Break(());
                    }
                    Some(_) => {}
                    None => found = Some((spec, text)),
                },
                None => {
                    problem = Some(WindowSpecError::Unrecognised(text));
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        if let Some(problem) = problem {
            return Err(problem);
        }
        found.map(|(spec, _)| spec).ok_or(WindowSpecError::Missing)
    }
}

fn window_of(args: &FunctionArguments) -> Option<WindowSpec> {
    let FunctionArguments::List(list) = args else {
        return None;
    };
    let exprs: Vec<&Expr> = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect::<Option<_>>()?;
    // date_bin(stride, source) or date_bin(stride, source, origin): only the epoch origin keeps
    // windows aligned the way the runner closes them, so an explicit origin is not accepted.
    let [Expr::Interval(interval), column] = exprs.as_slice() else {
        return None;
    };
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            _ => return None,
        },
        _ => return None,
    };
    let text = match &interval.leading_field {
        Some(unit) => format!("{text} {unit}"),
        None => text,
    };
    let size = parse_interval(&text)?;
    let time_column = match column {
        Expr::Identifier(ident) => ident.value.clone(),
        Expr::CompoundIdentifier(parts) => parts.last()?.value.clone(),
        _ => return None,
    };
    (!size.is_zero()).then_some(WindowSpec { size, time_column })
}

/// `'1 minute'`, `'30 seconds'`, `'2 hours'`, `'1 day'`, `'500 milliseconds'`, `'1m'`.
fn parse_interval(text: &str) -> Option<Duration> {
    let compact: String = text.split_whitespace().collect::<Vec<_>>().join("");
    humantime::parse_duration(&compact.to_ascii_lowercase()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shipped_metrics_sql() {
        let sql = include_str!("../../sql/campaign_metrics.sql");
        let spec = WindowSpec::from_sql(sql).unwrap();
        assert_eq!(spec.size, Duration::from_secs(60));
        assert_eq!(spec.time_column, "timestamp");
    }

    #[test]
    fn reads_other_sizes_and_forms() {
        let spec = |sql: &str| WindowSpec::from_sql(sql).map(|s| s.size);
        assert_eq!(
            spec("SELECT date_bin(INTERVAL '30 seconds', ts) FROM t GROUP BY 1"),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            spec("SELECT 1 FROM t GROUP BY date_bin(INTERVAL '5' MINUTE, t.ts)"),
            Ok(Duration::from_secs(300))
        );
        assert_eq!(
            spec("SELECT 1 FROM t GROUP BY date_bin(INTERVAL '2 hours', ts)"),
            Ok(Duration::from_secs(7200))
        );
    }

    #[test]
    fn refuses_missing_unrecognised_and_conflicting_windows() {
        assert_eq!(
            WindowSpec::from_sql("SELECT count(*) FROM t GROUP BY campaign_id"),
            Err(WindowSpecError::Missing)
        );
        assert!(matches!(
            WindowSpec::from_sql("SELECT 1 FROM t GROUP BY date_bin(some_col, ts)"),
            Err(WindowSpecError::Unrecognised(_))
        ));
        assert!(matches!(
            WindowSpec::from_sql("SELECT date_bin(INTERVAL '1 minute', ts) FROM t GROUP BY date_bin(INTERVAL '2 minutes', ts)"),
            Err(WindowSpecError::Conflicting(_, _))
        ));
        let message = WindowSpecError::Missing.to_string();
        assert!(
            message.contains("date_bin(INTERVAL '1 minute'"),
            "{message}"
        );
    }
}
