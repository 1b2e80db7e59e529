"""What a report shows, built once for both renderers, and metric values written for people.

`build_view` turns the results dict into what a report shows (still unescaped), so the Markdown and HTML
renderers never disagree; every section is optional: a missing or empty key leaves its section out, a
None value reads "n/a". `format_value` and `format_delta` write a metric the way a person reads it (91.0%, 4.00 ms,
+4.0 pp), and `as_number`, `as_dict` and `as_list` read the loosely typed results without raising.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

RATE_SUFFIXES = (
    "accuracy", "recall", "precision", "f1", "rate", "presence", "validity", "consistency",
    "exact_match", "token_f1", "json_valid", "field_accuracy", "macro_f1",
)  # fmt: skip
MAX_FLIPPED = 10  # flipped examples shown in a report
MAX_TEXT = 120  # characters of an example's text shown in a table cell
TOP_CONFUSIONS = 5  # (true, predicted) pairs listed in the text


# --- numbers for people ---------------------------------------------------------------------------


def metric_kind(metric: str) -> str:
    """How a metric reads: "rate" (0..1), "seconds", "error" (MAE, RMSE), "score" (0..100) or "number"."""
    key = metric.lower()
    tokens = set(re.split(r"[^a-z0-9]+", key))
    if "seconds" in tokens or key.endswith("seconds"):
        return "seconds"
    if tokens & {"mae", "rmse", "mse"}:
        return "error"
    if tokens & {"bleu", "chrf"}:
        return "score"
    if key.endswith(RATE_SUFFIXES):
        return "rate"
    return "number"


def lower_is_better(metric: str) -> bool:
    """The default direction when a comparison row does not say: the metric modules' own."""
    from pulse_pipeline.core.evaluation.metrics import higher_is_better

    return not higher_is_better(metric)


def as_number(value: Any) -> float | None:
    """A finite float, or None for None, NaN, infinities, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _decimals(magnitude: float, significant: int = 3) -> int:
    """Decimals that show `significant` digits of the largest magnitude (0 to 6)."""
    if magnitude <= 0:
        return 0
    return min(6, max(0, significant - 1 - math.floor(math.log10(magnitude))))


def _seconds(value: float) -> str:
    scale, unit = (1000.0, "ms") if abs(value) < 1 else (1.0, "s")
    scaled = value * scale
    return f"{scaled:.{_decimals(abs(scaled))}f} {unit}"


def format_value(metric: str, value: Any) -> str:
    """One metric value as a person reads it: 91.0%, 4.00 ms, 27.4 (BLEU), 0.812 (MAE), n/a."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    number = as_number(value)
    if number is None:
        return "n/a" if value is None or isinstance(value, numbers.Real) else str(value)
    kind = metric_kind(metric)
    if kind == "rate":
        return f"{number * 100:.1f}%"
    if kind == "seconds":
        return _seconds(number)
    if kind == "error":
        return f"{number:.3f}"
    if kind == "score":
        return f"{number:.1f}"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return f"{number:.4g}"


def _delta_scale(metric: str, values: Sequence[float]) -> tuple[float, str, int]:
    """(factor, unit, decimals) shared by a delta and its interval bounds."""
    kind = metric_kind(metric)
    largest = max((abs(v) for v in values), default=0.0)
    if kind == "rate":
        return 100.0, " pp", 1
    if kind == "score":
        return 1.0, "", 1
    if kind == "error":
        return 1.0, "", 3
    if kind == "seconds":
        factor, unit = (1000.0, " ms") if largest < 1 else (1.0, " s")
        return factor, unit, _decimals(largest * factor)
    return 1.0, "", _decimals(largest)


def format_delta(metric: str, delta: Any, low: Any = None, high: Any = None) -> str:
    """A signed change with its unit and, when both bounds are known, its interval: +4.0 pp (+1.0 to +7.0)."""
    value = as_number(delta)
    if value is None:
        return "n/a"
    bounds = [as_number(low), as_number(high)]
    known = [value, *(b for b in bounds if b is not None)]
    factor, unit, decimals = _delta_scale(metric, known)

    def signed(x: float) -> str:
        return f"{x * factor:+.{decimals}f}"

    text = signed(value) + unit
    if bounds[0] is not None and bounds[1] is not None:
        text += f" ({signed(bounds[0])} to {signed(bounds[1])})"
    return text


