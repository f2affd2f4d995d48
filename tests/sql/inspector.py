"""What a BI tool's table browser learns of the endpoint: SQLAlchemy's PostgreSQL inspector.

usage: inspector.py URL SCHEMA
Runs every inspector call Superset makes when a user browses a schema or creates a dataset from
a table (its own SQLAlchemy and psycopg2), on each table of SCHEMA, and prints the answers as
JSON. Any call that fails fails the script, naming the call.
"""
import json
import sys

import sqlalchemy
from sqlalchemy import create_engine, inspect


def call(name, fn, *args):
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - the name of the failing call is the point
        sys.exit(f"inspector.{name}{args!r} failed: {err}")


def main():
    url, schema = sys.argv[1], sys.argv[2]
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    inspector = inspect(engine)
    tables = {}
    names = call("get_table_names", inspector.get_table_names, schema)
    for table in names:
        columns = call("get_columns", inspector.get_columns, table, schema)
        tables[table] = {
            "columns": [
                {
                    "name": c["name"],
                    "type": str(c["type"]),
                    "timezone": getattr(c["type"], "timezone", None),
                    "nullable": c["nullable"],
                }
                for c in columns
            ],
            "pk": call("get_pk_constraint", inspector.get_pk_constraint, table, schema),
            "foreign_keys": call("get_foreign_keys", inspector.get_foreign_keys, table, schema),
            "indexes": call("get_indexes", inspector.get_indexes, table, schema),
            "unique": call(
                "get_unique_constraints", inspector.get_unique_constraints, table, schema
            ),
            "checks": call(
                "get_check_constraints", inspector.get_check_constraints, table, schema
            ),
            "comment": call("get_table_comment", inspector.get_table_comment, table, schema),
            "has_table": call("has_table", inspector.has_table, table, schema),
        }
    print(
        json.dumps(
            {
                "sqlalchemy": sqlalchemy.__version__,
                "schemas": call("get_schema_names", inspector.get_schema_names),
                "default_schema": inspector.default_schema_name,
                "tables": names,
                "views": call("get_view_names", inspector.get_view_names, schema),
                "foreign_tables": call(
                    "get_foreign_table_names", inspector.get_foreign_table_names, schema
                ),
                "details": tables,
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
