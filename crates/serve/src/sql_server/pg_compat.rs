//! PostgreSQL's catalog as BI tools read it, where datafusion-pg-catalog 0.17 (the newest for
//! DataFusion 53) falls short. Each piece names the client that needs it:
//!
//! - `pg_attribute.atttypid` of a timestamp with a time zone is `timestamptz` (1184), not
//!   `text`: SQLAlchemy's `get_columns` (Superset's dataset columns and time filters).
//! - `pg_type_is_visible(oid)`: SQLAlchemy's `get_columns` (its domain and enum lookups).
//! - `pg_index` and `pg_constraint` with PostgreSQL's array columns (`indkey`, `conkey`, ...),
//!   empty, because Iceberg tables have no indexes or constraints: SQLAlchemy's
//!   `get_pk_constraint`, `get_indexes`, `get_unique_constraints`, `get_foreign_keys`.
//! - `pg_class.reloptions`: SQLAlchemy's `get_indexes`.
//! - `generate_subscripts(array, 1)`: SQLAlchemy's `get_pk_constraint`.
//! - `to_timestamp(text, 'YYYY-MM-DD HH24:MI:SS.US')` with PostgreSQL's template patterns:
//!   Superset's time-range filter.
//! - A boolean compared with a quoted literal (`ix.indisprimary = 'f'`), which PostgreSQL reads
//!   as a boolean and DataFusion refuses: SQLAlchemy's `get_indexes` ([`BooleanLiterals`]).
//!
//! The tables are an overlay on the library's `pg_catalog` schema (which accepts no table of
//! its own); the functions that cannot be plain functions (a set-returning one, a template
//! language) are rewritten in the statement by [`PgCompat`], a query hook.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ParamValues};
use datafusion::config::ConfigOptions;
use datafusion::datasource::{MemTable, ViewTable};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr::BinaryExpr;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{create_udf, ColumnarValue, LogicalPlan, Volatility};
use datafusion::logical_expr::{lit, Expr as LogicalExpr, ExprSchemable, Operator};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Statement, Value,
    ValueWithSpan, VisitMut, VisitorMut,
};
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::QueryHook;
use pgwire::api::portal::Format;
use pgwire::api::results::Response;
use pgwire::api::ClientInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::types::format::FormatOptions;

/// PostgreSQL's oid of `timestamp with time zone`.
const TIMESTAMPTZ_OID: i32 = 1184;

/// Adds the functions and replaces the `pg_catalog` tables listed at the top of this module;
/// call after `setup_pg_catalog`.
pub async fn extend(ctx: &SessionContext, catalog: &str) -> Result<()> {
    ctx.register_udf(create_udf(
        "pg_type_is_visible",
        // Oids are int in this catalog; a literal oid is a bigint, which int columns widen to.
        vec![DataType::Int64],
        DataType::Boolean,
        Volatility::Stable,
        // Every type is in a schema on the search path: the endpoint has no user types.
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    ));
    let catalog_provider = ctx
        .catalog(catalog)
        .ok_or_else(|| DataFusionError::Plan(format!("no catalog {catalog}")))?;
    let inner = catalog_provider
        .schema("pg_catalog")
        .ok_or_else(|| DataFusionError::Plan("pg_catalog is not set up".into()))?;
    let mut replaced: HashMap<&'static str, Arc<dyn TableProvider>> = HashMap::new();
    replaced.insert("pg_attribute", attributes_view(ctx, catalog).await?);
    replaced.insert("pg_class", classes_view(ctx).await?);
    replaced.insert("pg_index", empty(pg_index_schema())?);
    replaced.insert("pg_constraint", empty(pg_constraint_schema())?);
    catalog_provider
        .register_schema("pg_catalog", Arc::new(PgCatalogOverlay { inner, replaced }))?;
    Ok(())
}

/// `pg_attribute` with the type of timestamp-with-time-zone columns corrected (the library
/// maps them to text), read from DataFusion's own `information_schema.columns`.
async fn attributes_view(ctx: &SessionContext, catalog: &str) -> Result<Arc<dyn TableProvider>> {
    let inner = ctx.table("pg_catalog.pg_attribute").await?;
    let columns: Vec<String> = inner
        .schema()
        .fields()
        .iter()
        .map(|field| match field.name().as_str() {
            // Arrow writes a zoned timestamp type as `Timestamp(µs, "UTC")`, a naive one
            // without the comma.
            "atttypid" => format!(
                "CASE WHEN col.data_type LIKE 'Timestamp(%, %' THEN \
                 CAST({TIMESTAMPTZ_OID} AS INT) ELSE a.atttypid END AS atttypid"
            ),
            name => format!("a.\"{name}\""),
        })
        .collect();
    let catalog = catalog.replace('\'', "''");
    let sql = format!(
        "SELECT {} FROM pg_catalog.pg_attribute a \
         LEFT JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN (SELECT table_schema, table_name, column_name, data_type \
                    FROM information_schema.columns WHERE table_catalog = '{catalog}') col \
           ON col.table_schema = n.nspname AND col.table_name = c.relname \
           AND col.column_name = a.attname",
        columns.join(", ")
    );
    view(ctx, &sql).await
}

