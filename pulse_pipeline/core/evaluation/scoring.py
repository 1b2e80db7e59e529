"""One evaluation set through the candidate and its baseline: metrics, bootstrap intervals,
flipped examples, per-category figures and the optional LLM judge, written into the results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pulse_pipeline.core.evaluation import metrics
from pulse_pipeline.core.evaluation.comparison import Inputs, SystemOutputs, flipped, paired_bootstrap, score
from pulse_pipeline.core.evaluation.inference import Predictions
from pulse_pipeline.core.evaluation.sets import EvalExample, EvalSet, load_sources
from pulse_pipeline.core.families import FamilyConfig, TaskKind

if TYPE_CHECKING:
    from pulse_pipeline.core.evaluation.judge import JudgeSettings


@dataclass
class SetScorer:
    """Runs one evaluation set through both systems, the metrics, the bootstrap and the flips."""

    family: FamilyConfig
    profile: str
    modules: list[Any]  # the metric modules, called directly on bootstrap resamples
    combined: Any  # the same modules as one `evaluate.combine`, for the full-set figures
    systems: Any  # runner.Systems: answer(examples, baseline=...) and thresholds
    judge: JudgeSettings | None = None  # the optional LLM judge (chat families); None: skipped

    def score_set(
        self, eval_set: EvalSet, results: dict[str, Any], log: Callable[[str], None], *, judged: bool = True
    ) -> None:
        """`judged`: whether the LLM judge (when configured) scores it too; old slices are not
        judged, its figures are the candidate's alone and compare nothing."""
        family, ev = self.family, self.family.evaluation
        inputs = _inputs(eval_set, _shared_inputs(family))
        cand = _outputs(
            self.systems.answer(eval_set.examples, baseline=False), self.systems.thresholds.get("candidate")
        )
        base = _outputs(
            self.systems.answer(eval_set.examples, baseline=True), self.systems.thresholds.get("baseline")
        )
        cand_metrics = self.combined.compute(
            predictions=cand.predictions, references=inputs.references,
            **inputs.per_example, **inputs.shared, **cand.per_example, **cand.shared,
        )  # fmt: skip
        base_metrics = score(self.modules, base, inputs)
        results["sets"].append(
            {
                "name": eval_set.name,
                "examples": len(eval_set),
                "source": eval_set.source,
                "not_used": eval_set.not_used,
            }
        )
        results["metrics"][eval_set.name] = {
            "candidate": metrics.scalar_metrics(cand_metrics),
            "baseline": metrics.scalar_metrics(base_metrics),
        }
        change = ev.gate.change
        results["comparison"][eval_set.name] = paired_bootstrap(
            self.modules, cand, base, inputs,
            resamples=change.resamples, confidence=change.confidence, seed=change.seed,
        )  # fmt: skip
        shown_c, shown_b = _as_judged(family, cand), _as_judged(family, base)
        right_c = _right(family, self.profile, self.modules, eval_set.examples, cand, inputs, shown_c)
        right_b = _right(family, self.profile, self.modules, eval_set.examples, base, inputs, shown_b)
        results["flipped"] += flipped(
            eval_set.examples, inputs.references, right_c, right_b, shown_c, shown_b,
            set_name=eval_set.name, limit=ev.max_flipped,
        )  # fmt: skip
        if cand_metrics.get("unknown_sources"):
            results.setdefault("unknown_sources", {})[eval_set.name] = cand_metrics["unknown_sources"]
        if eval_set.name == "test":
            _task_extras(family, results, cand_metrics, base_metrics)
        by_category = _by_category(eval_set, self.modules, cand, inputs)
        if by_category:
            results.setdefault("by_category", {})[eval_set.name] = by_category
        if family.task is TaskKind.chat_sft and judged:
            _llm_judge(self.judge, results, eval_set, cand.predictions, log)


def _shared_inputs(family: FamilyConfig) -> dict[str, Any]:
    ev = family.evaluation
    shared: dict[str, Any] = {}
    if family.task is TaskKind.regression:
        shared["dimension_names"] = list(family.dimensions or ())
    if family.task is TaskKind.classification:
        shared["out_of_scope_label"] = ev.out_of_scope_label
    if family.task is TaskKind.chat_sft:
        # No registry: validity and unknown ids are n/a, not "every citation is invalid".
        shared["sources"] = load_sources(ev.sources_file) if ev.sources_file else None
    if ev.script:
        shared["script"] = ev.script
    return shared


