"""One adapter version judged end to end: evaluation sets -> inference -> metrics -> gate -> reports.

`evaluate_version` is what the Dagster `<family>/eval_report` asset, `pulse evaluate` and the
end of `pulse train` call. The candidate and its baseline (the production version named by
current.json, or the base model for a family's first version) answer the same examples, and,
against production, the old slices too (the earlier snapshots' test splits, forgetting.py); the
results, the decision and the reports land in the version's `eval/` folder, and the metrics
in the training's MLflow run.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.evaluation import metrics
from pulse_pipeline.core.evaluation.config import DEFAULT_METRICS, MAIN_METRICS, profile_of
from pulse_pipeline.core.evaluation.forgetting import old_slices, summary
from pulse_pipeline.core.evaluation.gate import decide
from pulse_pipeline.core.evaluation.inference import AdapterPredictor, Predictions
from pulse_pipeline.core.evaluation.reports import to_json_safe
from pulse_pipeline.core.evaluation.scoring import SetScorer
from pulse_pipeline.core.evaluation.sets import EvalExample, EvalSet, from_records_file, from_snapshot
from pulse_pipeline.core.families import FamilyConfig, PulseConfig, TaskKind
from pulse_pipeline.core.registry import files, read_current

if TYPE_CHECKING:
    from pulse_pipeline.core.evaluation.judge import JudgeSettings
    from pulse_pipeline.core.serving import VllmServer

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
    version: str,
    eval_files: tuple[Path, ...] = (),
    tracking_uri: str | None = None,
    log: Callable[[str], None] = lambda _: None,
    vllm: VllmServer | None = None,
    judge: JudgeSettings | None = None,
) -> Evaluation:
    """Judge `version` against production, or the base model. The caller checked that the version
    is a recorded one (`Registry.require`): a folder without a record is not judged.

    `vllm`: the vLLM server chat families answer through when it serves the adapter's base model
    (else peft on this machine, with a note); the caller opened it and closes it, this never does.
    `judge`: the optional LLM judge of chat answers; None: skipped, and the results say so."""
    meta = files.read_metadata(artifacts, family.name, version)
    dataset = meta["dataset_version"]
    ev = family.evaluation
    profile = profile_of(family.task.value, tuple(family.annotation_kinds))
    names = list(ev.metrics or DEFAULT_METRICS[profile])
    if ev.script and "script_consistency" not in names:
        names.append("script_consistency")
    sets, empty = _evaluation_sets(family, config, artifacts, dataset, eval_files)
    if not sets:
        raise EvaluationError(
            f"{family.name} {version}: no evaluation examples (empty test split, no golden file)"
        )
    systems = _load_systems(family, artifacts, home, version, dataset, meta, log, vllm)
    old, forgetting = _old_slices(family, profile, artifacts, dataset, systems, [*sets, *empty], log)
    results = _score_sets(family, profile, names, version, meta, sets, systems, log, judge, old)
    if forgetting is not None:
        results["forgetting"] = forgetting
    for eval_set in empty:
        why = ", ".join(f"{n} {reason}" for reason, n in eval_set.not_used.items()) or "no records"
        results["skipped"].append(
            {"what": f"evaluation set {eval_set.name}", "reason": f"no examples ({why})"}
        )
    floor = _against_floor(family, artifacts, dataset, sets, systems, log)
    if floor is not None:
        results["floor"] = floor
    results["gate"] = decide(
        ev.gate,
        {s: v["candidate"] for s, v in results["metrics"].items()},
        results["comparison"],
        MAIN_METRICS[profile],
        set_sizes={s["name"]: s["examples"] for s in results["sets"]},  # scored examples per set
        profile=profile,
        floor=floor,
        forgetting=forgetting,
    )
    return _publish(family, artifacts, version, to_json_safe(results), meta, tracking_uri)


def _score_sets(
    family: FamilyConfig, profile: str, names: list[str], version: str, meta: dict[str, Any],
    sets: list[EvalSet], systems: Systems, log: Callable[[str], None], judge: JudgeSettings | None,
    old: Sequence[EvalSet] = (),
) -> dict[str, Any]:  # fmt: skip
    """Every set through both systems and the metrics, then the old slices (not LLM-judged): the
    results, before the gate."""
    ev = family.evaluation
    dataset = meta["dataset_version"]
    evaluator = SetScorer(
        family, profile, [metrics.load(n) for n in names], metrics.combine(names), systems, judge
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
        evaluator.score_set(eval_set, results, log)
    for eval_set in old:
        log(f"{eval_set.name}: {len(eval_set)} examples ({eval_set.source})")
        evaluator.score_set(eval_set, results, log, judged=False)
    return results


@dataclass
class Systems:
    """The candidate and its baseline, ready to answer; `thresholds`: each one's out-of-scope
    threshold (classification with an OOS label)."""

    candidate: Any  # AdapterPredictor, or VllmPredictor for chat families given a vLLM server
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
) -> tuple[list[EvalSet], list[EvalSet]]:
    """The sets with examples, and those without (reported, not silently dropped). `test` is the
    snapshot's test split, or the family's `evaluation.test_file` when the snapshots keep no test
    split; a set from a file is named after it, and never takes a name already used."""
    ev = family.evaluation
    sets: list[EvalSet] = []
    if family.split.test > 0:
        sets.append(from_snapshot(family, artifacts, dataset, "test"))
    if ev.test_file is not None:
        name = "test" if family.split.test == 0 else _unused(ev.test_file.stem, sets)
        sets.append(from_records_file(family, config, ev.test_file, name))
    if ev.golden_file is not None:
        sets.append(from_records_file(family, config, ev.golden_file, "golden"))
    for f in eval_files:
        sets.append(from_records_file(family, config, Path(f), _unused(Path(f).stem, sets)))
    return [s for s in sets if s.examples], [s for s in sets if not s.examples]


def _old_slices(
    family: FamilyConfig, profile: str, artifacts: ArtifactStore, dataset: str, systems: Systems,
    taken: list[EvalSet], log: Callable[[str], None],
) -> tuple[list[EvalSet], dict[str, Any] | None]:  # fmt: skip
    """The old slices to score, and the forgetting summary for the gate and the report (None when
    `forgetting.snapshots` is 0). Against the base model nothing is scored: a first version has
    forgotten nothing a production version knew. Examples of the candidate's or production's
    train and val splits are left out of every slice."""
    config = family.evaluation.forgetting
    if config.snapshots == 0:
        return [], None
    info = systems.baseline_info
    production = info["version"] if info["kind"] == "production" else None
    trained_on = [dataset]
    if production:
        trained_on.append(files.read_metadata(artifacts, family.name, production).get("dataset_version"))
    slices, notes = old_slices(
        family, artifacts, dataset, config.snapshots,
        trained_on=[v for v in trained_on if v], taken=[s.name for s in taken],
    )  # fmt: skip
    log(f"forgetting: {len(slices)} old slice(s)" + "".join(f"; {n}" for n in notes))
    about = summary(config, profile, family.evaluation.gate.change, slices, notes, production)
    return ([s.eval_set for s in slices] if production else []), about


def _unused(name: str, sets: list[EvalSet]) -> str:
    """`name`, or `<name>-external` (then -2, -3 ...) when a set already has it (e.g. a file named
    test.jsonl beside the snapshot's test split): results and MLflow keep the two apart."""
    taken = {s.name for s in sets}
    candidates = (name, f"{name}-external", *(f"{name}-external-{i}" for i in range(2, 100)))
    return next(n for n in candidates if n not in taken)


def _load_systems(
    family: FamilyConfig, artifacts: ArtifactStore, home: Path, version: str, dataset: str,
    meta: dict[str, Any], log: Callable[[str], None], vllm: VllmServer | None,
) -> Systems:  # fmt: skip
    current = read_current(artifacts, family.name)
    production = current["version"] if current and current.get("version") != version else None
    cache = home / "cache" / "adapters"
    folders = {v: files.local_folder(artifacts, family.name, v, cache) for v in (version, production) if v}
    server, note = _vllm_server(family, folders[version], vllm)
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
        from pulse_pipeline.core.training.floor import Floor
        from pulse_pipeline.core.training.models import load_adapter

        # Prompts as long as the training's (a longer one loses its start, as in training).
        max_length = (meta.get("resolved_config") or {}).get("max_length") or 512

        def load(v: str) -> Any:
            return _predictor(family, load_adapter(folders[v]), max_length, Floor.load(folders[v]))

        inference = "peft on this machine"
    log(f"loading {version} ({inference})")
    candidate = load(version)
    if production:
        log(f"baseline: production version {production}")
        systems = Systems(candidate, load(production), True, {"kind": "production", "version": production})
    else:
        description = _base_description(family)
        log(f"baseline: {description}")
        if family.task is not TaskKind.chat_sft:
            candidate.fit_base_head(
                from_snapshot(family, artifacts, dataset, "train").examples,
                from_snapshot(family, artifacts, dataset, "val").examples,
            )
        info = {"kind": "base_model", "version": None, "description": description}
        systems = Systems(candidate, candidate, False, info)
    systems.inference = inference
    systems.notes = [note] if note else []
    systems.thresholds = _oos_thresholds(family, artifacts, dataset, systems)
    return systems


def _vllm_server(
    family: FamilyConfig, folder: Path, vllm: VllmServer | None
) -> tuple[Any, dict[str, str] | None]:
    """The vLLM server chat answers go through (`vllm`, the caller's), when it serves this
    adapter's base model; else None, and a note saying why peft answered instead. The server
    stays open either way: its caller closes it."""
    import json

    from pulse_pipeline.core import serving

    server = vllm if family.task is TaskKind.chat_sft else None
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


# -- pieces ------------------------------------------------------------------------------------


def _against_floor(
    family: FamilyConfig, artifacts: ArtifactStore, dataset: str, sets: list[EvalSet], systems: Systems,
    log: Callable[[str], None],
) -> dict[str, Any] | None:  # fmt: skip
    """Classification: the candidate's top-1 accuracy on the `test` set against the family's
    frozen-encoder floor (fitted on the snapshot's train split, C chosen on val), for the gate."""
    from pulse_pipeline.core.evaluation.comparison import against_floor

    test = next((s for s in sets if s.name == "test"), None)
    if family.task is not TaskKind.classification or test is None:
        return None
    predictor = systems.candidate
    if predictor.floor is None:  # the baseline is production, so the floor was not fitted yet
        predictor.fit_base_head(
            from_snapshot(family, artifacts, dataset, "train").examples,
            from_snapshot(family, artifacts, dataset, "val").examples,
        )
    row = against_floor(
        [e.reference for e in test.examples],
        predictor.predict(test.examples).outputs,
        predictor.predict(test.examples, use_adapter=False).outputs,
    )
    fit = predictor.floor.describe()
    log(f"floor: logistic regression, C={fit['c']:g}: top-1 {row['floor']:.2%} on test, candidate {row['candidate']:.2%}")
    return {**row, "fit": fit}


def _predictor(family: FamilyConfig, loaded: Any, max_length: int, floor: Any = None) -> AdapterPredictor:
    ev = family.evaluation
    return AdapterPredictor(
        loaded, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, max_length=max_length, floor=floor
    )


def _base_description(family: FamilyConfig) -> str:
    if family.task is TaskKind.chat_sft:
        return f"{family.base_model} without an adapter"
    if family.task is TaskKind.classification:
        return (
            f"{family.base_model} without an adapter (the frozen-encoder floor: a logistic regression on "
            "the train split's embeddings, C chosen on val)"
        )
    return f"{family.base_model} without an adapter (ridge regression fitted on the train split's embeddings)"


def _oos_thresholds(
    family: FamilyConfig, artifacts: ArtifactStore, dataset: str, systems: Systems
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


def _training_summary(meta: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "dataset_version", "epochs", "best_epoch", "training_loss", "best_validation_loss",
        "loss_history", "epoch_history", "base_model", "samples_used", "trained_at", "selected", "floor",
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

    prefix = f"{files.key(family.name, version)}/{EVAL_FOLDER}"
    with tempfile.TemporaryDirectory() as tmp:
        written = write_reports(results, Path(tmp))
        for path in written.values():
            artifacts.write_bytes(f"{prefix}/{path.name}", path.read_bytes())
        run_id = (meta.get("mlflow") or {}).get("run_id")
        if tracking_uri and run_id:
            from pulse_pipeline.core.training.tracking import log_evaluation

            flat = _flat_metrics(results)
            log_evaluation(
                tracking_uri,
                run_id,
                flat,
                {"pulse.decision": results["gate"]["decision"], "pulse.baseline": _baseline_tag(results)},
                list(written.values()),
            )
    return Evaluation(results, artifacts.uri(f"{prefix}/report.html"), render_markdown(results))


def _flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """For MLflow: eval.<set>.<metric> (the candidate), eval.<set>.baseline.<metric>,
    eval.<set>.delta.<metric> with .ci_low / .ci_high, and (classification) the top-1 accuracies
    against the floor, eval.<set>.floor.{candidate,floor,delta}.top1_accuracy. Old slices are sets
    like the others (eval.old-<version>.*); eval.forgetting.worst_delta.<metric> (with .ci_low /
    .ci_high) is the slice where the candidate fell furthest, a name that stays across snapshots."""
    flat: dict[str, float] = {}
    for set_name, systems in results["metrics"].items():
        for metric, value in systems["candidate"].items():
            flat[f"eval.{set_name}.{metric}"] = value
        for metric, value in systems["baseline"].items():
            flat[f"eval.{set_name}.baseline.{metric}"] = value
    floor = results.get("floor")
    if floor:
        for key in ("candidate", "floor", "delta"):
            if floor.get(key) is not None:
                flat[f"eval.{floor['set']}.floor.{key}.top1_accuracy"] = floor[key]
    for set_name, rows in results["comparison"].items():
        for row in rows:
            for key, name in (("delta", ""), ("ci_low", ".ci_low"), ("ci_high", ".ci_high")):
                if row[key] is not None:
                    flat[f"eval.{set_name}.delta.{row['metric']}{name}"] = row[key]
    worst = _worst_forgetting(results)
    if worst is not None:
        for key, name in (("delta", ""), ("ci_low", ".ci_low"), ("ci_high", ".ci_high")):
            if worst[key] is not None:
                flat[f"eval.forgetting.worst_delta.{worst['metric']}{name}"] = worst[key]
    return flat


def _worst_forgetting(results: dict[str, Any]) -> dict[str, Any] | None:
    """The forgetting metric's comparison row on the old slice where the candidate fell furthest."""
    forgetting = results.get("forgetting") or {}
    metric = forgetting.get("metric")
    rows = [
        row
        for old in forgetting.get("slices", [])
        for row in results["comparison"].get(old["name"], [])
        if row["metric"] == metric and row["delta"] is not None
    ]
    return max(rows, key=lambda r: -r["delta"] if r["higher_is_better"] else r["delta"], default=None)


def _baseline_tag(results: dict[str, Any]) -> str:
    b = results["baseline"]
    return b["version"] if b["kind"] == "production" else "base_model"
