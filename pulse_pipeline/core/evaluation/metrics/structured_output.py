"""Structured output: JSON answers (call analysis, segment review) checked field by field.

A prediction counts as JSON only when the whole string (surrounding whitespace aside) parses as
a JSON object; fenced or prefixed JSON is invalid. References are JSON objects; an example whose
reference is not one is skipped by every key. Leaves compare as follows: strings stripped and
case-insensitively, numbers (not booleans) within 1e-6, booleans exactly, lists as sets of
normalized strings, null against null or an absent field, an empty object against an empty object
(`core/evaluation/json_fields.py`, shared with the production-accuracy watch).

- `json_valid`: share of predictions that parse as a JSON object.
- `field_accuracy`: over every leaf of every reference (nested objects flattened by path), the
  share the prediction gets right, pooled over examples; an invalid prediction gets all wrong.
- `sentiment_accuracy`, `quality_accuracy`: the top-level `sentiment` and `quality` fields.
- `topics_f1`: set F1 of `topics`, over examples whose reference has a non-empty topics list.
- `action_detected_accuracy`, `quality_impact_accuracy`: read at the top level or under
  `assessment`, in the reference and in the prediction alike.
- `timestamp_error_seconds`: mean absolute error of `timestamp_start` / `timestamp_end` over the
  references that have them and the predictions that give finite numbers for all of them;
  `timestamp_missing_rate`: share of those references whose prediction gives no usable timestamps.

Each key averages only the examples whose reference has the field, and is None when none does.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import datasets
import evaluate

from pulse_pipeline.core.evaluation.json_fields import MISSING as _MISSING
from pulse_pipeline.core.evaluation.json_fields import flatten, leaf_correct, lookup
from pulse_pipeline.core.evaluation.json_fields import is_number as _is_number
from pulse_pipeline.core.evaluation.json_fields import norm_str as _norm_str

_DESCRIPTION = """Validity and field-level accuracy of JSON answers against JSON reference objects."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers (strings, expected to be JSON objects).
    references: list of reference answers (strings holding JSON objects).
    Other keyword arguments are accepted and ignored.
Returns:
    json_valid, field_accuracy, sentiment_accuracy, quality_accuracy, topics_f1,
    action_detected_accuracy, quality_impact_accuracy, timestamp_missing_rate: shares in 0..1;
    timestamp_error_seconds: mean absolute error in seconds. None where no example applies.
"""

_TIMESTAMPS = ("timestamp_start", "timestamp_end")
_ACCURACY_FIELDS = {
    "sentiment_accuracy": ("sentiment", False),
    "quality_accuracy": ("quality", False),
    "action_detected_accuracy": ("action_detected", True),
    "quality_impact_accuracy": ("quality_impact", True),
}  # key -> (field, also looked up under "assessment")


def parse_object(text: str) -> dict[str, Any] | None:
    """The JSON object in `text`, or None when it is not exactly one JSON object."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _field(obj: dict[str, Any] | None, name: str, nested: bool) -> Any:
    value = lookup(obj, (name,))
    if value is _MISSING and nested:
        value = lookup(obj, ("assessment", name))
    return value


def set_f1(predicted: set[str], reference: set[str]) -> float:
    """F1 of two sets (1.0 when both are empty)."""
    if not predicted or not reference:
        return float(predicted == reference)
    overlap = len(predicted & reference)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def _topics(value: Any) -> set[str]:
    return {_norm_str(v) for v in value} if isinstance(value, list) else set()


def timestamp_error(pred: dict[str, Any] | None, ref: dict[str, Any]) -> tuple[bool, float | None]:
    """(whether the reference has timestamps, mean absolute error of the prediction's or None
    when it gives no finite number for one of them)."""
    names = [n for n in _TIMESTAMPS if _is_number(_field(ref, n, True))]
    if not names:
        return False, None
    predicted = [_field(pred, n, True) for n in names]
    if not all(_is_number(v) for v in predicted):
        return True, None
    errors = [abs(float(p) - float(_field(ref, n, True))) for p, n in zip(predicted, names, strict=True)]
    return True, sum(errors) / len(errors)


@lru_cache(maxsize=65536)
def score_example(prediction: str, reference: str) -> dict[str, Any] | None:
    """Per-example outcomes: {key: value or None when the reference lacks the field}, plus the
    leaf counts. None when the reference is not a JSON object. Treat the result as read-only."""
    ref = parse_object(reference)
    if ref is None:
        return None
    pred = parse_object(prediction)
    leaves = flatten(ref)
    out: dict[str, Any] = {
        "json_valid": float(pred is not None),
        "leaves": len(leaves),
        "leaves_right": sum(leaf_correct(v, lookup(pred, path)) for path, v in leaves.items()),
    }
    for key, (name, nested) in _ACCURACY_FIELDS.items():
        expected = _field(ref, name, nested)
        out[key] = None if expected is _MISSING else float(leaf_correct(expected, _field(pred, name, nested)))
    ref_topics = _topics(ref.get("topics"))
    out["topics_f1"] = set_f1(_topics(_field(pred, "topics", False)), ref_topics) if ref_topics else None
    out["has_timestamps"], out["timestamp_error"] = timestamp_error(pred, ref)
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(scored: list[dict[str, Any]]) -> dict[str, float | None]:
    """The result keys from per-example outcomes."""
    leaves = sum(s["leaves"] for s in scored)
    timestamps = [s["timestamp_error"] for s in scored if s["has_timestamps"]]
    usable = [t for t in timestamps if t is not None]
    result: dict[str, float | None] = {
        "json_valid": _mean([s["json_valid"] for s in scored]),
        "field_accuracy": sum(s["leaves_right"] for s in scored) / leaves if leaves else None,
    }
    for key in (*_ACCURACY_FIELDS, "topics_f1"):
        result[key] = _mean([s[key] for s in scored if s[key] is not None])
    result["timestamp_error_seconds"] = _mean(usable)
    missing = len(timestamps) - len(usable)
    result["timestamp_missing_rate"] = missing / len(timestamps) if timestamps else None
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class StructuredOutput(evaluate.Metric):
    """JSON validity, field accuracy and the call-analysis fields."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(
        self, predictions: list[str], references: list[str], **kwargs: Any
    ) -> dict[str, float | None]:
        scored = [score_example(p, r) for p, r in zip(predictions, references, strict=True)]
        return aggregate([s for s in scored if s is not None])
