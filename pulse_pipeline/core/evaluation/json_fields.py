"""JSON answers compared leaf by leaf: shared by the `structured_output` metric (test sets) and the
production-accuracy watch (live corrections), so both judge a field the same way.

Leaves compare as follows: strings stripped and case-insensitively, numbers (not booleans) within
1e-6, booleans exactly, lists as sets of normalized strings, null against null or an absent field,
an empty object against an empty object. Light on purpose: no `evaluate` or `datasets` import.
"""

from __future__ import annotations

import json
import math
from typing import Any

MISSING = object()  # a field the prediction does not have
TOLERANCE = 1e-6


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def norm_str(value: Any) -> str:
    if isinstance(value, str):
        return value.strip().casefold()
    return json.dumps(value, sort_keys=True)


def leaf_correct(reference: Any, prediction: Any) -> bool:
    """Whether `prediction` gets the reference leaf `reference` right."""
    if isinstance(reference, bool):
        return isinstance(prediction, bool) and prediction == reference
    if is_number(reference):
        return is_number(prediction) and abs(prediction - reference) <= TOLERANCE
    if isinstance(reference, str):
        return isinstance(prediction, str) and norm_str(prediction) == norm_str(reference)
    if isinstance(reference, list):
        return isinstance(prediction, list) and {norm_str(v) for v in prediction} == {
            norm_str(v) for v in reference
        }
    if reference is None:
        return prediction is None or prediction is MISSING
    if isinstance(reference, dict):  # an empty object (non-empty ones are flattened)
        return prediction == {}
    return prediction == reference


def flatten(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Leaves of a JSON object by path; an empty nested object is a leaf."""
    leaves: dict[tuple[str, ...], Any] = {}
    for key, value in obj.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            leaves.update(flatten(value, path))
        else:
            leaves[path] = value
    return leaves


def lookup(obj: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    """The value at `path` in `obj`, or the MISSING sentinel."""
    value: Any = obj
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value
