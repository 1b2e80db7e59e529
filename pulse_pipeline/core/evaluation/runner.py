"""One adapter version judged end to end: evaluation sets -> inference -> metrics -> gate -> reports.

`evaluate_version` is what the Dagster `<family>/eval_report` asset, `pulse evaluate` and the
end of `pulse train` call. The candidate and its baseline (the production version named by
current.json, or the base model for a family's first version) answer the same examples; the
results, the decision and the reports land in the version's `eval/` folder, and the metrics
in the training's MLflow run.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulse_pipeline.core import adapters, registry
from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.evaluation import metrics
from pulse_pipeline.core.evaluation.comparison import (
    Inputs,
    SystemOutputs,
    finite,
    flipped,
    paired_bootstrap,
    score,
)
from pulse_pipeline.core.evaluation.config import DEFAULT_METRICS, MAIN_METRICS, profile_of
from pulse_pipeline.core.evaluation.gate import decide
from pulse_pipeline.core.evaluation.inference import AdapterPredictor, Predictions
from pulse_pipeline.core.evaluation.sets import (
    EvalExample,
    EvalSet,
    from_records_file,
    from_snapshot,
    load_sources,
)
from pulse_pipeline.core.families import FamilyConfig, PulseConfig, TaskKind

EVAL_FOLDER = "eval"


class EvaluationError(RuntimeError):
    """An evaluation that cannot run; the message says what to do."""


@dataclass
class Evaluation:
    results: dict[str, Any]
    report_uri: str  # eval/report.html of the version in the artifact store
    markdown: str

    @property
    def decision(self) -> str:
        return self.results["gate"]["decision"]


def evaluate_version(
    family: FamilyConfig,
    config: PulseConfig,
    artifacts: ArtifactStore,
    *,
    home: Path,
    version: str | None = None,
    eval_files: tuple[Path, ...] = (),
    tracking_uri: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Evaluation:
    """Judge `version` (default: the newest) against production, or the base model."""
    version = version or _newest(artifacts, family)
    meta = adapters.read_metadata(artifacts, family.name, version)
    dataset = meta["dataset_version"]
    ev = family.evaluation
    profile = profile_of(family.task.value, tuple(family.annotation_kinds))
    names = list(ev.metrics or DEFAULT_METRICS[profile])
    if ev.script and "script_consistency" not in names:
        names.append("script_consistency")
    sets = _evaluation_sets(family, config, artifacts, dataset, eval_files)
    if not sets:
        raise EvaluationError(
            f"{family.name} {version}: no evaluation examples (empty test split, no golden file)"
        )
    systems = _load_systems(family, artifacts, home, version, dataset, log)
    evaluator = _SetEvaluator(
        family, profile, [metrics.load(n) for n in names], metrics.combine(names), systems
    )

    results: dict[str, Any] = {
        "family": family.name,
        "task": family.task.value,
        "version": version,
        "dataset_version": dataset,
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "baseline": systems.baseline_info,
        "inference": systems.inference,
        "metric_modules": names,
        "sets": [],
        "metrics": {},
        "comparison": {},
        "flipped": [],
        "skipped": list(systems.notes),
        "training": _training_summary(meta),
    }
    if systems.thresholds:
        results["threshold"] = {
            "out_of_scope_label": ev.out_of_scope_label,
            "value": systems.thresholds["candidate"],
            "baseline_value": systems.thresholds["baseline"],
            "chosen_on": "val",
        }
    for eval_set in sets:
        log(f"{eval_set.name}: {len(eval_set)} examples")
        evaluator.evaluate_set(eval_set, results, log)
    results["gate"] = decide(
        ev.gate,
        {s: v["candidate"] for s, v in results["metrics"].items()},
        results["comparison"],
        MAIN_METRICS[profile],
    )
    return _publish(family, artifacts, version, finite(results), meta, tracking_uri)


@dataclass
class _Systems:
    """The candidate and its baseline, ready to answer; `thresholds`: each one's out-of-scope
    threshold (classification with an OOS label)."""

    candidate: Any  # AdapterPredictor, or VllmPredictor for chat families with PULSE_VLLM_URL
    baseline: Any  # the candidate itself when the baseline is its base model
    baseline_is_adapter: bool  # production: its adapter on; base model: the candidate's off
    baseline_info: dict[str, Any]
    thresholds: dict[str, float] = field(default_factory=dict)
    inference: str = ""  # how the answers were made, for the report
    notes: list[dict[str, str]] = field(default_factory=list)  # what was not done as configured, and why

    def answer(self, examples: list[EvalExample], *, baseline: bool) -> Predictions:
        if baseline:
            return self.baseline.predict(examples, use_adapter=self.baseline_is_adapter)
        return self.candidate.predict(examples)


def _evaluation_sets(
    family: FamilyConfig,
    config: PulseConfig,
    artifacts: ArtifactStore,
    dataset: str,
    eval_files: tuple[Path, ...],
) -> list[EvalSet]:
    sets = [from_snapshot(family, artifacts, dataset, "test")]
    if family.evaluation.golden_file is not None:
        sets.append(from_records_file(family, config, family.evaluation.golden_file, "golden"))
    sets += [from_records_file(family, config, Path(f), Path(f).stem) for f in eval_files]
    return [s for s in sets if s.examples]


def _load_systems(
    family: FamilyConfig, artifacts: ArtifactStore, home: Path, version: str, dataset: str,
    log: Callable[[str], None],
) -> _Systems:  # fmt: skip
    current = registry.read_current(artifacts, family.name)
    production = current["version"] if current and current.get("version") != version else None
    cache = home / "cache" / "adapters"
    folders = {v: adapters.local_folder(artifacts, family.name, v, cache) for v in (version, production) if v}
    server, note = _vllm_server(family, folders[version])
    if server is not None:
        from pulse_pipeline.core.evaluation.inference import VllmPredictor
        from pulse_pipeline.core.serving import served_name

        def load(v: str) -> Any:
            return VllmPredictor(
                server,
                served_name(family.name, v),
                folders[v],
                max_new_tokens=family.evaluation.max_new_tokens,
            )

        inference = f"vLLM server at {server.url}"
    else:
        from pulse_pipeline.core.training.models import load_adapter

        def load(v: str) -> Any:
            return _predictor(family, load_adapter(folders[v]))

        inference = "peft on this machine"
    log(f"loading {version} ({inference})")
    candidate = load(version)
    if production:
        log(f"baseline: production version {production}")
        systems = _Systems(candidate, load(production), True, {"kind": "production", "version": production})
    else:
        description = _base_description(family)
        log(f"baseline: {description}")
        if family.task is not TaskKind.chat_sft:
            candidate.fit_base_head(from_snapshot(family, artifacts, dataset, "train").examples)
        info = {"kind": "base_model", "version": None, "description": description}
        systems = _Systems(candidate, candidate, False, info)
    systems.inference = inference
    systems.notes = [note] if note else []
    systems.thresholds = _oos_thresholds(family, artifacts, dataset, systems)
    return systems


def _vllm_server(family: FamilyConfig, folder: Path) -> tuple[Any, dict[str, str] | None]:
    """The vLLM server chat answers go through (PULSE_VLLM_URL), when it serves this adapter's
    base model; else None, and a note saying why peft answered instead."""
    import json

    from pulse_pipeline.core import serving

    server = serving.from_env() if family.task is TaskKind.chat_sft else None
    if server is None:
        return None, None
    try:
        base = server.base_model()
    except serving.ServingError as exc:
        return None, {"what": "vllm", "reason": f"{exc}; answered through peft instead"}
    ours = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    if Path(base).name != Path(ours).name:  # vLLM would load the adapter and silently ignore it
        reason = f"the server at {server.url} serves {base}, this adapter is for {ours}; answered through peft instead"
        return None, {"what": "vllm", "reason": reason}
    return server, None


@dataclass
class _SetEvaluator:
    """Runs one evaluation set through both systems, the metrics, the bootstrap and the flips."""

    family: FamilyConfig
    profile: str
    modules: list[Any]  # the metric modules, called directly on bootstrap resamples
    combined: Any  # the same modules as one `evaluate.combine`, for the full-set figures
    systems: _Systems

    def evaluate_set(self, eval_set: EvalSet, results: dict[str, Any], log: Callable[[str], None]) -> None:
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
        if eval_set.name == "test":
            _task_extras(family, results, cand_metrics, base_metrics)
        by_category = _by_category(eval_set, self.modules, cand, inputs)
        if by_category:
            results.setdefault("by_category", {})[eval_set.name] = by_category
        if family.task is TaskKind.chat_sft:
            _llm_judge(results, eval_set, cand.predictions, log)


# -- pieces ------------------------------------------------------------------------------------


def _newest(artifacts: ArtifactStore, family: FamilyConfig) -> str:
    found = adapters.versions(artifacts, family.name)
    if not found:
        raise EvaluationError(
            f"{family.name} has no trained version yet: run `pulse train --family {family.name}`"
        )
    return found[-1]


def _predictor(family: FamilyConfig, loaded: Any) -> AdapterPredictor:
    ev = family.evaluation
    max_length = 512 if family.task is TaskKind.chat_sft else 256
    return AdapterPredictor(
        loaded, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, max_length=max_length
    )


def _base_description(family: FamilyConfig) -> str:
    if family.task is TaskKind.chat_sft:
        return f"{family.base_model} without an adapter"
    head = "nearest label centroid" if family.task is TaskKind.classification else "ridge regression"
    return f"{family.base_model} without an adapter ({head} fitted on the train split's embeddings)"


def _oos_thresholds(
    family: FamilyConfig, artifacts: ArtifactStore, dataset: str, systems: _Systems
) -> dict[str, float]:
    """Classification with an out-of-scope label: each system's threshold, chosen on val."""
    label = family.evaluation.out_of_scope_label
    if family.task is not TaskKind.classification or label not in family.label_set:
        return {}
    val = from_snapshot(family, artifacts, dataset, "val").examples
    if not val:
        return {}
    from pulse_pipeline.core.evaluation.metrics.classification import choose_threshold

    refs = [e.reference for e in val]
    out = {}
    for name in ("candidate", "baseline"):
        p = systems.answer(val, baseline=name == "baseline")
        out[name] = float(choose_threshold(p.scores, p.outputs, refs, out_of_scope_label=label))
    return out


