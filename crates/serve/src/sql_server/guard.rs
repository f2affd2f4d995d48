//! The endpoint only reads: statements that would change tables, the catalog or the shared
//! engine are refused with PostgreSQL's error codes before they are planned.

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Query, Set, SetExpr, Statement};
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::QueryHook;
use pgwire::api::results::Response;
use pgwire::api::ClientInfo;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

/// SQLSTATE `read_only_sql_transaction`.
const READ_ONLY: &str = "25006";
/// SQLSTATE `insufficient_privilege`.
const NOT_ALLOWED: &str = "42501";

/// Refuses every statement that is not a read, a session setting or transaction control.
#[derive(Debug)]
pub struct ReadOnly;

/// Why a statement is refused, if it is.
pub fn refusal(statement: &Statement) -> Option<ErrorInfo> {
    match statement {
        Statement::Query(query) if writes_into(query) => Some(read_only("SELECT ... INTO")),
        Statement::Query(_)
        | Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. } => None,
        Statement::Explain { statement, .. } => refusal(statement),
        Statement::Set(set) => engine_setting(set).map(|name| {
            ErrorInfo::new(
                "ERROR".into(),
                NOT_ALLOWED.into(),
                format!(
                    "{name} is a setting of the engine all clients share; it cannot be changed \
                     from a connection"
                ),
            )
        }),
        other => Some(read_only(keyword(other))),
    }
}

fn read_only(what: &str) -> ErrorInfo {
    let mut info = ErrorInfo::new(
        "ERROR".into(),
        READ_ONLY.into(),
        format!("cannot execute {what}: this endpoint is read-only"),
    );
    info.hint = Some("the pipeline writes the tables; only queries run here".into());
    info
}

/// The statement's leading keywords, for the error message.
fn keyword(statement: &Statement) -> &'static str {
    match statement {
        Statement::Insert(_) => "INSERT",
        Statement::Update { .. } => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Merge { .. } => "MERGE",
        Statement::Truncate { .. } => "TRUNCATE",
        Statement::Copy { .. } => "COPY",
        Statement::CreateTable(_) | Statement::CreateView { .. } => "CREATE",
        Statement::Drop { .. } => "DROP",
        Statement::AlterTable { .. } => "ALTER TABLE",
        _ => "this statement",
    }
}

fn writes_into(query: &Query) -> bool {
    fn body_writes(body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(select) => select.into.is_some(),
            SetExpr::Query(query) => writes_into(query),
            SetExpr::SetOperation { left, right, .. } => body_writes(left) || body_writes(right),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                true
            }
            _ => false,
        }
    }
    body_writes(&query.body)
}

/// The variable a SET changes when it is one of DataFusion's own (`datafusion.*`), which live
/// in the session every connection shares.
fn engine_setting(set: &Set) -> Option<String> {
    let name = match set {
        Set::SingleAssignment { variable, .. } => variable.to_string(),
        Set::ParenthesizedAssignments { variables, .. } => variables
            .iter()
            .map(|v| v.to_string())
            .find(|v| v.to_lowercase().starts_with("datafusion."))?,
        _ => return None,
    };
    name.to_lowercase()
        .starts_with("datafusion.")
        .then_some(name)
}

fn refused(statement: &Statement) -> Option<PgWireError> {
    refusal(statement).map(|info| PgWireError::UserError(Box::new(info)))
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refused(statement).map(Err)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        refused(statement).map(Err)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refused(statement).map(Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn code(sql: &str) -> Option<String> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect(sql);
        refusal(&statements[0]).map(|info| info.code)
    }

    #[test]
    fn reads_and_session_statements_pass_and_everything_else_is_refused() {
        for sql in [
            "SELECT 1",
            "WITH t AS (SELECT 1) SELECT * FROM t",
            "EXPLAIN SELECT 1",
            "SHOW search_path",
            "SET extra_float_digits = 3",
            "SET TIME ZONE 'UTC'",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
        ] {
            assert_eq!(code(sql), None, "{sql}");
        }
        for sql in [
            "INSERT INTO campaign_events VALUES (1)",
            "UPDATE campaign_events SET revenue = 0",
            "DELETE FROM campaign_events",
            "CREATE TABLE t (a INT)",
            "CREATE VIEW v AS SELECT 1",
            "DROP TABLE campaign_events",
            "SELECT 1 INTO t",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "COPY campaign_events TO '/tmp/x'",
            "TRUNCATE campaign_events",
        ] {
            assert_eq!(code(sql).as_deref(), Some(READ_ONLY), "{sql}");
        }
        assert_eq!(
            code("SET datafusion.execution.target_partitions = 1").as_deref(),
            Some(NOT_ALLOWED)
        );
    }
}
