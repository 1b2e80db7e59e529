"""Evaluation reports: one evaluation's results as Markdown, as a self-contained HTML page, and as plots.

`render_markdown` is what a person reads in the Dagster UI (asset metadata) and in `eval/report.md`;
`render_html` is the same content with the plots embedded, one file that opens and prints anywhere;
`write_reports` writes both beside `results.json`, each file whole or absent. Both renderers read
one view built from the results dict (`build_view`), so they never disagree, and every section is
optional: a missing or empty key leaves its section out, a None value reads "n/a".
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import numbers
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RATE_SUFFIXES = (
    "accuracy", "recall", "precision", "f1", "rate", "presence", "validity", "consistency",
    "exact_match", "token_f1", "json_valid", "field_accuracy", "macro_f1",
)  # fmt: skip
MAX_FLIPPED = 10  # flipped examples shown in a report
MAX_TEXT = 120  # characters of an example's text shown in a table cell
MAX_CONFUSION_LABELS = 30  # labels drawn in the confusion matrix
TOP_CONFUSIONS = 5  # (true, predicted) pairs listed in the text
PLOT_TITLES = {
    "deltas": "Change against the baseline (95% intervals)",
    "loss_curve": "Training and validation loss",
    "confusion": "Confusion matrix (candidate, test set)",
    "per_dimension": "Mean absolute error per dimension",
}
REPORT_FILES = {"results": "results.json", "markdown": "report.md", "html": "report.html"}


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
    """The default direction when a comparison row does not say: errors and latencies go down."""
    return metric_kind(metric) in {"error", "seconds"}


def _number(value: Any) -> float | None:
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


def _seconds(value: float, sign: bool = False) -> str:
    scale, unit = (1000.0, "ms") if abs(value) < 1 else (1.0, "s")
    scaled = value * scale
    return f"{scaled:{'+' if sign else ''}.{_decimals(abs(scaled))}f} {unit}"


def format_value(metric: str, value: Any) -> str:
    """One metric value as a person reads it: 91.0%, 4.00 ms, 27.4 (BLEU), 0.812 (MAE), n/a."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    number = _number(value)
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
    value = _number(delta)
    if value is None:
        return "n/a"
    bounds = [_number(low), _number(high)]
    known = [value, *(b for b in bounds if b is not None)]
    factor, unit, decimals = _delta_scale(metric, known)

    def signed(x: float) -> str:
        return f"{x * factor:+.{decimals}f}"

    text = signed(value) + unit
    if bounds[0] is not None and bounds[1] is not None:
        text += f" ({signed(bounds[0])} to {signed(bounds[1])})"
    return text


def verdict(delta: Any, low: Any, high: Any, higher_is_better: bool) -> str:
    """The change against the metric's direction: "better", "worse", "no clear change" (the interval holds
    zero) or "n/a" (no delta)."""
    value, lo, hi = _number(delta), _number(low), _number(high)
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


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else []


def _text(value: Any, default: str = "") -> str:
    return default if value is None else str(value)


def build_view(results: dict) -> dict[str, Any]:
    """Everything a report shows, as formatted (still unescaped) strings."""
    gate = _dict(results.get("gate"))
    decision = _text(gate.get("decision"), "UNKNOWN").upper()
    reasons = [str(r) for r in _list(gate.get("reasons")) if r]
    if reasons:
        why = "; ".join(reasons)
    else:
        why = "all thresholds met" if decision == "DEPLOY" else "the gate gave no reasons"
    flipped = _list(results.get("flipped"))
    return {
        "family": _text(results.get("family"), "?"),
        "version": _text(results.get("version"), "?"),
        "decision": decision,
        "why": why,
        "facts": _facts(results),
        "checks": [_check_row(c) for c in _list(gate.get("checks")) if isinstance(c, dict)],
        "sets": _set_views(results),
        "flipped": [_flipped_row(f) for f in flipped[:MAX_FLIPPED] if isinstance(f, dict)],
        "flipped_total": len(flipped),
        "confusions": _top_confusions(_dict(results.get("confusion"))),
        "dimensions": _dimension_rows(_dict(results.get("per_dimension"))),
        "training": _training_facts(_dict(results.get("training"))),
        "skipped": _skipped(_list(results.get("skipped"))),
    }


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
    facts.append(("Baseline", _baseline_text(_dict(results.get("baseline")))))
    threshold = _dict(results.get("threshold"))
    if threshold:
        value, label = threshold.get("value"), threshold.get("out_of_scope_label", "?")
        text = f"{format_value('threshold', value)} for label {label}"
        if threshold.get("chosen_on"):
            text += f" (chosen on {threshold['chosen_on']})"
        facts.append(("Out-of-scope threshold", text))
    return facts