def _shared_inputs(family: FamilyConfig) -> dict[str, Any]:
    ev = family.evaluation
    shared: dict[str, Any] = {}
    if family.task is TaskKind.regression:
        shared["dimension_names"] = list(family.dimensions or ())
    if family.task is TaskKind.classification:
        shared["out_of_scope_label"] = ev.out_of_scope_label
    if family.task is TaskKind.chat_sft:
        shared["sources"] = load_sources(ev.sources_file)
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


def _llm_judge(results: dict, eval_set: EvalSet, answers: list[str], log: Callable[[str], None]) -> None:
    """The optional LLM judge (PULSE_JUDGE_URL) on the candidate's answers: relevance,
    correctness and completeness join the set's metrics; when it cannot run, the report says why."""
    from pulse_pipeline.core.evaluation.judge import (
        JudgeItem,
        JudgeSettings,
        JudgeUnavailable,
        judge_answers,
        skip_reason,
    )

    settings = JudgeSettings.from_env()
    if settings is None:
        note = {"what": "llm_judge", "reason": skip_reason() or "not configured"}
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


def _training_summary(meta: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "dataset_version", "epochs", "best_epoch", "training_loss", "best_validation_loss",
        "loss_history", "epoch_history", "base_model", "samples_used", "trained_at",
    )  # fmt: skip
    return {k: meta.get(k) for k in keys if k in meta}


