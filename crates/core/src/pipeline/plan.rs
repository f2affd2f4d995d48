//! Planning a pipeline's two SQL files against their input schemas, without Kafka or tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::config::Dialect;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;

use crate::common::{
    is_internal_column, kafka_records_schema, table_schema, ERROR_COLUMN, KAFKA_RECORDS_TABLE,
    SOURCE_COLUMNS,
};
use crate::config::{Config, PipelineConfig};
use crate::engine::{BatchSlot, SqlProblem};
use crate::window::aggregate::SplitAggregate;
use crate::window::{WindowError, WindowOperator, WindowSpec};

/// A SQL file's path and text.
#[derive(Debug, Clone)]
pub struct SqlFile {
    /// Path as resolved from the configuration.
    pub path: PathBuf,
    /// The file's contents.
    pub text: String,
}

impl SqlFile {
    /// Reads a SQL file, reporting an unreadable one as a problem.
    pub fn read(path: &Path) -> Result<Self, SqlProblem> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| SqlProblem::whole_file(path, format!("cannot read: {err}")))?;
        if text.trim().is_empty() {
            return Err(SqlProblem::whole_file(
                path,
                "the file holds no SQL statement",
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            text,
        })
    }
}

/// Both SQL files of a pipeline, planned once.
#[derive(Debug, Clone)]
pub struct PlannedSql {
    /// Plan of the parsing SQL over `kafka_records`.
    pub parse: LogicalPlan,
    /// Full output schema of the parsing SQL, `_` columns included.
    pub parse_output: SchemaRef,
    /// Schema of the events table: parsing output without `_` columns.
    pub events_schema: SchemaRef,
    /// Plan of the metrics SQL over the parsed events.
    pub metrics: LogicalPlan,
    /// Schema of the metrics table: metrics output without `_` columns.
    pub metrics_schema: SchemaRef,
    /// The table `kafka_records` is planned over (a stage gives each execution its own input).
    pub records_slot: Arc<BatchSlot>,
    /// The table the metrics SQL's input is planned over (likewise).
    pub events_slot: Arc<BatchSlot>,
    /// The tumbling window written in the metrics SQL.
    pub window: WindowSpec,
}

/// Plans both SQL files of `pipeline`; on failure returns every problem found, each located.
pub async fn plan_pipeline(
    config: &Config,
    pipeline: &PipelineConfig,
    ctx: &SessionContext,
) -> Result<PlannedSql, Vec<SqlProblem>> {
    let mut problems = Vec::new();
    let parse_file = SqlFile::read(&config.resolve(&pipeline.sql.parse));
    let metrics_file = SqlFile::read(&config.resolve(&pipeline.sql.metrics));

    let records_slot = BatchSlot::new(kafka_records_schema());
    register(ctx, &records_slot, KAFKA_RECORDS_TABLE);
    let mut events_slot = None;
    let parse = match &parse_file {
        Ok(file) => match plan_file(ctx, file).await {
            Ok(plan) => {
                let output = Arc::new(plan.schema().as_arrow().clone());
                let before = problems.len();
                check_parse_output(file, &output, &mut problems);
                check_partition_columns(
                    file,
                    &output,
                    &pipeline.sink.events_table.partition_by,
                    &mut problems,
                );
                (problems.len() == before).then_some((plan, output))
            }
            Err(problem) => {
                problems.push(problem);
                None
            }
        },
        Err(problem) => {
            problems.push(problem.clone());
            None
        }
    };

    let metrics = match (&metrics_file, &parse) {
        (Ok(file), Some((_, parse_output))) => {
            let slot = BatchSlot::new(table_schema(parse_output));
            register(ctx, &slot, &pipeline.sink.events_table.name);
            events_slot = Some(slot);
            match plan_file(ctx, file).await {
                Ok(plan) => {
                    let output = Arc::new(plan.schema().as_arrow().clone());
                    check_partition_columns(
                        file,
                        &output,
                        &pipeline.sink.metrics_table.partition_by,
                        &mut problems,
                    );
                    Some((plan, output))
                }
                Err(problem) => {
                    problems.push(problem);
                    None
                }
            }
        }
        (Ok(file), None) => {
            // Its input schema is unknown without a valid parsing SQL; still catch syntax errors.
            if let Err(err) = ctx.state().sql_to_statement(&file.text, &Dialect::Generic) {
                problems.push(SqlProblem::from_datafusion(&file.path, &file.text, &err));
            }
            None
        }
        (Err(problem), _) => {
            problems.push(problem.clone());
            None
        }
    };

    let window = match &metrics_file {
        Ok(file) => match WindowSpec::from_sql(&file.text) {
            Ok(window) => Some(window),
            Err(err) => {
                let mut problem = SqlProblem::whole_file(&file.path, err.to_string());
                if let Some((line, column)) = err.location() {
                    problem.line = Some(line);
                    problem.column = Some(column);
                }
                // An interval DataFusion could not read is already reported on that line.
                let known = problems
                    .iter()
                    .any(|p| p.file == problem.file && p.line.is_some() && p.line == problem.line);
                if !known {
                    problems.push(problem);
                }
                None
            }
        },
        Err(_) => None,
    };

    match (parse, metrics, events_slot, window) {
        (
            Some((parse, parse_output)),
            Some((metrics, metrics_output)),
            Some(events_slot),
            Some(window),
        ) if problems.is_empty() => Ok(PlannedSql {
            parse,
            events_schema: table_schema(&parse_output),
            parse_output,
            metrics,
            metrics_schema: table_schema(&metrics_output),
            records_slot,
            events_slot,
            window,
        }),
        _ => Err(problems),
    }
}