def width_decimals(*widths: Any) -> int:
    """Decimals for an interval in a metric's own units: two significant digits of the narrowest
    of `widths` (ignoring zeros and non-numbers), at least 2."""
    known = [abs(w) for w in (as_number(x) for x in widths) if w]
    return max(2, _decimals(min(known), significant=2)) if known else 2


def format_interval_width(width: Any, low: Any, high: Any, limit: Any = None) -> str:
    """An interval's width and bounds in the metric's own units: "0.31 wide (0.55 to 0.86)"."""
    w, lo, hi = as_number(width), as_number(low), as_number(high)
    if w is None:
        return "n/a"
    d = width_decimals(w, limit)
    text = f"{w:.{d}f} wide"
    return text + (f" ({lo:.{d}f} to {hi:.{d}f})" if lo is not None and hi is not None else "")


def verdict(delta: Any, low: Any, high: Any, higher_is_better: bool) -> str:
    """The change against the metric's direction: "better", "worse", "no clear change" (the interval holds
    zero) or "n/a" (no delta)."""
    value, lo, hi = as_number(delta), as_number(low), as_number(high)
    if value is None:
        return "n/a"
    if lo is not None and hi is not None:
        direction = 1 if lo > 0 else -1 if hi < 0 else 0
    else:
        direction = (value > 0) - (value < 0)
    if direction == 0:
        return "no clear change"
    return "better" if (direction > 0) == higher_is_better else "worse"


def shorten(text: Any, limit: int = MAX_TEXT) -> str:
    """One line of at most `limit` characters; structured values (chat answers as JSON) are dumped first."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False, sort_keys=True, default=str)
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


# --- the view both renderers read -----------------------------------------------------------------


def as_dict(value: Any) -> dict:
    """`value` if it is a dict, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list:
    """`value` as a list if it is a list or tuple, else an empty one."""
    return list(value) if isinstance(value, list | tuple) else []


def _text(value: Any, default: str = "") -> str:
    return default if value is None else str(value)


def build_view(results: dict) -> dict[str, Any]:
    """Everything a report shows, as formatted (still unescaped) strings."""
    gate = as_dict(results.get("gate"))
    decision = _text(gate.get("decision"), "UNKNOWN").upper()
    reasons = [str(r) for r in as_list(gate.get("reasons")) if r]
    if reasons:
        why = "; ".join(reasons)
    else:
        why = "all thresholds met" if decision == "DEPLOY" else "the gate gave no reasons"
    flipped = as_list(results.get("flipped"))
    return {
        "family": _text(results.get("family"), "?"),
        "version": _text(results.get("version"), "?"),
        "decision": decision,
        "why": why,
        "facts": _facts(results),
        "checks": [_check_row(c) for c in as_list(gate.get("checks")) if isinstance(c, dict)],
        "sets": _set_views(results),
        "forgetting": _forgetting_view(results),
        "flipped": [_flipped_row(f) for f in flipped[:MAX_FLIPPED] if isinstance(f, dict)],
        "flipped_total": len(flipped),
        "confusions": _top_confusions(as_dict(results.get("confusion"))),
        "dimensions": _dimension_rows(as_dict(results.get("per_dimension"))),
        "categories": _category_tables(as_dict(results.get("by_category"))),
        "unknown_sources": [
            (str(set_name), ", ".join(str(i) for i in as_list(ids)))
            for set_name, ids in as_dict(results.get("unknown_sources")).items()
            if as_list(ids)
        ],
        "training": _training_facts(as_dict(results.get("training"))),
        "skipped": _skipped(as_list(results.get("skipped"))),
    }


# Per-category columns, in this order when present (the candidate's figures on a categorized set).
CATEGORY_METRICS = (
    "accuracy", "answer_accuracy", "token_f1", "citation_presence", "refusal_accuracy",
    "field_accuracy", "json_valid", "mae",
)  # fmt: skip