def _check_row(check: dict) -> dict[str, str]:
    metric = _text(check.get("metric"), "?")
    kind = _text(check.get("kind"))
    value = check.get("value")
    shown = format_delta(metric, value) if kind == "change" else format_value(metric, value)
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
    names = [str(s.get("name")) for s in _list(results.get("sets")) if isinstance(s, dict) and s.get("name")]
    for source in (_dict(results.get("metrics")), _dict(results.get("comparison"))):
        names += [str(name) for name in source if str(name) not in names]
    return names


def _set_views(results: dict) -> list[dict[str, Any]]:
    info = {str(s.get("name")): s for s in _list(results.get("sets")) if isinstance(s, dict)}
    views = []
    for name in _set_names(results):
        about = _dict(info.get(name))
        metrics = _dict(_dict(results.get("metrics")).get(name))
        comparison = _list(_dict(results.get("comparison")).get(name))
        views.append(
            {
                "name": name,
                "examples": about.get("examples"),
                "source": _text(about.get("source")),
                "rows": _metric_rows(
                    _dict(metrics.get("candidate")), _dict(metrics.get("baseline")), comparison
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
        and _number(row.get("candidate")) is not None
        and _number(row.get("baseline")) is not None
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


def _flipped_row(example: dict) -> dict[str, str]:
    fields = ("set", "id", "input", "reference", "candidate", "baseline")
    return {field: shorten(example.get(field)) for field in fields}


def _top_confusions(confusion: dict) -> list[tuple[str, str, int]]:
    labels, matrix = _list(confusion.get("labels")), _list(confusion.get("matrix"))
    pairs = []
    for i, row in enumerate(matrix[: len(labels)]):
        for j, count in enumerate(_list(row)[: len(labels)]):
            if i != j and (_number(count) or 0) > 0:
                pairs.append((str(labels[i]), str(labels[j]), int(count)))
    return sorted(pairs, key=lambda p: -p[2])[:TOP_CONFUSIONS]


def _dimension_rows(per_dimension: dict) -> list[dict[str, str]]:
    rows = []
    for name, values in per_dimension.items():
        values = _dict(values)
        cand, base = _number(values.get("candidate_mae")), _number(values.get("baseline_mae"))
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
    epochs = _list(training.get("epoch_history"))
    final_val = _dict(epochs[-1]).get("val_loss") if epochs else None
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
        ("Training time", _duration(training.get("training_time_seconds"))),
    ]
    return [(label, str(value)) for label, value in facts if value is not None]


def _loss(value: Any) -> str | None:
    return None if value is None else format_value("loss", value)


def _duration(seconds: Any) -> str | None:
    value = _number(seconds)
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


def _set_heading(view: dict[str, Any]) -> str:
    parts = []
    if view["examples"] is not None:
        parts.append(f"{view['examples']} examples")
    if view["source"]:
        parts.append(view["source"])
    return f"{view['name']} ({', '.join(parts)})" if parts else view["name"]


def _metric_label(row: dict[str, Any]) -> str:
    return f"{row['metric']} (lower is better)" if row["lower_is_better"] else row["metric"]


# --- Markdown -------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#&])")


def md_escape(text: Any) -> str:
    """Text from the data, inert in Markdown and safe in a table cell: one line, `|` and markup escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


class _Md(str):
    """Markdown the renderer wrote itself: a table cell that is not escaped again."""


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    for row in rows:
        cells = [cell if isinstance(cell, _Md) else md_escape(cell) for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md_outcome(outcome: str) -> str:
    return _Md(outcome if outcome == "pass" else f"**{md_escape(outcome.upper())}**")


def render_markdown(results: dict) -> str:
    """The report as GitHub-flavoured Markdown (tables, no HTML) for Dagster metadata and `eval/report.md`."""
    view = build_view(results)
    lines = [
        f"# {md_escape(view['family'])} {md_escape(view['version'])}: {md_escape(view['decision'])}",
        "",
        f"**{md_escape(view['decision'])}**: {md_escape(view['why'])}",
        "",
        *(f"- **{label}:** {md_escape(value)}" for label, value in view["facts"]),
    ]
    for section in (
        _md_checks,
        _md_metrics,
        _md_flipped,
        _md_confusions,
        _md_dimensions,
        _md_training,
        _md_skipped,
    ):
        part = section(view)
        if part:
            lines += ["", *part]
    return "\n".join(lines) + "\n"


def _md_checks(view: dict[str, Any]) -> list[str]:
    lines = ["## Gate checks", ""]
    if not view["checks"]:
        return [*lines, "No gate checks were recorded."]
    rows = [
        (c["metric"], c["set"], c["kind"], c["value"], c["threshold"], _md_outcome(c["outcome"]))
        for c in view["checks"]
    ]
    return lines + _md_table(("metric", "set", "kind", "value", "threshold", "outcome"), rows, right=(3,))


def _md_metrics(view: dict[str, Any]) -> list[str]:
    lines = ["## Metrics"]
    if not view["sets"]:
        return [*lines, "", "No metrics were recorded."]
    headers = ("metric", "candidate", "baseline", "delta (95% CI)", "change")
    for set_view in view["sets"]:
        lines += ["", f"### {md_escape(_set_heading(set_view))}", ""]
        rows = [
            (_metric_label(r), r["candidate"], r["baseline"], r["delta"], r["verdict"])
            for r in set_view["rows"]
        ]
        lines += _md_table(headers, rows, right=(1, 2, 3)) if rows else ["No metrics for this set."]
    return lines


def _md_flipped(view: dict[str, Any]) -> list[str]:
    if not view["flipped"]:
        return []
    lines = ["## Flipped examples (baseline right, candidate wrong)", ""]
    if view["flipped_total"] > len(view["flipped"]):
        lines += [f"The first {len(view['flipped'])} of {view['flipped_total']}.", ""]
    fields = ("set", "id", "input", "reference", "candidate", "baseline")
    return lines + _md_table(fields, [[row[f] for f in fields] for row in view["flipped"]])


def _md_confusions(view: dict[str, Any]) -> list[str]:
    if not view["confusions"]:
        return []
    lines = ["## Most frequent confusions (candidate, test set)", ""]
    return lines + _md_table(("true label", "predicted", "count"), view["confusions"], right=(2,))


def _md_dimensions(view: dict[str, Any]) -> list[str]:
    if not view["dimensions"]:
        return []
    rows = [
        (r["dimension"], r["candidate"], r["baseline"], r["delta"], r["verdict"]) for r in view["dimensions"]
    ]
    lines = ["## Mean absolute error per dimension (lower is better)", ""]
    return lines + _md_table(("dimension", "candidate", "baseline", "delta", "change"), rows, right=(1, 2, 3))


def _md_training(view: dict[str, Any]) -> list[str]:
    if not view["training"]:
        return []
    return ["## Training", "", *(f"- **{label}:** {md_escape(value)}" for label, value in view["training"])]


def _md_skipped(view: dict[str, Any]) -> list[str]:
    if not view["skipped"]:
        return []
    items = [
        f"- **{md_escape(what)}**" + (f": {md_escape(why)}" if why else "") for what, why in view["skipped"]
    ]
    return ["## Skipped", "", *items]


# --- HTML -----------------------------------------------------------------------------------------

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ v.family }} {{ v.version }}: {{ v.decision }}</title>
<style>
  :root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
  * { box-sizing: border-box; }
  body { margin: 0 auto; max-width: 1100px; padding: 24px 32px 48px; color: var(--ink); background: #fff;
         font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Arial, "DejaVu Sans", sans-serif; }
  h1 { font-size: 26px; margin: 0 0 8px; display: flex; flex-wrap: wrap; align-items: center; gap: 12px; }
  h2 { font-size: 20px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
  h3 { font-size: 16px; margin: 20px 0 6px; }
  .badge { display: inline-block; padding: 3px 14px; border-radius: 999px; color: #fff; font-size: 16px;
           font-weight: 700; letter-spacing: .06em; background: #59636e; }
  .badge.deploy { background: #1a7f37; } .badge.review { background: #b35900; }
  .badge.fail { background: #c62828; }
  .why { font-size: 16px; margin: 4px 0 16px; }
  dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
  dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
  table { border-collapse: collapse; margin: 6px 0 12px; width: 100%; font-size: 14px; }
  th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
  th { background: var(--soft); } tbody tr:nth-child(even) { background: #fbfcfd; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  td.text { overflow-wrap: anywhere; }
  .pass, .better { color: #1a7f37; } .review { color: #b35900; font-weight: 700; }
  .fail, .worse { color: #c62828; font-weight: 700; } .na, .no-clear-change { color: var(--muted); }
  .lower { color: var(--muted); font-size: 12px; } .wrong { color: #c62828; }
  figure { margin: 12px 0; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
  .note { color: var(--muted); }
  @media print {
    body { padding: 0; max-width: none; font-size: 12px; }
    h2 { break-after: avoid; } table, figure, tr { break-inside: avoid; }
    .badge { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  }
</style>
</head>
<body>
<h1><span>{{ v.family }} {{ v.version }}</span>
  <span class="badge {{ css(v.decision) }}">{{ v.decision }}</span></h1>
<p class="why">{{ v.why }}</p>
<dl class="facts">
{%- for label, value in v.facts %}
  <dt>{{ label }}</dt><dd>{{ value }}</dd>
{%- endfor %}
</dl>

<h2>Gate checks</h2>
{%- if v.checks %}
<table>
  <thead><tr><th>metric</th><th>set</th><th>kind</th><th>value</th><th>threshold</th><th>outcome</th></tr>
  </thead>
  <tbody>
  {%- for c in v.checks %}
    <tr><td>{{ c.metric }}</td><td>{{ c.set }}</td><td>{{ c.kind }}</td><td class="num">{{ c.value }}</td>
        <td>{{ c.threshold }}</td>
        <td class="{{ css(c.outcome) }}" title="{{ c.reason }}">{{ c.outcome }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- else %}
<p class="note">No gate checks were recorded.</p>
{%- endif %}

<h2>Metrics</h2>
{%- for s in v.sets %}
<h3>{{ heading(s) }}</h3>
{%- if s.rows %}
<table>
  <thead><tr><th>metric</th><th>candidate</th><th>baseline</th><th>delta (95% CI)</th><th>change</th></tr>
  </thead>
  <tbody>
  {%- for r in s.rows %}
    <tr><td>{{ r.metric }}
          {%- if r.lower_is_better %} <span class="lower">(lower is better)</span>{% endif %}</td>
        <td class="num">{{ r.candidate }}</td><td class="num">{{ r.baseline }}</td>
        <td class="num">{{ r.delta }}</td>
        <td class="{{ css(r.verdict) }}">{{ r.verdict }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- else %}
<p class="note">No metrics for this set.</p>
{%- endif %}
{%- else %}
<p class="note">No metrics were recorded.</p>
{%- endfor %}
{{ figure("deltas") }}

{%- if v.flipped %}
<h2>Flipped examples (baseline right, candidate wrong)</h2>
{%- if v.flipped_total > v.flipped | length %}
<p class="note">The first {{ v.flipped | length }} of {{ v.flipped_total }}.</p>
{%- endif %}
<table>
  <thead><tr><th>set</th><th>id</th><th>input</th><th>reference</th><th>candidate</th><th>baseline</th></tr>
  </thead>
  <tbody>
  {%- for f in v.flipped %}
    <tr><td>{{ f.set }}</td><td>{{ f.id }}</td>
        <td class="text">{{ f.input }}</td><td class="text">{{ f.reference }}</td>
        <td class="text wrong">{{ f.candidate }}</td><td class="text">{{ f.baseline }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- endif %}

{%- if v.confusions or plots.confusion %}
<h2>Confusions (candidate, test set)</h2>
{%- if v.confusions %}
<table>
  <thead><tr><th>true label</th><th>predicted</th><th>count</th></tr></thead>
  <tbody>
  {%- for actual, predicted, count in v.confusions %}
    <tr><td>{{ actual }}</td><td>{{ predicted }}</td><td class="num">{{ count }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- endif %}
{{ figure("confusion") }}
{%- endif %}

{%- if v.dimensions or plots.per_dimension %}
<h2>Mean absolute error per dimension (lower is better)</h2>
{%- if v.dimensions %}
<table>
  <thead><tr><th>dimension</th><th>candidate</th><th>baseline</th><th>delta</th><th>change</th></tr></thead>
  <tbody>
  {%- for r in v.dimensions %}
    <tr><td>{{ r.dimension }}</td><td class="num">{{ r.candidate }}</td><td class="num">{{ r.baseline }}</td>
        <td class="num">{{ r.delta }}</td><td class="{{ css(r.verdict) }}">{{ r.verdict }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- endif %}
{{ figure("per_dimension") }}
{%- endif %}

{%- if v.training or plots.loss_curve %}
<h2>Training</h2>
<dl class="facts">
{%- for label, value in v.training %}
  <dt>{{ label }}</dt><dd>{{ value }}</dd>
{%- endfor %}
</dl>
{{ figure("loss_curve") }}
{%- endif %}

{%- if extra_plots %}
<h2>More plots</h2>
{%- for name in extra_plots %}
{{ figure(name) }}
{%- endfor %}
{%- endif %}

{%- if v.skipped %}
<h2>Skipped</h2>
<ul>
{%- for what, why in v.skipped %}
  <li><strong>{{ what }}</strong>{% if why %}: {{ why }}{% endif %}</li>
{%- endfor %}
</ul>
{%- endif %}
</body>
</html>
"""

_FIGURE = """{%- macro figure(name) %}{% if plots[name] %}
<figure><img src="{{ plots[name] }}" alt="{{ titles.get(name, name) }}"></figure>
{%- endif %}{% endmacro %}"""


@lru_cache(maxsize=1)
def _html_template() -> Any:
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(_FIGURE + HTML_TEMPLATE)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(results: dict, plots: dict[str, bytes]) -> str:
    """The report as one self-contained HTML page: inline CSS, plots as data URIs, all data text escaped."""
    uris = {name: _data_uri(png) for name, png in (plots or {}).items() if png}
    return _html_template().render(
        v=build_view(results),
        plots={name: "" for name in PLOT_TITLES} | uris,  # an absent plot reads "": the section tests it
        titles=PLOT_TITLES,
        extra_plots=[name for name in uris if name not in PLOT_TITLES],
        heading=_set_heading,
        css=_css_class,
    )


def _css_class(word: str) -> str:
    """An outcome or verdict as a CSS class: "no clear change" -> "no-clear-change", "n/a" -> "na"."""
    return re.sub(r"[^a-z0-9-]", "", word.lower().replace(" ", "-"))


# --- plots ----------------------------------------------------------------------------------------


def make_plots(results: dict) -> dict[str, bytes]:
    """PNG plots of what the results hold: deltas, loss_curve, confusion, per_dimension.

    A plot whose data is absent is left out. Plots only illustrate the report, so one that cannot be
    drawn (malformed data) is logged and left out rather than failing the evaluation.
    """
    import matplotlib

    matplotlib.use("Agg")
    builders: dict[str, Callable[[dict], bytes | None]] = {
        "deltas": _plot_deltas,
        "loss_curve": _plot_loss_curve,
        "confusion": _plot_confusion,
        "per_dimension": _plot_per_dimension,
    }
    plots = {}
    for name, build in builders.items():
        try:
            png = build(results)
        except Exception:
            logger.exception("could not draw the %s plot; the report goes on without it", name)
            continue
        if png:
            plots[name] = png
    return plots


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", facecolor="white")
        return buffer.getvalue()
    finally:
        plt.close(figure)


_DELTA_UNITS = {  # kind -> (factor, axis label)
    "rate": (100.0, "percentage points"),
    "score": (1.0, "points (0-100)"),
    "error": (1.0, "error"),
    "seconds": (1000.0, "milliseconds"),
    "number": (1.0, "value"),
}
_VERDICT_COLOURS = {"better": "#1a7f37", "worse": "#c62828"}


def _delta_points(results: dict) -> dict[str, list[dict[str, Any]]]:
    """Comparable rows with a delta, grouped by unit, labelled by metric (and set when there are several)."""
    comparison = _dict(results.get("comparison"))
    several = len(comparison) > 1
    groups: dict[str, list[dict[str, Any]]] = {}
    for set_name, rows in comparison.items():
        for row in _list(rows):
            if not isinstance(row, dict) or _number(row.get("delta")) is None or row.get("metric") is None:
                continue
            metric = str(row["metric"])
            higher = row.get("higher_is_better")
            higher = (not lower_is_better(metric)) if higher is None else bool(higher)
            label = f"{metric} ({set_name})" if several else metric
            groups.setdefault(metric_kind(metric), []).append(
                {
                    "label": label + ("" if higher else "  [lower is better]"),
                    "lower": not higher,
                    "delta": _number(row["delta"]),
                    "low": _number(row.get("ci_low")),
                    "high": _number(row.get("ci_high")),
                    "verdict": verdict(row["delta"], row.get("ci_low"), row.get("ci_high"), higher),
                }
            )
    return groups


def _plot_deltas(results: dict) -> bytes | None:
    groups = _delta_points(results)
    if not groups:
        return None
    import matplotlib.pyplot as plt

    kinds = [k for k in _DELTA_UNITS if k in groups]
    sizes = [len(groups[k]) for k in kinds]
    fig, axes = plt.subplots(
        len(kinds),
        1,
        figsize=(8, 1.0 + 0.34 * sum(sizes) + 0.9 * len(kinds)),
        squeeze=False,
        gridspec_kw={"height_ratios": [n + 1.2 for n in sizes]},
    )
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        factor, unit = _DELTA_UNITS[kind]
        points = groups[kind]
        ys = list(range(len(points)))[::-1]
        for y, p in zip(ys, points, strict=True):
            delta = p["delta"] * factor
            err = None
            if p["low"] is not None and p["high"] is not None:
                err = [[max(0.0, delta - p["low"] * factor)], [max(0.0, p["high"] * factor - delta)]]
            colour = _VERDICT_COLOURS.get(p["verdict"], "#6e7781")
            ax.errorbar([delta], [y], xerr=err, fmt="D" if p["lower"] else "o", color=colour, capsize=3)
        ax.axvline(0, color="#444", linewidth=1)
        low, high = ax.get_xlim()
        pad = 0.05 * (high - low)
        ax.set_xlim(min(low, -pad), max(high, pad))  # zero never sits on the frame
        ax.set_yticks(ys, [p["label"] for p in points])
        ax.set_ylim(-0.7, len(points) - 0.3)
        ax.set_xlabel(f"candidate - baseline ({unit})")
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_title("Change against the baseline, 95% intervals (green better, red worse)")
    fig.tight_layout()
    return _png(fig)


def _plot_loss_curve(results: dict) -> bytes | None:
    training = _dict(results.get("training"))
    steps = [
        h
        for h in _list(training.get("loss_history"))
        if isinstance(h, dict) and _number(h.get("loss")) is not None
    ]
    epochs = [
        e
        for e in _list(training.get("epoch_history"))
        if isinstance(e, dict) and _number(e.get("epoch")) is not None
    ]
    if not steps and not any(_number(e.get("val_loss")) is not None for e in epochs):
        return None
    import matplotlib.pyplot as plt

    by_epoch = all(_number(h.get("epoch")) is not None for h in steps)
    if by_epoch:
        train_x = [float(h["epoch"]) for h in steps]
        epoch_x = [float(e["epoch"]) for e in epochs]
    else:  # no epoch on the logged steps: place epoch ends evenly along the steps
        train_x = [float(h.get("step") or i + 1) for i, h in enumerate(steps)]
        last_epoch = max((float(e["epoch"]) for e in epochs), default=1.0) or 1.0
        epoch_x = [float(e["epoch"]) * max(train_x, default=1.0) / last_epoch for e in epochs]
    fig, ax = plt.subplots(figsize=(8, 4))
    if steps:
        ax.plot(
            train_x,
            [float(h["loss"]) for h in steps],
            color="#4c78a8",
            alpha=0.6,
            linewidth=1,
            label="training loss (per logged step)",
        )
    for key, style, label in (
        ("train_loss", "--s", "training loss (epoch mean)"),
        ("val_loss", "-o", "validation loss"),
    ):
        points = [(x, _number(e.get(key))) for x, e in zip(epoch_x, epochs, strict=True)]
        points = [(x, y) for x, y in points if y is not None]
        if points:
            colour = "#e45756" if key == "val_loss" else "#4c78a8"
            ax.plot(*zip(*points, strict=True), style, color=colour, label=label)
    best = _number(training.get("best_epoch"))
    if best is not None and by_epoch:
        ax.axvline(best, color="#888", linestyle=":", label=f"best epoch ({best:g})")
    ax.set_xlabel("epoch" if by_epoch else "step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss per step, validation loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def confusion_subset(
    labels: Sequence[Any], matrix: Sequence[Sequence[Any]], limit: int = MAX_CONFUSION_LABELS
) -> tuple[list[str], Any, str]:
    """(labels, matrix, title) to draw: all labels, or the `limit` with the most off-diagonal errors
    (as true label plus as prediction), kept in their original order."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not fit {n} labels")
    counts = np.nan_to_num(counts)
    if n <= limit:
        return [str(label) for label in labels], counts, "Confusion matrix (candidate, test set)"
    off = counts - np.diag(np.diag(counts))
    errors = off.sum(axis=0) + off.sum(axis=1)
    keep = sorted(sorted(range(n), key=lambda i: (-errors[i], i))[:limit])
    title = f"Confusion matrix (candidate, test set): the {limit} of {n} labels with the most errors"
    return [str(labels[i]) for i in keep], counts[np.ix_(keep, keep)], title


def _plot_confusion(results: dict) -> bytes | None:
    confusion = _dict(results.get("confusion"))
    if not _list(confusion.get("labels")) or not _list(confusion.get("matrix")):
        return None
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import PowerNorm

    labels, counts, title = confusion_subset(confusion["labels"], confusion["matrix"])
    n = len(labels)
    side = max(4.5, 0.3 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    top = max(1.0, float(counts.max()))
    image = ax.imshow(counts, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=top))
    ticks = np.unique(np.round(np.linspace(0, math.sqrt(top), 5) ** 2))  # even on the square-root scale
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="examples", ticks=ticks)
    font = 9 if n <= 15 else 7
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 12:
        middle = counts.max() / 2
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if counts[i, j] > middle else "black"
                    ax.text(j, i, f"{counts[i, j]:g}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_title(title, fontsize=10 if n > 15 else 11)
    fig.tight_layout()
    return _png(fig)


def _plot_per_dimension(results: dict) -> bytes | None:
    per_dimension = {str(k): _dict(v) for k, v in _dict(results.get("per_dimension")).items()}
    if not any(_number(v.get("candidate_mae")) is not None for v in per_dimension.values()):
        return None
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(per_dimension)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    for offset, key, label, colour in (
        (-0.2, "candidate_mae", "candidate", "#4c78a8"),
        (0.2, "baseline_mae", "baseline", "#bab0ac"),
    ):
        values = [_number(per_dimension[name].get(key)) for name in names]
        if any(v is not None for v in values):
            ax.bar(
                x + offset, [np.nan if v is None else v for v in values], width=0.4, label=label, color=colour
            )
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("MAE (lower is better)")
    ax.set_title("Mean absolute error per dimension")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


# --- files ----------------------------------------------------------------------------------------


def to_json_safe(value: Any) -> Any:
    """A copy that `json.dumps(allow_nan=False, sort_keys=True)` accepts: NaN and infinities become None,
    keys strings, tuples lists, numpy scalars and arrays plain numbers and lists, dates ISO strings."""
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json_safe(v) for v in value]
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _number(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return to_json_safe(value.tolist())
    return str(value)


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it into place: readers see all or nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(results: dict, folder: Path, *, plots: dict[str, bytes] | None = None) -> dict[str, Path]:
    """Write results.json, report.md and report.html into `folder` (created if needed).

    Everything is rendered before the first file is written, and each file is replaced atomically.
    `plots` saves drawing them again when the caller already made them; by default they are drawn here.
    Returns {"results": ..., "markdown": ..., "html": ...} paths.
    """
    safe = to_json_safe(results)
    texts = {
        "results": json.dumps(safe, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n",
        "markdown": render_markdown(safe),
        "html": render_html(safe, make_plots(safe) if plots is None else plots),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, name in REPORT_FILES.items():
        paths[key] = folder / name
        _write_atomic(paths[key], texts[key])
    return paths
