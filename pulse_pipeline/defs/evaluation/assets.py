"""`<family>/eval_report`: the adapter its run trained, judged against production, and the promotion gate.

A thin wrapper over `core.evaluation.runner.evaluate_version`. It judges the version the adapter
step of the same run trained (or the one named in run config), never "the newest
materialization", and records the decision on the version's record. Chat families answer through
the `serving` resource's vLLM server (PULSE_VLLM_URL), opened and closed around the evaluation,
and are graded by the optional LLM judge of `Settings.judge()` (PULSE_JUDGE_*). It runs outside the
`training` pool: a run holding its family's training lock never waits for another family's
training between its steps. The blocking asset check `promotion_gate` passes on DEPLOY, warns
on REVIEW and fails (severity ERROR) on FAIL, so a run stops before anything downstream of the
report (promotion) when the gate says FAIL.
"""

import dagster as dg
from pydantic import Field

from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.defs.lineage import this_runs_metadata
from pulse_pipeline.defs.metadata import for_people
from pulse_pipeline.defs.resources import (
    AnnotationStore,
    ArtifactStorage,
    ServingEnvironment,
    TrainingEnvironment,
)
from pulse_pipeline.defs.retries import retry_transient
from pulse_pipeline.defs.training.assets import created_by
from pulse_pipeline.defs.training.locking import run_holds_later_steps, step_lease

GATE_CHECK = "promotion_gate"
_SEVERITY = {"REVIEW": dg.AssetCheckSeverity.WARN, "FAIL": dg.AssetCheckSeverity.ERROR}


class EvalRunConfig(dg.Config):
    """Per-run settings, from the Launchpad or `pulse evaluate`."""

    version: str | None = Field(
        None, description="The adapter version to judge (default: the one the adapter asset just made)."
    )
    eval_files: list[str] = Field(
        default_factory=list, description="More evaluation files of annotation records (JSON Lines)."
    )


def eval_report_asset(family: FamilyConfig, pulse_config: PulseConfig) -> dg.AssetsDefinition:
    key = dg.AssetKey([family.name, "eval_report"])
    adapter_key = dg.AssetKey([family.name, "adapter"])

    @dg.asset(
        key=key,
        deps=[adapter_key],
        group_name=family.snake,
        kinds={"pytorch"},
        tags={"pulse/family": family.name, "pulse/stage": "evaluation"},
        check_specs=[
            dg.AssetCheckSpec(
                GATE_CHECK,
                asset=key,
                blocking=True,
                description="DEPLOY passes, REVIEW warns, FAIL stops the promotion.",
            )
        ],
    )
    @retry_transient
    def _eval_report(
        context: dg.AssetExecutionContext,
        config: EvalRunConfig,
        artifact_storage: ArtifactStorage,
        annotation_store: AnnotationStore,
        training: TrainingEnvironment,
        serving: ServingEnvironment,
    ) -> dg.MaterializeResult:
        """The adapter trained in this run (or the version named in run config) against production
        (or the base model), on the test split and the golden set."""
        from pathlib import Path

        from pulse_pipeline.core.evaluation.runner import evaluate_version
        from pulse_pipeline.core.metrics import record_evaluation
        from pulse_pipeline.core.registry import Registry, Targets
        from pulse_pipeline.core.registry.promotion import sync_mlflow
        from pulse_pipeline.settings import get_settings

        trained = this_runs_metadata(context, adapter_key)
        version = config.version or (str(trained["version"]) if trained else None)
        if version is None:
            raise dg.Failure(
                f"{family.name}: no adapter was trained in this run; name the version to judge in the "
                "run config (`version`)"
            )
        store = annotation_store.store
        tracking_uri = training.mlflow_tracking_uri or None
        registry = Registry(store, artifact_storage.open(), Targets(tracking_uri))
        registry.require(family.name, version)  # a folder without a record is not judged
        later = run_holds_later_steps(context, family.name, "deployment")
        who = created_by(context.run.tags, context.run.run_id)
        lock = training.lock(store, context.instance)
        with step_lease(context, family.name, lock, who=who, acquire=False, release=not later) as lease:
            with serving.open() as server:  # None when PULSE_VLLM_URL is unset: peft answers
                evaluation = evaluate_version(
                    family,
                    pulse_config,
                    registry.artifacts,
                    home=training.home_path,
                    version=version,
                    eval_files=tuple(Path(f) for f in config.eval_files),
                    tracking_uri=tracking_uri,
                    log=context.log.info,
                    vllm=server,
                    judge=get_settings().judge(),
                )
            r = evaluation.results
            gate = r["gate"]
            registry.record_evaluation(family.name, version, r)
            candidate = {set_name: v["candidate"] for set_name, v in r["metrics"].items()}
            record_evaluation(family.name, candidate, gate["decision"], warn=context.log.warning)
            if lease is not None and gate["decision"] == "FAIL":
                lease.release()  # the blocking check stops the run here: nothing more to hold it for
        if tracking_uri:  # a FAIL is no longer the challenger
            context.log.info(f"MLflow aliases: {sync_mlflow(registry, family.name)}")
        context.log.info(f"{family.name} {version}: {gate['decision']} ({evaluation.report_uri})")
        return dg.MaterializeResult(
            metadata={
                "decision": gate["decision"],
                "version": version,
                "baseline": r["baseline"]["version"] or r["baseline"]["kind"],
                "report": dg.MetadataValue.md(evaluation.markdown),
                "report_html": dg.MetadataValue.url(evaluation.report_uri)
                if "://" in evaluation.report_uri
                else dg.MetadataValue.path(evaluation.report_uri),
                **for_people(_numeric(r)),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=GATE_CHECK,
                    passed=gate["decision"] == "DEPLOY",
                    severity=_SEVERITY.get(gate["decision"], dg.AssetCheckSeverity.WARN),
                    description="; ".join(gate["reasons"]) or "every threshold met",
                    metadata={"decision": gate["decision"], "version": version},
                )
            ],
            data_version=dg.DataVersion(f"{version}:{gate['decision']}"),
        )

    return _eval_report


def _numeric(results: dict) -> dict[str, dg.MetadataValue]:
    """Every metric of the candidate as numeric metadata (`<set>/<metric>`: test, golden, extra
    files), so the UI plots its history across materializations."""
    return {
        f"{set_name}/{metric}": dg.MetadataValue.float(float(value))
        for set_name, systems in results["metrics"].items()
        for metric, value in sorted(systems["candidate"].items())
    }