def _category_tables(by_category: dict) -> list[dict[str, Any]]:
    """Per evaluation set with categories: one row per category, the candidate's main metrics."""
    tables = []
    for set_name, categories in by_category.items():
        cats = {str(k): as_dict(v) for k, v in as_dict(categories).items()}
        columns = [m for m in CATEGORY_METRICS if any(m in c for c in cats.values())][:5]
        rows = [
            [name, str(c.get("examples", "")), *(format_value(m, c.get(m)) for m in columns)]
            for name, c in cats.items()
        ]
        if rows:
            tables.append({"set": str(set_name), "columns": columns, "rows": rows})
    return tables


def _baseline_text(baseline: dict) -> str:
    if not baseline:
        return "none recorded"
    kind, version = _text(baseline.get("kind"), "baseline"), baseline.get("version")
    description = baseline.get("description")
    if kind == "production" and version:
        text = f"production version {version}"
    elif kind == "base_model":
        text = "the base model"
    else:
        text = " ".join(str(p) for p in (kind, version) if p)
    return f"{text}: {description}" if description else text


def _facts(results: dict) -> list[tuple[str, str]]:
    facts = [
        ("Task", results.get("task")),
        ("Dataset version", results.get("dataset_version")),
        ("Evaluated at", results.get("evaluated_at")),
    ]
    facts = [(label, str(value)) for label, value in facts if value not in (None, "")]
    facts.append(("Baseline", _baseline_text(as_dict(results.get("baseline")))))
    if results.get("inference"):
        facts.append(("Answers from", str(results["inference"])))
    threshold = as_dict(results.get("threshold"))
    if threshold:
        value, label = threshold.get("value"), threshold.get("out_of_scope_label", "?")
        if value is None:  # -inf on val: thresholding only lost accuracy there
            text = f"none for label {label}: the top label is kept whatever its score"
        else:
            text = f"top-label score below {format_value('threshold', value)} means {label}"
        if threshold.get("chosen_on"):
            text += f" (chosen on {threshold['chosen_on']})"
        facts.append(("Out-of-scope threshold", text))
    return facts


def _check_row(check: dict) -> dict[str, str]:
    metric = _text(check.get("metric"), "?")
    kind = _text(check.get("kind"))
    value = check.get("value")
    if kind in ("change", "forgetting"):
        shown = format_delta(metric, value)
    elif kind == "evidence" and "ci_low" in check:  # the width of the candidate's interval
        shown = format_interval_width(value, check.get("ci_low"), check.get("ci_high"), check.get("limit"))
    else:  # a metric's value, or the evidence set's number of examples
        shown = format_value(metric, value)
    threshold = check.get("threshold")
    return {
        "metric": metric,
        "set": _text(check.get("set")),
        "kind": kind,
        "value": shown,
        "threshold": threshold if isinstance(threshold, str) else format_value(metric, threshold),
        "outcome": _text(check.get("outcome"), "n/a").lower(),
        "reason": _text(check.get("reason")),
    }


def _set_names(results: dict) -> list[str]:
    names = [
        str(s.get("name")) for s in as_list(results.get("sets")) if isinstance(s, dict) and s.get("name")
    ]
    for source in (as_dict(results.get("metrics")), as_dict(results.get("comparison"))):
        names += [str(name) for name in source if str(name) not in names]
    return names


def _set_views(results: dict) -> list[dict[str, Any]]:
    info = {str(s.get("name")): s for s in as_list(results.get("sets")) if isinstance(s, dict)}
    views = []
    for name in _set_names(results):
        about = as_dict(info.get(name))
        metrics = as_dict(as_dict(results.get("metrics")).get(name))
        comparison = as_list(as_dict(results.get("comparison")).get(name))
        views.append(
            {
                "name": name,
                "examples": about.get("examples"),
                "source": _text(about.get("source")),
                "rows": _metric_rows(
                    as_dict(metrics.get("candidate")), as_dict(metrics.get("baseline")), comparison
                ),
            }
        )
    return views