def _publish(
    family: FamilyConfig,
    artifacts: ArtifactStore,
    version: str,
    results: dict[str, Any],
    meta: dict[str, Any],
    tracking_uri: str | None,
) -> Evaluation:
    """eval/results.json, report.md and report.html into the version folder; metrics to MLflow."""
    from pulse_pipeline.core.evaluation.reports import render_markdown, write_reports

    prefix = f"{adapters.prefix(family.name, version)}/{EVAL_FOLDER}"
    with tempfile.TemporaryDirectory() as tmp:
        written = write_reports(results, Path(tmp))
        for path in written.values():
            artifacts.write_bytes(f"{prefix}/{path.name}", path.read_bytes())
        run_id = (meta.get("mlflow") or {}).get("run_id")
        if tracking_uri and run_id:
            from pulse_pipeline.core.training.tracking import log_evaluation

            flat = {
                f"eval.{set_name}.{metric}": value
                for set_name, systems in results["metrics"].items()
                for metric, value in systems["candidate"].items()
            }
            log_evaluation(
                tracking_uri,
                run_id,
                flat,
                {"pulse.decision": results["gate"]["decision"], "pulse.baseline": _baseline_tag(results)},
                list(written.values()),
            )
    return Evaluation(results, artifacts.uri(f"{prefix}/report.html"), render_markdown(results))


def _baseline_tag(results: dict[str, Any]) -> str:
    b = results["baseline"]
    return b["version"] if b["kind"] == "production" else "base_model"
