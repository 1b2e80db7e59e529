"""Materialization metadata a person reads in the UI."""

import dagster as dg


def count_table(header: tuple[str, str], rows: list[tuple[object, object]]) -> dg.MetadataValue:
    """A two-column Markdown table: a name and a count."""
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|", *(f"| {a} | {b} |" for a, b in rows)]
    return dg.MetadataValue.md("\n".join(lines))