def _metric_rows(candidate: dict, baseline: dict, comparison: list) -> list[dict[str, Any]]:
    """Compared metrics first (with their intervals), then metrics only one system has."""
    rows, seen = [], set()
    for row in comparison:
        if isinstance(row, dict) and row.get("metric") is not None:
            rows.append(_metric_row(str(row["metric"]), row))
            seen.add(str(row["metric"]))
    for metric in [*candidate, *(m for m in baseline if m not in candidate)]:
        if metric not in seen:
            rows.append(
                _metric_row(metric, {"candidate": candidate.get(metric), "baseline": baseline.get(metric)})
            )
    return rows


def _metric_row(metric: str, row: dict) -> dict[str, Any]:
    higher = row.get("higher_is_better")
    higher = (not lower_is_better(metric)) if higher is None else bool(higher)
    delta = row.get("delta")
    if (
        delta is None
        and as_number(row.get("candidate")) is not None
        and as_number(row.get("baseline")) is not None
    ):
        delta = row["candidate"] - row["baseline"]
    return {
        "metric": metric,
        "lower_is_better": not higher,
        "candidate": format_value(metric, row.get("candidate")),
        "baseline": format_value(metric, row.get("baseline")),
        "delta": format_delta(metric, delta, row.get("ci_low"), row.get("ci_high")),
        "verdict": verdict(delta, row.get("ci_low"), row.get("ci_high"), higher),
    }


def _forgetting_view(results: dict) -> dict[str, Any] | None:
    """The old slices, one row each: the forgetting metric of production and the candidate, the
    delta, its interval and the gate's verdict; None when forgetting was not judged."""
    forgetting = as_dict(results.get("forgetting"))
    if not forgetting:
        return None
    metric = _text(forgetting.get("metric"), "?")
    comparison = as_dict(results.get("comparison"))
    checks = {
        str(c.get("set")): c
        for c in as_list(as_dict(results.get("gate")).get("checks"))
        if isinstance(c, dict) and c.get("kind") == "forgetting"
    }
    rows = []
    for old in as_list(forgetting.get("slices")):
        old = as_dict(old)
        name = _text(old.get("name"), "?")
        row = next(
            (as_dict(r) for r in as_list(comparison.get(name)) if as_dict(r).get("metric") == metric), {}
        )
        low, high = row.get("ci_low"), row.get("ci_high")
        interval = (
            f"{format_delta(metric, low)} to {format_delta(metric, high)}"
            if as_number(low) is not None and as_number(high) is not None
            else "n/a"
        )
        check = as_dict(checks.get(name))
        rows.append(
            {
                "slice": name,
                "snapshot": _text(old.get("dataset_version")),
                "created": _text(old.get("created_at"))[:16].replace("T", " "),
                "examples": _text(old.get("examples")),
                "baseline": format_value(metric, row.get("baseline")),
                "candidate": format_value(metric, row.get("candidate")),
                "delta": format_delta(metric, row.get("delta")),
                "interval": interval,
                "verdict": _text(check.get("outcome"), "n/a").lower(),
                "reason": _text(check.get("reason")),
            }
        )
    notes = [str(n) for n in as_list(forgetting.get("notes")) if n]
    for old in (as_dict(o) for o in as_list(forgetting.get("slices"))):
        if old.get("left_out"):
            notes.append(
                f"{old.get('name')}: {old['left_out']} test example(s) left out, in the train or val split "
                "of the candidate's or production's snapshot"
            )
        if old.get("same_as_test"):
            notes.append(f"{old.get('name')}: the same examples as the candidate's own test split")
    return {"metric": metric, "rule": _forgetting_rule(forgetting, metric), "rows": rows, "notes": notes}


def _forgetting_rule(forgetting: dict, metric: str) -> str:
    tolerance = as_number(forgetting.get("max_drop"))
    baseline = forgetting.get("baseline")
    against = f"production version {baseline}" if baseline else "production"
    text = (
        f"{metric} on the test splits of up to {_text(forgetting.get('snapshots'), '?')} earlier snapshots, "
        f"the candidate against {against}"
    )
    if tolerance is not None:
        text += f"; worse by more than {tolerance:g}"
        if forgetting.get("require_significant", True):
            confidence = as_number(forgetting.get("confidence")) or 0.95
            text += f" with the {confidence:.0%} interval excluding 0"
        text += f" is {_text(forgetting.get('decision'), 'review').upper()}"
    if forgetting.get("skipped"):
        text += f". Not judged: {forgetting['skipped']}"
    return text + "."


