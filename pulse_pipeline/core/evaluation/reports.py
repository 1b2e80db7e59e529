"""Evaluation reports: one evaluation's results as Markdown, as a self-contained HTML page, and as files.

`render_markdown` is what a person reads in the Dagster UI (asset metadata) and in `eval/report.md`;
`render_html` (report_html) is the same content with the plots (`make_plots`, report_plots) embedded,
one file that opens and prints anywhere; `write_reports` writes both beside `results.json`, each file
whole or absent. Both renderers read one view built from the results dict (report_view), so they never
disagree, and every section is optional: a missing or empty key leaves its section out, a None value
reads "n/a".
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pulse_pipeline.core.evaluation.report_html import render_html
from pulse_pipeline.core.evaluation.report_plots import make_plots
from pulse_pipeline.core.evaluation.report_view import as_number, build_view, set_heading

__all__ = [
    "REPORT_FILES",
    "make_plots",
    "md_escape",
    "render_html",
    "render_markdown",
    "to_json_safe",
    "write_reports",
]

REPORT_FILES = {"results": "results.json", "markdown": "report.md", "html": "report.html"}


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


def _metric_label(row: dict[str, Any]) -> str:
    return f"{row['metric']} (lower is better)" if row["lower_is_better"] else row["metric"]


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
        _md_forgetting,
        _md_flipped,
        _md_confusions,
        _md_dimensions,
        _md_categories,
        _md_unknown_sources,
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
        lines += ["", f"### {md_escape(set_heading(set_view))}", ""]
        rows = [
            (_metric_label(r), r["candidate"], r["baseline"], r["delta"], r["verdict"])
            for r in set_view["rows"]
        ]
        lines += _md_table(headers, rows, right=(1, 2, 3)) if rows else ["No metrics for this set."]
    return lines


def _md_forgetting(view: dict[str, Any]) -> list[str]:
    forgetting = view["forgetting"]
    if not forgetting:
        return []
    lines = ["## Forgetting (old slices)", "", md_escape(forgetting["rule"])]
    fields = ("slice", "snapshot", "created", "examples", "baseline", "candidate", "delta", "interval")
    if forgetting["rows"]:
        rows = [[*(row[f] for f in fields), _md_outcome(row["verdict"])] for row in forgetting["rows"]]
        lines += ["", *_md_table((*fields, "verdict"), rows, right=(3, 4, 5, 6, 7))]
    if forgetting["notes"]:
        lines += ["", *(f"- {md_escape(note)}" for note in forgetting["notes"])]
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


def _md_categories(view: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for table in view["categories"]:
        lines += [f"## By category ({md_escape(table['set'])}, candidate)", ""]
        headers = ("category", "examples", *table["columns"])
        lines += [*_md_table(headers, table["rows"], right=tuple(range(1, len(headers)))), ""]
    return lines[:-1]


def _md_unknown_sources(view: dict[str, Any]) -> list[str]:
    if not view["unknown_sources"]:
        return []
    lines = ["## Citations of unknown sources (not in the source registry)", ""]
    return lines + [
        f"- **{md_escape(set_name)}:** {md_escape(ids)}" for set_name, ids in view["unknown_sources"]
    ]


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
        return as_number(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return to_json_safe(value.tolist())
    return str(value)


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
    from pulse_pipeline.core.artifacts import LocalArtifactStore

    store = LocalArtifactStore(folder)  # its write_bytes is the atomic temp-file-and-rename
    for key, name in REPORT_FILES.items():
        store.write_bytes(name, texts[key].encode("utf-8"))
    return {key: store.local_path(name) for key, name in REPORT_FILES.items()}
