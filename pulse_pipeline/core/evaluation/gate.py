"""The promotion gate: DEPLOY, REVIEW or FAIL, with every threshold's outcome as the reason.

Absolute checks read the candidate's metrics; change checks read the paired-bootstrap rows
(candidate - baseline). A change check fails only when the regression is beyond the metric's
tolerance *and* the interval excludes zero, so noise on a small evaluation set does not block
a promotion, and a real regression does. The decision is the worst outcome of all checks; a
check that cannot run (no value, no interval) is recorded as skipped, and a gate where no check
could run at all asks for REVIEW rather than waving the version through.
"""

from __future__ import annotations

from typing import Any

from pulse_pipeline.core.evaluation.config import ChangeThresholds, Decision, GateConfig, Threshold
from pulse_pipeline.core.evaluation.report_view import as_number, format_delta, format_value

_RANK = {"pass": 0, "skipped": 0, "review": 1, "fail": 2}
_DECISION = {0: Decision.DEPLOY, 1: Decision.REVIEW, 2: Decision.FAIL}


def decide(
    gate: GateConfig,
    candidate: dict[str, dict[str, Any]],
    comparison: dict[str, list[dict[str, Any]]],
    main_metrics: tuple[str, ...],
) -> dict[str, Any]:
    """`candidate`: set -> metric -> value; `comparison`: set -> bootstrap rows."""
    checks = [absolute_check(m, t, candidate.get(t.set)) for m, t in gate.absolute.items()]
    change = gate.change
    for set_name in change.sets:
        rows = {r["metric"]: r for r in comparison.get(set_name, [])}
        for metric in change.metrics or main_metrics:
            if metric in rows:
                checks.append(change_check(rows[metric], set_name, change))
    worst = max((_RANK[c["outcome"]] for c in checks), default=0)
    reasons = [c["reason"] for c in checks if c["outcome"] not in ("pass", "skipped")]
    if not any(c["outcome"] != "skipped" for c in checks):
        worst = max(worst, _RANK["review"])
        reasons.append("no gate check could run (no thresholds, or no values for them): a person decides")
    return {"decision": _DECISION[worst].value, "reasons": reasons, "checks": checks}


def absolute_check(metric: str, t: Threshold, values: dict[str, Any] | None) -> dict[str, Any]:
    """REVIEW at or above `review_above` (DEPLOY needs a value below it), FAIL above `fail_above`;
    REVIEW below `review_below`, FAIL below `fail_below`."""
    bounds = _describe_bounds(metric, t)
    v = as_number((values or {}).get(metric))
    row = {"metric": metric, "set": t.set, "kind": "absolute", "value": v, "threshold": bounds}
    if v is None:
        where = f"no {t.set} set" if values is None else f"no value on {t.set} (no applicable example)"
        outcome = "fail" if t.required else "skipped"
        return {
            **row,
            "outcome": outcome,
            "reason": f"{metric}: {where}" + (" (required): FAIL" if t.required else ""),
        }
    outcome, crossed = "pass", ""
    for bound, crosses, outcome_if, text in (
        (t.fail_below, lambda b: v < b, "fail", "<"),
        (t.fail_above, lambda b: v > b, "fail", ">"),
        (t.review_below, lambda b: v < b, "review", "<"),
        (t.review_above, lambda b: v >= b, "review", ">="),
    ):
        if bound is not None and crosses(bound) and _RANK[outcome_if] > _RANK[outcome]:
            outcome, crossed = outcome_if, f"{text} {format_value(metric, bound)}"
    shown = format_value(metric, v)
    if outcome == "pass":
        reason = f"{metric} {shown} on {t.set} meets {bounds}"
    else:
        reason = f"{metric} {shown} on {t.set} {crossed}: {outcome.upper()}"
    return {**row, "outcome": outcome, "reason": reason}


def _describe_bounds(metric: str, t: Threshold) -> str:
    parts = []
    for name, bound in (
        ("fail below", t.fail_below),
        ("review below", t.review_below),
        ("review at or above", t.review_above),
        ("fail above", t.fail_above),
    ):
        if bound is not None:
            parts.append(f"{name} {format_value(metric, bound)}")
    return ", ".join(parts)


def change_check(row: dict[str, Any], set_name: str, change: ChangeThresholds) -> dict[str, Any]:
    metric, delta = row["metric"], row["delta"]
    tolerance = change.tolerance_for(metric)
    level = f"{change.confidence:.0%}"
    base = {
        "metric": metric,
        "set": set_name,
        "kind": "change",
        "value": delta,
        "threshold": f"worsens by <= {tolerance:g} (or the {level} interval includes 0)",
    }
    low, high = row["ci_low"], row["ci_high"]
    if as_number(delta) is None or as_number(low) is None or as_number(high) is None:
        return {
            **base,
            "outcome": "skipped",
            "reason": f"{metric} on {set_name}: no interval (too few examples)",
        }
    # Positive `loss` is a regression, in the metric's own units, whichever way it points.
    loss = -delta if row["higher_is_better"] else delta
    shown = format_delta(metric, delta, low, high)
    if loss > tolerance and (low > 0 or high < 0):
        outcome = "fail" if change.on_regression is Decision.FAIL else "review"
        reason = (
            f"{metric} worsened from {format_value(metric, row['baseline'])} to "
            f"{format_value(metric, row['candidate'])} on {set_name} ({shown}, {level} interval; "
            f"tolerance {tolerance:g}): {outcome.upper()}"
        )
    else:
        outcome = "pass"
        reason = f"{metric} on {set_name}: {shown}"
    return {**base, "outcome": outcome, "reason": reason}