/// `pg_class` with `reloptions` (NULL: no storage options).
async fn classes_view(ctx: &SessionContext) -> Result<Arc<dyn TableProvider>> {
    view(
        ctx,
        "SELECT *, CAST(NULL AS VARCHAR[]) AS reloptions FROM pg_catalog.pg_class",
    )
    .await
}

/// A view over the tables as they are now (before the overlay replaces any of them).
async fn view(ctx: &SessionContext, sql: &str) -> Result<Arc<dyn TableProvider>> {
    let plan = ctx.sql(sql).await?.into_unoptimized_plan();
    Ok(Arc::new(ViewTable::new(plan, Some(sql.to_string()))))
}

fn empty(schema: SchemaRef) -> Result<Arc<dyn TableProvider>> {
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

fn int2_array() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Int16, true)))
}

fn oid_array() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Int32, true)))
}

/// PostgreSQL 15's `pg_index` (oids as this library writes them: int).
fn pg_index_schema() -> SchemaRef {
    let oid = || DataType::Int32;
    let columns = [
        ("indexrelid", oid()),
        ("indrelid", oid()),
        ("indnatts", DataType::Int16),
        ("indnkeyatts", DataType::Int16),
        ("indisunique", DataType::Boolean),
        ("indnullsnotdistinct", DataType::Boolean),
        ("indisprimary", DataType::Boolean),
        ("indisexclusion", DataType::Boolean),
        ("indimmediate", DataType::Boolean),
        ("indisclustered", DataType::Boolean),
        ("indisvalid", DataType::Boolean),
        ("indcheckxmin", DataType::Boolean),
        ("indisready", DataType::Boolean),
        ("indislive", DataType::Boolean),
        ("indisreplident", DataType::Boolean),
        ("indkey", int2_array()),
        ("indcollation", oid_array()),
        ("indclass", oid_array()),
        ("indoption", int2_array()),
        ("indexprs", DataType::Utf8),
        ("indpred", DataType::Utf8),
    ];
    schema(&columns)
}

/// PostgreSQL 15's `pg_constraint`.
fn pg_constraint_schema() -> SchemaRef {
    let oid = || DataType::Int32;
    let text = || DataType::Utf8;
    let columns = [
        ("oid", oid()),
        ("conname", text()),
        ("connamespace", oid()),
        ("contype", text()),
        ("condeferrable", DataType::Boolean),
        ("condeferred", DataType::Boolean),
        ("convalidated", DataType::Boolean),
        ("conrelid", oid()),
        ("contypid", oid()),
        ("conindid", oid()),
        ("conparentid", oid()),
        ("confrelid", oid()),
        ("confupdtype", text()),
        ("confdeltype", text()),
        ("confmatchtype", text()),
        ("conislocal", DataType::Boolean),
        ("coninhcount", DataType::Int32),
        ("connoinherit", DataType::Boolean),
        ("conkey", int2_array()),
        ("confkey", int2_array()),
        ("conpfeqop", oid_array()),
        ("conppeqop", oid_array()),
        ("conffeqop", oid_array()),
        ("confdelsetcols", int2_array()),
        ("conexclop", oid_array()),
        ("conbin", text()),
    ];
    schema(&columns)
}

fn schema(columns: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, data_type)| Field::new(*name, data_type.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// The library's `pg_catalog` with some tables replaced.
#[derive(Debug)]
struct PgCatalogOverlay {
    inner: Arc<dyn SchemaProvider>,
    replaced: HashMap<&'static str, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for PgCatalogOverlay {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.replaced.get(name) {
            Some(table) => Ok(Some(table.clone())),
            None => self.inner.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.replaced.contains_key(name) || self.inner.table_exist(name)
    }
}

/// Rewrites what BI tools send that DataFusion has no function for into what it has, and runs
/// the statement when it changed anything.
#[derive(Debug)]
pub struct PgCompat;