async fn plan_file(ctx: &SessionContext, file: &SqlFile) -> Result<LogicalPlan, SqlProblem> {
    let state = ctx.state();
    let statement = state
        .sql_to_statement(&file.text, &Dialect::Generic)
        .map_err(|err| SqlProblem::from_datafusion(&file.path, &file.text, &err))?;
    if !matches!(
        &statement,
        datafusion::sql::parser::Statement::Statement(s)
            if matches!(s.as_ref(), datafusion::sql::sqlparser::ast::Statement::Query(_))
    ) {
        return Err(SqlProblem::whole_file(
            &file.path,
            "must hold exactly one SELECT query (possibly with WITH clauses)",
        ));
    }
    state
        .statement_to_plan(statement)
        .await
        .map_err(|err| SqlProblem::from_datafusion(&file.path, &file.text, &err))
}

fn register(ctx: &SessionContext, slot: &Arc<BatchSlot>, name: &str) {
    // Only fails on an invalid name, which the configuration's validation excludes.
    if let Err(err) = slot.register(ctx, name) {
        tracing::warn!("registering table {name} failed: {err}");
    }
}

fn check_parse_output(file: &SqlFile, output: &Schema, problems: &mut Vec<SqlProblem>) {
    match output.field_with_name(ERROR_COLUMN) {
        Ok(field) if matches!(field.data_type(), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) => {}
        Ok(field) => problems.push(SqlProblem::whole_file(
            &file.path,
            format!("column `{ERROR_COLUMN}` must be a string (the reason a row is rejected), not {}", field.data_type()),
        )),
        Err(_) => problems.push(SqlProblem::whole_file(
            &file.path,
            format!("must return a column `{ERROR_COLUMN}`: NULL for a valid row, else the reason it is rejected"),
        )),
    }
    for column in SOURCE_COLUMNS {
        if output.field_with_name(column).is_err() {
            problems.push(SqlProblem::whole_file(
                &file.path,
                format!("must pass `{column}` through from kafka_records (it locates rejected rows and tracks progress)"),
            ));
        }
    }
    if !output
        .fields()
        .iter()
        .any(|f| !is_internal_column(f.name()))
    {
        problems.push(SqlProblem::whole_file(
            &file.path,
            "returns no table column (every column starts with `_`)",
        ));
    }
}

fn check_partition_columns(
    file: &SqlFile,
    output: &Schema,
    partition_by: &[String],
    problems: &mut Vec<SqlProblem>,
) {
    for column in partition_by {
        if is_internal_column(column) || output.field_with_name(column).is_err() {
            problems.push(SqlProblem::whole_file(
                &file.path,
                format!("partition column `{column}` (from pipelines.yaml) is not among the columns it returns"),
            ));
        }
    }
}

/// The window operator of a planned pipeline, with empty state: the metrics SQL's aggregate
/// split into its phases (also how `check` proves the SQL can run incrementally).
pub async fn window_operator(
    ctx: &SessionContext,
    planned: &PlannedSql,
    allowed_lateness: std::time::Duration,
    idle_timeout: std::time::Duration,
) -> Result<WindowOperator, WindowError> {
    let split = split_metrics(ctx, planned).await?;
    operator_of(split, planned, allowed_lateness, idle_timeout)
}

/// The metrics SQL's aggregate split into its phases.
pub async fn split_metrics(
    ctx: &SessionContext,
    planned: &PlannedSql,
) -> Result<SplitAggregate, WindowError> {
    SplitAggregate::new(ctx, &planned.metrics)
        .await
        .map_err(|e| match e {
            datafusion::error::DataFusionError::Plan(message) => WindowError::Unsupported(message),
            other => WindowError::Sql(other),
        })
}

/// A window operator with empty state over `split`.
pub fn operator_of(
    split: SplitAggregate,
    planned: &PlannedSql,
    allowed_lateness: std::time::Duration,
    idle_timeout: std::time::Duration,
) -> Result<WindowOperator, WindowError> {
    WindowOperator::new(
        split,
        &planned.window,
        planned.events_schema.clone(),
        allowed_lateness,
        idle_timeout,
    )
}
