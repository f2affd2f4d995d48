"""Reads one table through an Iceberg catalog with PyIceberg, an independent reader, and prints
its rows as JSON lines (timestamps as microseconds since the epoch, decimals as text), for the
tests to compare with what campaign-pipeline reads.

Usage: python read_table.py '<catalog properties as JSON>' <namespace> <table>
"""

import json
import sys

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import load_catalog


def comparable(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column in types that print the same way from any reader."""
    if pa.types.is_timestamp(column.type):
        return pc.cast(column, pa.int64())
    if pa.types.is_decimal(column.type):
        return pc.cast(column, pa.string())
    return column


def main() -> None:
    properties, namespace, name = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    # A SQL catalog's rows carry the name the catalog was opened under.
    catalog = load_catalog(properties.pop("name", "independent"), **properties)
    rows = catalog.load_table((namespace, name)).scan().to_arrow()
    rows = pa.table({field.name: comparable(rows[field.name]) for field in rows.schema})
    for row in rows.to_pylist():
        print(json.dumps(row, sort_keys=True))


if __name__ == "__main__":
    main()
