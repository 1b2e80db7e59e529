"""`<family>/eval_report`: the newest adapter judged against production, and the promotion gate.

A thin wrapper over `core.evaluation.runner.evaluate_version`. The blocking asset check
`promotion_gate` passes on DEPLOY, warns on REVIEW and fails (severity ERROR) on FAIL, so a
run stops before anything downstream of the report (promotion) when the gate says FAIL.
"""

import dagster as dg
from pydantic import Field

from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment
from pulse_pipeline.defs.retries import retry_transient
from pulse_pipeline.defs.training.assets import TRAINING_POOL

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
        pool=TRAINING_POOL,
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
    ) -> dg.MaterializeResult:
        """The newest adapter against production (or the base model) on the test split and golden set."""
        from pathlib import Path

        from pulse_pipeline.core.evaluation.runner import evaluate_version

        version = config.version or _adapter_version(context, adapter_key)
        evaluation = evaluate_version(
            family,
            pulse_config,
            artifact_storage.open(),
            home=training.home_path,
            version=version,
            eval_files=tuple(Path(f) for f in config.eval_files),
            tracking_uri=training.mlflow_tracking_uri or None,
            log=context.log.info,
        )
        r = evaluation.results
        gate = r["gate"]
        from pulse_pipeline.core.promotion import Targets, announce_candidate, record_evaluation

        record_evaluation(annotation_store.store, family.name, r["version"], r)
        if training.mlflow_tracking_uri:  # a FAIL is no longer the challenger
            targets = Targets(annotation_store.store, training.mlflow_tracking_uri)
            context.log.info(f"MLflow aliases: {announce_candidate(artifact_storage.open(), family.name, targets)}")
        context.log.info(f"{family.name} {r['version']}: {gate['decision']} ({evaluation.report_uri})")
        return dg.MaterializeResult(
            metadata={
                "decision": gate["decision"],
                "version": r["version"],
                "baseline": r["baseline"]["version"] or r["baseline"]["kind"],
                "report": dg.MetadataValue.md(evaluation.markdown),
                "report_html": dg.MetadataValue.url(evaluation.report_uri)
                if "://" in evaluation.report_uri
                else dg.MetadataValue.path(evaluation.report_uri),
                **_numeric(r),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=GATE_CHECK,
                    passed=gate["decision"] == "DEPLOY",
                    severity=_SEVERITY.get(gate["decision"], dg.AssetCheckSeverity.WARN),
                    description="; ".join(gate["reasons"]) or "every threshold met",
                    metadata={"decision": gate["decision"], "version": r["version"]},
                )
            ],
            data_version=dg.DataVersion(f"{r['version']}:{gate['decision']}"),
        )

    return _eval_report


def _adapter_version(context: dg.AssetExecutionContext, adapter_key: dg.AssetKey) -> str | None:
    """The version the latest `<family>/adapter` materialization produced (None: the newest)."""
    event = context.instance.get_latest_materialization_event(adapter_key)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("version")
    return getattr(value, "value", None) or (str(value) if value else None)


def _numeric(results: dict) -> dict[str, dg.MetadataValue]:
    """Every metric of the candidate as numeric metadata (`<set>/<metric>`: test, golden, extra
    files), so the UI plots its history across materializations."""
    return {
        f"{set_name}/{metric}": dg.MetadataValue.float(float(value))
        for set_name, systems in results["metrics"].items()
        for metric, value in sorted(systems["candidate"].items())
    }