impl PgCompat {
    /// The statement with the rewrites applied, if any applied.
    fn rewritten(statement: &Statement) -> Option<Statement> {
        // Queries only: the other statements have hooks of their own (cursors, SET, SHOW).
        if !matches!(statement, Statement::Query(_)) {
            return None;
        }
        let mut rewritten = statement.clone();
        let mut rewriter = Rewriter { changed: false };
        let _ = rewritten.visit(&mut rewriter);
        rewriter.changed.then_some(rewritten)
    }
}

#[async_trait]
impl QueryHook for PgCompat {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let rewritten = Self::rewritten(statement)?;
        Some(run(&rewritten, session_context, client).await)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let rewritten = Self::rewritten(statement)?;
        let plan = session_context
            .state()
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                rewritten,
            )))
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)));
        Some(plan)
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        // The plan made at parse time already holds the rewrite; the usual path runs it.
        None
    }
}

async fn run(
    statement: &Statement,
    ctx: &SessionContext,
    client: &mut dyn HookClient,
) -> PgWireResult<Response> {
    let df = ctx
        .sql(&statement.to_string())
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let response = encode_dataframe(df, &Format::UnifiedText, Some(options)).await?;
    Ok(Response::Query(response))
}

struct Rewriter {
    changed: bool,
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> std::ops::ControlFlow<()> {
        let Expr::Function(function) = expr else {
            return std::ops::ControlFlow::Continue(());
        };
        let name = function.name.to_string().to_lowercase();
        let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
        match name {
            "to_timestamp" => {
                if let Some(template) = template_argument(function) {
                    *template = chrono_format(template);
                    self.changed = true;
                }
            }
            "generate_subscripts" => {
                if let Some(subscripts) = subscripts_of(function) {
                    *expr = subscripts;
                    self.changed = true;
                }
            }
            _ => {}
        }
        std::ops::ControlFlow::Continue(())
    }
}

fn arguments(function: &mut Function) -> Option<Vec<&mut Expr>> {
    let FunctionArguments::List(list) = &mut function.args else {
        return None;
    };
    list.args
        .iter_mut()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Some(expr),
            _ => None,
        })
        .collect()
}

/// The template of `to_timestamp(text, 'template')` when it is written in PostgreSQL's
/// patterns (DataFusion's own takes chrono's `%Y`-style formats, which pass unchanged).
fn template_argument(function: &mut Function) -> Option<&mut String> {
    let mut args = arguments(function)?;
    if args.len() != 2 {
        return None;
    }
    match args.pop()? {
        Expr::Value(ValueWithSpan {
            value: Value::SingleQuotedString(template),
            ..
        }) if !template.contains('%') => Some(template),
        _ => None,
    }
}

/// `generate_subscripts(array, 1)` as `unnest(range(1, array_length(array, 1) + 1))`
/// (DataFusion's `array_length` is unsigned; `range` takes signed bounds).
fn subscripts_of(function: &mut Function) -> Option<Expr> {
    let args = arguments(function)?;
    let [array, dimension] = <[&mut Expr; 2]>::try_from(args).ok()?;
    let array = array.to_string();
    let dimension = dimension.to_string();
    let sql = format!("unnest(range(1, CAST(array_length({array}, {dimension}) AS BIGINT) + 1))");
    datafusion::sql::sqlparser::parser::Parser::new(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
    )
    .try_with_sql(&sql)
    .ok()?
    .parse_expr()
    .ok()
}

