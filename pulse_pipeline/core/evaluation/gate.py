"""The promotion gate: DEPLOY, REVIEW or FAIL, with every threshold's outcome as the reason.

Absolute checks read the candidate's metrics; change checks read the paired-bootstrap rows
(candidate - baseline). A change check fails only when the regression is beyond the metric's
tolerance *and* the interval excludes zero, so noise on a small evaluation set does not block
a promotion, and a real regression does. Forgetting checks apply the same rule to the family's
forgetting metric on each old slice (the test splits of earlier snapshots, forgetting.py), with
`forgetting.max_drop` as the tolerance and REVIEW or FAIL as configured. Evidence checks ask for REVIEW when the evaluation is
too thin to trust either way: fewer scored examples in the evidence set than the task's minimum,
or (when configured) a candidate interval wider than allowed. The decision is the worst outcome
of all checks, so thin evidence never turns a FAIL into a REVIEW; a check that cannot run (no
value, no interval) is recorded as skipped, and a gate where no metric check (absolute or change)
could run at all asks for REVIEW rather than waving the version through.
"""

from __future__ import annotations

from typing import Any

from pulse_pipeline.core.evaluation.config import (
    MIN_EXAMPLES,
    ChangeThresholds,
    Decision,
    EvidenceConfig,
    GateConfig,
    Threshold,
)
from pulse_pipeline.core.evaluation.report_view import (
    as_number,
    format_delta,
    format_interval_width,
    format_value,
    width_decimals,
)

_RANK = {"pass": 0, "skipped": 0, "review": 1, "fail": 2}
_DECISION = {0: Decision.DEPLOY, 1: Decision.REVIEW, 2: Decision.FAIL}


