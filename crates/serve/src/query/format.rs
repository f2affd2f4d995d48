//! Query results as a table, CSV or JSON.

use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// How `query` prints rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// A JSON array of objects, one per row.
    Json,
}

/// The rows in the chosen format.
pub fn render(batches: &[RecordBatch], format: OutputFormat) -> Result<String, ArrowError> {
    match format {
        OutputFormat::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string()),
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for batch in batches {
                    writer.write(batch)?;
                }
            }
            String::from_utf8(out).map_err(|e| ArrowError::CsvError(e.to_string()))
        }
        OutputFormat::Json => {
            let mut out = Vec::new();
            {
                let mut writer = arrow::json::ArrayWriter::new(&mut out);
                for batch in batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
            }
            if out.is_empty() {
                return Ok("[]".into());
            }
            String::from_utf8(out).map_err(|e| ArrowError::JsonError(e.to_string()))
        }
    }
}