def _inputs(eval_set: EvalSet, shared: dict[str, Any]) -> Inputs:
    examples = eval_set.examples
    per_example: dict[str, list[Any]] = {}
    if any(e.query_type is not None for e in examples):
        per_example["query_types"] = [e.query_type for e in examples]
    if any(e.citation_expected is not None for e in examples):
        per_example["citation_expected"] = [bool(e.citation_expected) for e in examples]
    return Inputs([e.reference for e in examples], per_example, dict(shared))


def _outputs(p: Predictions, threshold: float | None) -> SystemOutputs:
    per_example: dict[str, list[Any]] = {"latencies": p.latencies}
    shared: dict[str, Any] = {}
    if threshold is not None and p.scores is not None:
        per_example["scores"] = p.scores
        shared["threshold"] = threshold
    return SystemOutputs(p.outputs, per_example, shared)


def _as_judged(family: FamilyConfig, system: SystemOutputs) -> list[Any]:
    """The answers as the metrics judged them: below the out-of-scope threshold, the OOS label."""
    scores, threshold = system.per_example.get("scores"), system.shared.get("threshold")
    if scores is None or threshold is None:
        return system.predictions
    from pulse_pipeline.core.evaluation.metrics.classification import apply_threshold

    return apply_threshold(system.predictions, scores, threshold, family.evaluation.out_of_scope_label)


def _right(
    family: FamilyConfig, profile: str, modules: list[Any], examples: list[EvalExample],
    system: SystemOutputs, inputs: Inputs, answers: list[Any],
) -> list[bool]:  # fmt: skip
    """Whether each answer is right, for the list of flipped examples."""
    if profile == "classification":
        return [a == ex.reference for a, ex in zip(answers, examples, strict=True)]
    if profile == "regression":
        lo, hi = family.score_range
        return [
            sum(abs(a - b) for a, b in zip(pred, ex.reference, strict=True)) / len(pred) <= 0.1 * (hi - lo)
            for pred, ex in zip(answers, examples, strict=True)
        ]  # within a tenth of the scale on average
    key = "field_accuracy" if profile == "chat_structured" else "answer_accuracy"
    return [score(modules, system, inputs, [i]).get(key) == 1.0 for i in range(len(examples))]


def _task_extras(family: FamilyConfig, results: dict, cand: dict, base: dict) -> None:
    if family.task is TaskKind.classification and "confusion_matrix" in cand:
        results["confusion"] = cand["confusion_matrix"]
    if family.task is TaskKind.regression:
        results["per_dimension"] = {
            d: {"candidate_mae": cand.get(f"mae_{d}"), "baseline_mae": base.get(f"mae_{d}")}
            for d in family.dimensions or ()
        }


def _by_category(eval_set: EvalSet, modules: list[Any], system: SystemOutputs, inputs: Inputs) -> dict:
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(eval_set.examples):
        if ex.category:
            groups.setdefault(ex.category, []).append(i)
    return {
        cat: {"examples": len(idx), **metrics.scalar_metrics(score(modules, system, inputs, idx))}
        for cat, idx in sorted(groups.items())
    }


def _llm_judge(
    settings: JudgeSettings | None,
    results: dict,
    eval_set: EvalSet,
    answers: list[str],
    log: Callable[[str], None],
) -> None:
    """The optional LLM judge (`settings`, from PULSE_JUDGE_URL) on the candidate's answers:
    relevance, correctness and completeness join the set's metrics; when it cannot run, the
    report says why."""
    from pulse_pipeline.core.evaluation.judge import (
        NOT_CONFIGURED,
        JudgeItem,
        JudgeUnavailable,
        judge_answers,
    )

    if settings is None:
        note = {"what": "llm_judge", "reason": NOT_CONFIGURED}
        if note not in results["skipped"]:
            results["skipped"].append(note)
        return
    items = [
        JudgeItem(ex.id, ex.prompt_text, str(ex.reference), answer)
        for ex, answer in zip(eval_set.examples, answers, strict=True)
    ]
    try:
        judged = judge_answers(items, settings)
    except JudgeUnavailable as exc:
        results["skipped"].append({"what": f"llm_judge on {eval_set.name}", "reason": str(exc)})
        return
    log(f"{eval_set.name}: LLM judge {judged.model}: {judged.judged} judged, {judged.unparsed} unparsed")
    results["metrics"][eval_set.name]["candidate"].update(judged.to_metrics())
    results.setdefault("judge", {})[eval_set.name] = judged.to_report()
