//! Schema changes between a table and the SQL that feeds it: a new SQL column becomes a new
//! optional table column; a change Iceberg cannot make (narrowing or changing a type, losing a
//! required column) is refused with the column named and the ways out.

use arrow::datatypes::Schema as ArrowSchema;
use iceberg::spec::{PrimitiveType, Schema, Type};

use super::table::iceberg_schema;
use super::SinkError;
use crate::common::table_schema;

/// The columns (name, type) to add to a table so it can hold the SQL's output, or why it never can.
pub fn columns_to_add(
    label: &str,
    table: &Schema,
    sql_output: &ArrowSchema,
) -> Result<Vec<(String, Type)>, SinkError> {
    let wanted = iceberg_schema(label, &table_schema(sql_output))?;
    let refuse = |message: String| SinkError::Schema {
        table: label.to_string(),
        message,
    };
    let mut additions = Vec::new();
    for field in wanted.as_struct().fields() {
        match table.field_by_name(&field.name) {
            None => additions.push((field.name.clone(), (*field.field_type).clone())),
            Some(existing) if !fits(&field.field_type, &existing.field_type) => {
                return Err(refuse(format!(
                    "column `{}` is {} in the table but the SQL now returns {}; Iceberg cannot \
                     change a column's type that way. Either cast it back in the SQL \
                     (CAST(... AS {})), or return the new type under a new column name (the \
                     table gains it), or drop the table and run `campaign-pipeline setup` to \
                     create it anew (its rows are lost)",
                    field.name,
                    existing.field_type,
                    field.field_type,
                    sql_type_name(&existing.field_type),
                )));
            }
            Some(_) => {}
        }
    }
    for existing in table.as_struct().fields() {
        if existing.required && wanted.field_by_name(&existing.name).is_none() {
            return Err(refuse(format!(
                "the SQL no longer returns column `{}`, which the table requires (NOT NULL); \
                 return it again (e.g. a constant), or drop the table and run \
                 `campaign-pipeline setup` to create it anew (its rows are lost)",
                existing.name
            )));
        }
    }
    Ok(additions)
}

/// Whether values of type `sql` can be written into a column of type `table` without loss:
/// the same type, or one of Iceberg's allowed promotions.
fn fits(sql: &Type, table: &Type) -> bool {
    use PrimitiveType as P;
    match (sql, table) {
        (Type::Primitive(a), Type::Primitive(b)) => match (a, b) {
            (P::Int, P::Long) | (P::Float, P::Double) => true,
            (
                P::Decimal {
                    precision: p1,
                    scale: s1,
                },
                P::Decimal {
                    precision: p2,
                    scale: s2,
                },
            ) => s1 == s2 && p1 <= p2,
            _ => a == b,
        },
        _ => sql == table,
    }
}

/// The SQL spelling of an Iceberg type, for the suggested cast.
fn sql_type_name(data_type: &Type) -> String {
    match data_type {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => "BOOLEAN".into(),
            PrimitiveType::Int => "INT".into(),
            PrimitiveType::Long => "BIGINT".into(),
            PrimitiveType::Float => "REAL".into(),
            PrimitiveType::Double => "DOUBLE".into(),
            PrimitiveType::Decimal { precision, scale } => format!("DECIMAL({precision}, {scale})"),
            PrimitiveType::Date => "DATE".into(),
            PrimitiveType::Timestamp | PrimitiveType::TimestampNs => "TIMESTAMP".into(),
            PrimitiveType::Timestamptz | PrimitiveType::TimestamptzNs => "TIMESTAMPTZ".into(),
            PrimitiveType::String => "VARCHAR".into(),
            other => other.to_string().to_uppercase(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field};

    use super::*;

    fn table() -> Schema {
        let sql = ArrowSchema::new(vec![
            Field::new("campaign_id", DataType::Utf8, true),
            Field::new("clicks", DataType::Int64, true),
            Field::new("revenue", DataType::Float64, true),
        ]);
        iceberg_schema("t", &sql).expect("schema")
    }

    #[test]
    fn new_columns_are_added_and_widening_is_accepted() {
        let sql = ArrowSchema::new(vec![
            Field::new("campaign_id", DataType::Utf8View, true),
            Field::new("clicks", DataType::Int32, true),
            Field::new("revenue", DataType::Float64, true),
            Field::new("avg_revenue", DataType::Float64, true),
            Field::new("_partition", DataType::Int32, true),
        ]);
        let added = columns_to_add("t", &table(), &sql).expect("compatible");
        assert_eq!(
            added,
            vec![(
                "avg_revenue".to_string(),
                Type::Primitive(PrimitiveType::Double)
            )]
        );
    }

    #[test]
    fn a_type_change_is_refused_naming_the_column() {
        let sql = ArrowSchema::new(vec![
            Field::new("campaign_id", DataType::Utf8, true),
            Field::new("clicks", DataType::Float64, true),
        ]);
        let err = columns_to_add("t", &table(), &sql).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("`clicks`"), "{text}");
        assert!(text.contains("CAST(... AS BIGINT)"), "{text}");
    }
}
