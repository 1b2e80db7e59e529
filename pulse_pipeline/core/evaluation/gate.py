"""The promotion gate: DEPLOY, REVIEW or FAIL, with every threshold's outcome as the reason.

Absolute checks read the candidate's metrics; change checks read the paired-bootstrap rows
(candidate - baseline). A change check fails only when the regression is beyond the metric's
tolerance *and* the interval excludes zero, so noise on a small evaluation set does not block
a promotion, and a real regression does. The decision is the worst outcome of all checks.
"""

from __future__ import annotations

from typing import Any

from pulse_pipeline.core.evaluation.config import Decision, GateConfig, Threshold

_RANK = {"pass": 0, "review": 1, "fail": 2}
_DECISION = {0: Decision.DEPLOY, 1: Decision.REVIEW, 2: Decision.FAIL}
_RATES = ("accuracy", "recall", "f1", "rate", "presence", "validity", "consistency", "exact_match", "valid")


def show(metric: str, value: float) -> str:
    """A value as a person reads it: rates in percent, the rest with 3 significant digits."""
    if metric.endswith(_RATES) and "error" not in metric:
        return f"{100 * value:.1f}%"
    if metric.endswith("_seconds"):
        return f"{value:.3g} s"
    return f"{value:.3g}"


def decide(
    gate: GateConfig,
    candidate: dict[str, dict[str, Any]],
    comparison: dict[str, list[dict[str, Any]]],
    main_metrics: tuple[str, ...],
) -> dict[str, Any]:
    """`candidate`: set -> metric -> value; `comparison`: set -> bootstrap rows."""
    checks = [absolute_check(m, t, candidate.get(t.set, {})) for m, t in gate.absolute.items()]
    checks = [c for c in checks if c is not None]
    change = gate.change
    wanted = change.metrics or main_metrics
    for set_name in change.sets:
        rows = {r["metric"]: r for r in comparison.get(set_name, [])}
        for metric in wanted:
            if metric in rows:
                checks.append(
                    change_check(rows[metric], set_name, change.tolerance_for(metric), change.on_regression)
                )
    worst = max((_RANK[c["outcome"]] for c in checks), default=0)
    return {
        "decision": _DECISION[worst].value,
        "reasons": [c["reason"] for c in checks if c["outcome"] != "pass"],
        "checks": checks,
    }


def absolute_check(metric: str, t: Threshold, values: dict[str, Any]) -> dict[str, Any] | None:
    value = values.get(metric)
    bounds = _describe_bounds(metric, t)
    row = {"metric": metric, "set": t.set, "kind": "absolute", "value": value, "threshold": bounds}
    if not isinstance(value, int | float):
        if not t.required:
            return None
        return {**row, "outcome": "fail", "reason": f"{metric} on {t.set}: no value (required)"}
    v = float(value)
    outcome, crossed = "pass", ""
    for name, bound, fails, outcome_if in (
        ("fail_below", t.fail_below, lambda b: v < b, "fail"),
        ("fail_above", t.fail_above, lambda b: v > b, "fail"),
        ("review_below", t.review_below, lambda b: v < b, "review"),
        ("review_above", t.review_above, lambda b: v > b, "review"),
    ):
        if bound is not None and fails(bound) and _RANK[outcome_if] > _RANK[outcome]:
            outcome, crossed = outcome_if, f"{'<' if 'below' in name else '>'} {show(metric, bound)}"
    if outcome == "pass":
        reason = f"{metric} {show(metric, v)} on {t.set} meets {bounds}"
    else:
        reason = f"{metric} {show(metric, v)} on {t.set} {crossed}: {outcome.upper()}"
    return {**row, "outcome": outcome, "reason": reason}


def _describe_bounds(metric: str, t: Threshold) -> str:
    parts = []
    if t.fail_below is not None:
        parts.append(f"fail below {show(metric, t.fail_below)}")
    if t.review_below is not None:
        parts.append(f"review below {show(metric, t.review_below)}")
    if t.review_above is not None:
        parts.append(f"review above {show(metric, t.review_above)}")
    if t.fail_above is not None:
        parts.append(f"fail above {show(metric, t.fail_above)}")
    return ", ".join(parts)


def change_check(
    row: dict[str, Any], set_name: str, tolerance: float, on_regression: Decision
) -> dict[str, Any]:
    metric, delta = row["metric"], row["delta"]
    # Positive `loss` is a regression, in the metric's own units, whichever way it points.
    sign = 1 if row["higher_is_better"] else -1
    loss = -sign * delta
    low, high = row["ci_low"], row["ci_high"]
    excludes_zero = low is not None and high is not None and (low > 0 or high < 0)
    interval = f"[{low:+.3g}, {high:+.3g}]" if low is not None else "[n/a]"
    base = {
        "metric": metric,
        "set": set_name,
        "kind": "change",
        "value": delta,
        "threshold": f"regression <= {tolerance:g} (or interval includes 0)",
    }
    if loss > tolerance and excludes_zero:
        outcome = "fail" if on_regression is Decision.FAIL else "review"
        reason = (
            f"{metric} fell from {show(metric, row['baseline'])} to {show(metric, row['candidate'])} on "
            f"{set_name} (delta {delta:+.3g}, 95% interval {interval}, tolerance {tolerance:g}): {outcome.upper()}"
        )
    else:
        outcome = "pass"
        reason = f"{metric} delta {delta:+.3g} on {set_name}, interval {interval}"
    return {**base, "outcome": outcome, "reason": reason}
