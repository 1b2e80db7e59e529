"""Materialization metadata a person reads in the UI.

Floats are rounded here, and only here (`for_people`), to `SIGNIFICANT_DIGITS` significant digits:
the UI shows 0.8333, not 0.8333333333333334. The JSON reports and files the assets write keep full
precision; the metadata is for reading and for the UI's plots.
"""

import math
from collections.abc import Mapping
from typing import Any

import dagster as dg

SIGNIFICANT_DIGITS = 4


def count_table(header: tuple[str, str], rows: list[tuple[object, object]]) -> dg.MetadataValue:
    """A two-column Markdown table: a name and a count."""
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|", *(f"| {a} | {b} |" for a, b in rows)]
    return dg.MetadataValue.md("\n".join(lines))


def readable(value: float) -> float:
    """`value` to SIGNIFICANT_DIGITS significant digits (0.8333333333333334 -> 0.8333, 1234.56 ->
    1235.0); zero, infinities and NaN as they are."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def for_people(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata with every float rounded (`readable`): plain floats, float values, and floats
    inside JSON values, dicts and lists; everything else as it is."""
    return {key: _rounded(value) for key, value in metadata.items()}


def _rounded(value: Any) -> Any:
    if isinstance(value, dg.FloatMetadataValue) and value.value is not None:
        return dg.MetadataValue.float(readable(value.value))
    if isinstance(value, dg.JsonMetadataValue):
        return dg.MetadataValue.json(_rounded_json(value.data))
    if isinstance(value, float | dict | list):
        return _rounded_json(value)
    return value


def _rounded_json(value: Any) -> Any:
    if isinstance(value, float):
        return readable(value)
    if isinstance(value, dict):
        return {key: _rounded_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded_json(item) for item in value]
    return value
