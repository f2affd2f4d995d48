//! PyIceberg as an independent reader of the tables (`scripts/pyiceberg.sh install` puts it in
//! place), and the rows campaign-pipeline reads in the same form, to compare.

use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};

fn python() -> PathBuf {
    super::installed("PYICEBERG_PYTHON", "pyiceberg.sh", "python")
}

/// The rows of `namespace.table` as PyIceberg reads them through a catalog with `properties`
/// (PyIceberg's catalog properties), sorted.
pub fn read(properties: &serde_json::Value, namespace: &str, table: &str) -> Vec<String> {
    let output = Command::new(python())
        .arg(super::repo_root().join("tests/pyiceberg/read_table.py"))
        .arg(properties.to_string())
        .args([namespace, table])
        .output()
        .expect("run PyIceberg");
    assert!(
        output.status.success(),
        "PyIceberg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rows: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(canonical)
        .collect();
    rows.sort();
    rows
}

/// The rows of `batches` in the form the PyIceberg reader prints (timestamps as microseconds,
/// decimals as text, keys sorted, nulls written), sorted.
pub fn comparable(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for batch in batches {
        let (fields, columns): (Vec<Field>, Vec<_>) = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| {
                let data_type = match field.data_type() {
                    DataType::Timestamp(..) => DataType::Int64,
                    DataType::Decimal128(..) => DataType::Utf8,
                    other => other.clone(),
                };
                let column = cast(column, &data_type).expect("cast");
                (Field::new(field.name(), data_type, true), column)
            })
            .unzip();
        let batch = RecordBatch::try_new(Schema::new(fields).into(), columns).expect("batch");
        let mut writer = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(Vec::new());
        writer.write(&batch).expect("json");
        writer.finish().expect("json");
        let text = String::from_utf8(writer.into_inner()).expect("utf-8");
        rows.extend(text.lines().map(canonical));
    }
    rows.sort();
    rows
}

/// One JSON row with its keys sorted and numbers as serde_json prints them.
fn canonical(line: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).expect("a JSON row");
    let sorted: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_value(value).expect("a JSON object");
    serde_json::to_string(&sorted).expect("json")
}

/// The namespace of the test pipeline configured in `config`.
pub fn namespace(config: &Path) -> String {
    let config = campaign_pipeline::config::Config::load(config).expect("config");
    config.pipelines[0].sink.namespace.clone()
}
