"""Candidate against baseline on the same examples: metrics, paired bootstrap intervals, flips.

`score` runs a family's metric modules over one system's outputs. `paired_bootstrap` draws
the same resampled example indices for both systems (seeded: the same inputs give the same
intervals), recomputes every metric on each draw and reports the percentile interval of
candidate - baseline, and of the candidate's own value (how precisely the set measures it: the
gate's evidence rule). `flipped` lists the examples the baseline got right and the candidate
got wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pulse_pipeline.core.evaluation import metrics


@dataclass
class SystemOutputs:
    """One system's answers on an evaluation set, with what its metrics need beside them."""

    predictions: list[Any]
    per_example: dict[str, list[Any]] = field(default_factory=dict)  # latencies, scores
    shared: dict[str, Any] = field(default_factory=dict)  # threshold


@dataclass
class Inputs:
    """What is common to both systems on one evaluation set."""

    references: list[Any]
    per_example: dict[str, list[Any]] = field(default_factory=dict)  # query_types, citation_expected
    shared: dict[str, Any] = field(default_factory=dict)  # sources, dimension_names, out_of_scope_label


def score(modules: list[Any], system: SystemOutputs, inputs: Inputs, idx: list[int] | None = None) -> dict:
    """Every module's result on the examples `idx` (default: all), merged into one dict."""

    def pick(values: list[Any]) -> list[Any]:
        return values if idx is None else [values[i] for i in idx]

    kwargs = {k: pick(v) for k, v in {**inputs.per_example, **system.per_example}.items()}
    kwargs.update(inputs.shared)
    kwargs.update(system.shared)
    out: dict[str, Any] = {}
    for module in modules:
        out.update(
            module._compute(
                predictions=pick(system.predictions), references=pick(inputs.references), **kwargs
            )
        )
    return out


def paired_bootstrap(
    modules: list[Any],
    candidate: SystemOutputs,
    baseline: SystemOutputs,
    inputs: Inputs,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per scalar metric both systems have: values, delta and its interval (`ci_low`,
    `ci_high`), and the candidate's interval from the same draws (`candidate_ci_low`, `_high`)."""
    import numpy as np

    cand_full = metrics.scalar_metrics(score(modules, candidate, inputs))
    base_full = metrics.scalar_metrics(score(modules, baseline, inputs))
    names = [m for m in cand_full if m in base_full]
    n = len(inputs.references)
    rng = np.random.default_rng(seed)
    deltas: dict[str, list[float]] = {m: [] for m in names}
    drawn: dict[str, list[float]] = {m: [] for m in names}  # the candidate's value on each draw
    for _ in range(resamples if n > 1 else 0):
        idx = rng.integers(0, n, n).tolist()
        c = score(modules, candidate, inputs, idx)
        b = score(modules, baseline, inputs, idx)
        for m in names:
            if isinstance(c.get(m), int | float):
                drawn[m].append(float(c[m]))
                if isinstance(b.get(m), int | float):
                    deltas[m].append(float(c[m]) - float(b[m]))
    tail = (1 - confidence) / 2 * 100

    def interval(values: list[float]) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        low, high = np.percentile(np.array(values), [tail, 100 - tail])
        return float(low), float(high)

    rows = []
    for m in names:
        low, high = interval(deltas[m])
        cand_low, cand_high = interval(drawn[m])
        rows.append(
            {
                "metric": m,
                "candidate": cand_full[m],
                "baseline": base_full[m],
                "delta": cand_full[m] - base_full[m],
                "ci_low": low,
                "ci_high": high,
                "candidate_ci_low": cand_low,
                "candidate_ci_high": cand_high,
                "higher_is_better": metrics.higher_is_better(m),
            }
        )
    return rows


def against_floor(
    references: list[Any], candidate: list[Any], floor: list[Any], *, set_name: str = "test",
    resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Top-1 accuracy of the candidate and of the family's frozen-encoder floor on the same
    examples, with a paired-bootstrap interval of the difference (candidate - floor)."""
    import numpy as np

    right_c = np.array([c == r for c, r in zip(candidate, references, strict=True)], dtype=float)
    right_f = np.array([f == r for f, r in zip(floor, references, strict=True)], dtype=float)
    n = len(references)
    rng = np.random.default_rng(seed)
    draws = [float((right_c[i] - right_f[i]).mean()) for i in (rng.integers(0, n, n) for _ in range(resamples if n > 1 else 0))]
    tail = (1 - confidence) / 2 * 100
    low, high = (float(v) for v in np.percentile(draws, [tail, 100 - tail])) if draws else (None, None)
    return {
        "set": set_name,
        "metric": "top1_accuracy",
        "examples": n,
        "candidate": float(right_c.mean()) if n else None,
        "floor": float(right_f.mean()) if n else None,
        "delta": float((right_c - right_f).mean()) if n else None,
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
    }


def flipped(
    examples: list[Any], references: list[Any], candidate_right: list[bool], baseline_right: list[bool],
    candidate: list[Any], baseline: list[Any], *, set_name: str, limit: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Examples the baseline got right and the candidate got wrong (at most `limit`)."""
    out = []
    for i, ex in enumerate(examples):
        if baseline_right[i] and not candidate_right[i]:
            out.append(
                {
                    "set": set_name,
                    "id": ex.id,
                    "input": ex.prompt_text,
                    "reference": _show(references[i]),
                    "candidate": _show(candidate[i]),
                    "baseline": _show(baseline[i]),
                }
            )
    return out[:limit]


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in value) + "]"
    return str(value)