def _flipped_row(example: dict) -> dict[str, str]:
    fields = ("set", "id", "input", "reference", "candidate", "baseline")
    return {field: shorten(example.get(field)) for field in fields}


def _top_confusions(confusion: dict) -> list[tuple[str, str, int]]:
    labels, matrix = as_list(confusion.get("labels")), as_list(confusion.get("matrix"))
    pairs = []
    for i, row in enumerate(matrix[: len(labels)]):
        for j, count in enumerate(as_list(row)[: len(labels)]):
            if i != j and (as_number(count) or 0) > 0:
                pairs.append((str(labels[i]), str(labels[j]), int(count)))
    return sorted(pairs, key=lambda p: -p[2])[:TOP_CONFUSIONS]


def _dimension_rows(per_dimension: dict) -> list[dict[str, str]]:
    rows = []
    for name, values in per_dimension.items():
        values = as_dict(values)
        cand, base = as_number(values.get("candidate_mae")), as_number(values.get("baseline_mae"))
        delta = cand - base if cand is not None and base is not None else None
        rows.append(
            {
                "dimension": str(name),
                "candidate": format_value("mae", values.get("candidate_mae")),
                "baseline": format_value("mae", values.get("baseline_mae")),
                "delta": format_delta("mae", delta),
                "verdict": verdict(delta, None, None, higher_is_better=False),
            }
        )
    return rows


def _training_facts(training: dict) -> list[tuple[str, str]]:
    epochs = as_list(training.get("epoch_history"))
    final_val = as_dict(epochs[-1]).get("val_loss") if epochs else None
    epochs_text = None
    if training.get("epochs") is not None:
        epochs_text = str(training["epochs"])
        if training.get("best_epoch") is not None:
            epochs_text += f" (best: epoch {training['best_epoch']})"
    facts = [
        ("Dataset version", training.get("dataset_version")),
        ("Examples used", training.get("samples_used")),
        ("Epochs", epochs_text),
        ("Final training loss", _loss(training.get("training_loss"))),
        ("Final validation loss", _loss(final_val)),
        ("Best validation loss", _loss(training.get("best_validation_loss"))),
        ("Published", _selected(training)),
        ("Training time", _duration(training.get("training_time_seconds"))),
    ]
    return [(label, str(value)) for label, value in facts if value is not None]


def _selected(training: dict[str, Any]) -> str | None:
    """Which model the recipe published: a fine-tuned epoch, or the frozen-encoder floor."""
    floor = training.get("floor") or {}
    beside = f" (frozen-encoder floor: {floor['val_accuracy']:.1%} on val, C={floor['c']:g})" if floor.get("val_accuracy") is not None else ""
    if training.get("selected") == "floor":
        return f"the frozen-encoder floor: no fine-tuned epoch beat it on validation{beside}"
    if training.get("selected") == "fine_tune":
        return f"fine-tuned epoch {training.get('best_epoch')}{beside}"
    return None


def _loss(value: Any) -> str | None:
    return None if value is None else format_value("loss", value)


def _duration(seconds: Any) -> str | None:
    value = as_number(seconds)
    if value is None:
        return None
    return format_value("seconds", value) if value < 120 else f"{value / 60:.1f} min"


def _skipped(entries: list) -> list[tuple[str, str]]:
    skipped = []
    for entry in entries:
        if isinstance(entry, dict):
            skipped.append((_text(entry.get("what"), "?"), _text(entry.get("reason"))))
        elif entry:
            skipped.append((str(entry), ""))
    return skipped


def set_heading(view: dict[str, Any]) -> str:
    """An evaluation set's heading: its name, with its size and source when known."""
    parts = []
    if view["examples"] is not None:
        parts.append(f"{view['examples']} examples")
    if view["source"]:
        parts.append(view["source"])
    return f"{view['name']} ({', '.join(parts)})" if parts else view["name"]