/// A PostgreSQL `to_timestamp` template as a chrono format: the patterns BI tools send
/// (`YYYY MM DD HH24 HH12 HH MI SS MS US AM PM`); other characters are literal.
pub fn chrono_format(template: &str) -> String {
    const PATTERNS: [(&str, &str); 13] = [
        ("YYYY", "%Y"),
        ("HH24", "%H"),
        ("HH12", "%I"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("HH", "%I"),
        ("MI", "%M"),
        ("SS", "%S"),
        ("MS", "%3f"),
        ("US", "%6f"),
        ("AM", "%p"),
        ("PM", "%p"),
        ("YY", "%y"),
    ];
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    'outer: while !rest.is_empty() {
        for (pattern, format) in PATTERNS {
            if rest.starts_with(pattern) {
                out.push_str(format);
                rest = &rest[pattern.len()..];
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// PostgreSQL reads a quoted literal compared with a boolean as a boolean (`'f'`, `'true'`,
/// `'on'`, ...); this analyzer rule, placed before DataFusion's type coercion, does the same.
#[derive(Debug)]
pub struct BooleanLiterals;

impl BooleanLiterals {
    /// DataFusion's analyzer rules with this one first.
    pub fn with_default_rules() -> Vec<Arc<dyn AnalyzerRule + Send + Sync>> {
        let mut rules: Vec<Arc<dyn AnalyzerRule + Send + Sync>> = vec![Arc::new(BooleanLiterals)];
        rules.extend(datafusion::optimizer::Analyzer::new().rules);
        rules
    }
}

impl AnalyzerRule for BooleanLiterals {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| {
            let schema = merge_schema(&plan.inputs());
            plan.map_expressions(|expr| {
                expr.transform_up(|expr| Ok(boolean_comparison(expr, &schema)))
            })
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "postgres_boolean_literals"
    }
}

/// `expr` with a quoted boolean literal on either side of a comparison with a boolean read as
/// a boolean.
fn boolean_comparison(expr: LogicalExpr, schema: &DFSchema) -> Transformed<LogicalExpr> {
    let LogicalExpr::BinaryExpr(binary) = expr else {
        return Transformed::no(expr);
    };
    if !matches!(
        binary.op,
        Operator::Eq | Operator::NotEq | Operator::IsDistinctFrom | Operator::IsNotDistinctFrom
    ) {
        return Transformed::no(LogicalExpr::BinaryExpr(binary));
    }
    let is_boolean = |e: &LogicalExpr| matches!(e.get_type(schema), Ok(DataType::Boolean));
    let BinaryExpr { left, op, right } = binary;
    match (boolean_literal(&right), boolean_literal(&left)) {
        (Some(value), _) if is_boolean(&left) => Transformed::yes(LogicalExpr::BinaryExpr(
            BinaryExpr::new(left, op, Box::new(lit(value))),
        )),
        (_, Some(value)) if is_boolean(&right) => Transformed::yes(LogicalExpr::BinaryExpr(
            BinaryExpr::new(Box::new(lit(value)), op, right),
        )),
        _ => Transformed::no(LogicalExpr::BinaryExpr(BinaryExpr { left, op, right })),
    }
}

/// The value of a quoted literal as PostgreSQL's boolean input reads it.
fn boolean_literal(expr: &LogicalExpr) -> Option<bool> {
    let LogicalExpr::Literal(ScalarValue::Utf8(Some(text)) | ScalarValue::Utf8View(Some(text)), _) =
        expr
    else {
        return None;
    };
    match text.trim().to_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_boolean_compared_with_a_quoted_literal_reads_it_as_postgres_does() {
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .with_analyzer_rules(BooleanLiterals::with_default_rules())
            .build();
        let ctx = SessionContext::new_with_state(state);
        let rows = ctx
            .sql(
                "SELECT count(*) AS n FROM (VALUES (true, 'f'), (false, 'f'), (false, 't')) AS v(b, c) \
                 WHERE b = 'f' AND c = 'f'",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n = rows[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>();
        assert_eq!(
            n.map(|n| n.value(0)),
            Some(1),
            "text compared with text stays text"
        );
    }

    #[test]
    fn postgres_templates_become_chrono_formats() {
        assert_eq!(
            chrono_format("YYYY-MM-DD HH24:MI:SS.US"),
            "%Y-%m-%d %H:%M:%S.%6f"
        );
        assert_eq!(chrono_format("YYYY-MM-DD"), "%Y-%m-%d");
        assert_eq!(chrono_format("DD/MM/YY HH12:MI AM"), "%d/%m/%y %I:%M %p");
    }

    fn rewrite(sql: &str) -> String {
        let statement = datafusion::sql::sqlparser::parser::Parser::parse_sql(
            &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
            sql,
        )
        .unwrap()
        .remove(0);
        PgCompat::rewritten(&statement)
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn superset_time_filters_and_sqlalchemy_subscripts_are_rewritten_others_left_alone() {
        assert_eq!(
            rewrite(
                "SELECT count(*) FROM t WHERE ts >= TO_TIMESTAMP('2020-01-01 00:00:00.000000', \
                 'YYYY-MM-DD HH24:MI:SS.US')"
            ),
            "SELECT count(*) FROM t WHERE ts >= TO_TIMESTAMP('2020-01-01 00:00:00.000000', \
             '%Y-%m-%d %H:%M:%S.%6f')"
        );
        assert_eq!(
            rewrite("SELECT unnest(ix.indkey) AS attnum, generate_subscripts(ix.indkey, 1) AS ord FROM pg_index AS ix"),
            "SELECT unnest(ix.indkey) AS attnum, unnest(range(1, CAST(array_length(ix.indkey, 1) AS BIGINT) + 1)) AS ord FROM pg_index AS ix"
        );
        assert_eq!(rewrite("SELECT to_timestamp('2020', '%Y')"), "");
        assert_eq!(rewrite("SELECT 1"), "");
    }
}