def decide(
    gate: GateConfig,
    candidate: dict[str, dict[str, Any]],
    comparison: dict[str, list[dict[str, Any]]],
    main_metrics: tuple[str, ...],
    *,
    set_sizes: dict[str, int] | None = None,
    profile: str | None = None,
    floor: dict[str, Any] | None = None,
    forgetting: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`candidate`: set -> metric -> value; `comparison`: set -> bootstrap rows; `set_sizes`: set ->
    scored examples (None: the number of examples is not checked); `profile`: the task profile
    (config.profile_of) whose minimum applies when `evidence.min_examples` is not set; `floor`:
    classification, the candidate against the frozen-encoder floor (comparison.against_floor);
    `forgetting`: the old slices and their rule (forgetting.summary; None: no forgetting checks)."""
    checks = [absolute_check(m, t, candidate.get(t.set)) for m, t in gate.absolute.items()]
    if floor is not None:
        checks.append(floor_check(floor))
    change = gate.change
    for set_name in change.sets:
        rows = {r["metric"]: r for r in comparison.get(set_name, [])}
        for metric in change.metrics or main_metrics:
            if metric in rows:
                checks.append(change_check(rows[metric], set_name, change))
    if forgetting is not None:
        checks += forgetting_checks(forgetting, comparison)
    metric_checks_ran = any(c["outcome"] != "skipped" for c in checks)
    if set_sizes is not None:
        checks.append(examples_check(gate.evidence, set_sizes, profile))
    if gate.evidence.max_interval_width is not None:
        rows = comparison.get(gate.evidence.set, [])
        checks.append(interval_check(gate.evidence, rows, main_metrics, change.confidence))
    worst = max((_RANK[c["outcome"]] for c in checks), default=0)
    reasons = [c["reason"] for c in checks if c["outcome"] not in ("pass", "skipped")]
    if not metric_checks_ran:  # enough evidence of nothing is no reason to deploy
        worst = max(worst, _RANK["review"])
        reasons.append("no gate check could run (no thresholds, or no values for them): a person decides")
    return {"decision": _DECISION[worst].value, "reasons": reasons, "checks": checks}


def floor_check(floor: dict[str, Any]) -> dict[str, Any]:
    """FAIL when the candidate's top-1 accuracy is below the frozen-encoder floor's on the same
    examples: a fine-tune worse than no fine-tune (a logistic regression on the frozen
    encoder's embeddings, core/training/floor.py) is never promoted, however small the gap."""
    c, f = as_number(floor.get("candidate")), as_number(floor.get("floor"))
    where = floor.get("set", "test")
    row = {"metric": "top1_accuracy", "set": where, "kind": "floor", "value": c, "threshold": f"at least the floor, {format_value('accuracy', f)}"}
    if c is None or f is None:
        return {**row, "outcome": "skipped", "reason": f"floor: no top-1 accuracy on {where}"}
    low, high = floor.get("ci_low"), floor.get("ci_high")
    interval = f", difference {format_delta('accuracy', c - f)}"
    if low is not None and high is not None:
        confidence = round(100 * floor.get("confidence", 0.95))
        interval += f", {confidence} % interval {format_delta('accuracy', low)} to {format_delta('accuracy', high)}"
    shown = (
        f"top-1 accuracy {format_value('accuracy', c)} on {where} against the frozen-encoder floor's "
        f"{format_value('accuracy', f)}{interval}"
    )
    if c < f:
        return {**row, "outcome": "fail", "reason": f"{shown}: below the floor: FAIL"}
    return {**row, "outcome": "pass", "reason": shown}


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


def forgetting_checks(
    forgetting: dict[str, Any], comparison: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One check per old slice: its forgetting metric, candidate against production, on
    `comparison[slice]`; one skipped check when no slice is judged (`forgetting["skipped"]`)."""
    metric = forgetting["metric"]
    if forgetting.get("skipped") or not forgetting.get("slices"):
        why = forgetting.get("skipped") or "no old slice"
        return [
            {
                "metric": metric, "set": "old slices", "kind": "forgetting", "value": None,
                "threshold": _forgetting_threshold(forgetting), "outcome": "skipped",
                "reason": f"forgetting: {why}",
            }
        ]  # fmt: skip
    out = []
    for old in forgetting["slices"]:
        rows = {r["metric"]: r for r in comparison.get(old["name"], [])}
        out.append(forgetting_check(rows.get(metric), old, forgetting))
    return out


def _forgetting_threshold(forgetting: dict[str, Any]) -> str:
    text = f"worsens by <= {forgetting['max_drop']:g}"
    if forgetting.get("require_significant", True):
        text += f" (or the {forgetting.get('confidence', 0.95):.0%} interval includes 0)"
    return text


def forgetting_check(
    row: dict[str, Any] | None, old: dict[str, Any], forgetting: dict[str, Any]
) -> dict[str, Any]:
    """PASS, or `forgetting["decision"]` (review or fail) when the candidate's metric on the old
    slice is worse than production's by more than `max_drop` (and, with `require_significant`,
    the paired interval lies on the worse side of zero, as change_check asks)."""
    metric, name = forgetting["metric"], old["name"]
    tolerance = forgetting["max_drop"]
    level = f"{forgetting.get('confidence', 0.95):.0%}"
    significant = forgetting.get("require_significant", True)
    where = f"forgetting on {name} (snapshot {old['dataset_version']})"
    delta = as_number((row or {}).get("delta"))
    base = {
        "metric": metric, "set": name, "kind": "forgetting", "value": delta,
        "threshold": _forgetting_threshold(forgetting),
    }  # fmt: skip
    if row is None or delta is None:
        return {**base, "outcome": "skipped", "reason": f"{where}: no {metric} on this slice"}
    low, high = as_number(row.get("ci_low")), as_number(row.get("ci_high"))
    if significant and (low is None or high is None):
        return {**base, "outcome": "skipped", "reason": f"{where}: {metric}: no interval (too few examples)"}
    higher = row.get("higher_is_better", True)
    loss = -delta if higher else delta  # positive: the candidate is worse, in the metric's units
    surely_worse = low is not None and high is not None and (high < 0 if higher else low > 0)
    figures = (
        f"{metric} {format_value(metric, row['baseline'])} (production) to "
        f"{format_value(metric, row['candidate'])} (candidate), {format_delta(metric, delta, low, high)}"
        + (f" ({level} interval)" if low is not None and high is not None else "")
    )
    if loss > tolerance and (surely_worse or not significant):
        outcome = forgetting["decision"]
        reason = f"{where}: {figures}; max drop {tolerance:g}: {outcome.upper()}"
    elif loss > tolerance:
        outcome = "pass"
        reason = f"{where}: {figures}; worse by more than {tolerance:g}, but the interval includes 0"
    else:
        outcome = "pass"
        reason = f"{where}: {figures}"
    return {**base, "outcome": outcome, "reason": reason}


def examples_check(
    evidence: EvidenceConfig, set_sizes: dict[str, int], profile: str | None
) -> dict[str, Any]:
    """REVIEW when the evidence set has fewer scored examples than `min_examples` (default: the
    task profile's MIN_EXAMPLES), or none at all."""
    set_name = evidence.set
    minimum = evidence.min_examples or MIN_EXAMPLES.get(profile or "")
    n = int(set_sizes.get(set_name) or 0)
    row = {"metric": "examples", "set": set_name, "kind": "evidence", "value": n, "minimum": minimum}
    if minimum is None:
        return {
            **row,
            "threshold": "n/a",
            "outcome": "skipped",
            "reason": "evidence: no minimum number of examples (no evidence.min_examples, no task profile)",
        }
    row["threshold"] = f"at least {minimum} examples"
    examples = f"{n} {set_name} example{'' if n == 1 else 's'}"
    if n <= 0:
        return {**row, "outcome": "review", "reason": f"not enough evidence: no {set_name} examples"}
    if n < minimum:
        return {
            **row,
            "outcome": "review",
            "reason": f"not enough evidence: {examples}, fewer than {minimum}",
        }
    return {**row, "outcome": "pass", "reason": f"evidence: {examples} (at least {minimum})"}


def interval_check(
    evidence: EvidenceConfig, rows: list[dict[str, Any]], main_metrics: tuple[str, ...], confidence: float
) -> dict[str, Any]:
    """REVIEW when the candidate's bootstrap interval of the evidence metric (default: the first
    main metric with a value) is wider than `max_interval_width`, in the metric's own units."""
    set_name, limit = evidence.set, evidence.max_interval_width
    by_metric = {r["metric"]: r for r in rows}
    metric = evidence.metric or next(
        (m for m in main_metrics if as_number(by_metric.get(m, {}).get("candidate")) is not None), None
    )
    level = f"{confidence:.0%}"
    d = width_decimals(limit)
    row = {
        "metric": metric or "?",
        "set": set_name,
        "kind": "evidence",
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "limit": limit,
        "threshold": f"{level} interval at most {limit:.{d}f} wide",
    }
    found = by_metric.get(metric) if metric else None
    low, high = (as_number((found or {}).get(k)) for k in ("candidate_ci_low", "candidate_ci_high"))
    if low is None or high is None:
        what = (
            f"no interval of {metric} on {set_name}"
            if metric
            else f"no main metric with a value on {set_name}"
        )
        return {**row, "outcome": "skipped", "reason": f"evidence: {what}"}
    width = high - low
    shown = format_interval_width(width, low, high, limit)
    d = width_decimals(width, limit)
    said = f"the {level} interval of {metric} on {set_name} is {shown}"
    row = {**row, "value": width, "ci_low": low, "ci_high": high}
    if width > limit:
        return {
            **row,
            "outcome": "review",
            "reason": f"not enough evidence: {said}, wider than {limit:.{d}f}",
        }
    return {**row, "outcome": "pass", "reason": f"evidence: {said} (at most {limit:.{d}f})"}
