"""`<family>/deployment`, and the `promote_adapter` and `cleanup_adapters` jobs.

Thin wrappers over `core.promotion`: the deployment asset ends each retrain run and promotes the
version its eval report judged DEPLOY (a REVIEW waits for a person; a FAIL never gets here: the
blocking `promotion_gate` check stops the run first). The two jobs take their family and version
from run config, so a person launches them from the Launchpad (or `pulse promote` / `pulse cleanup`).
"""

import dagster as dg
from pydantic import Field

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.resources import (
    AnnotationStore,
    ArtifactStorage,
    ServingEnvironment,
    TrainingEnvironment,
)
from pulse_pipeline.defs.retries import retry_transient
from pulse_pipeline.defs.training.assets import created_by


def deployment_asset(family: FamilyConfig) -> dg.AssetsDefinition:
    report_key = dg.AssetKey([family.name, "eval_report"])

    @dg.asset(
        key=dg.AssetKey([family.name, "deployment"]),
        deps=[report_key],
        group_name=family.snake,
        kinds={"vllm"},
        tags={"pulse/family": family.name, "pulse/stage": "deployment"},
    )
    @retry_transient
    def _deployment(
        context: dg.AssetExecutionContext,
        artifact_storage: ArtifactStorage,
        annotation_store: AnnotationStore,
        training: TrainingEnvironment,
        serving: ServingEnvironment,
    ) -> dg.MaterializeResult:
        """The production adapter: the new version when its evaluation said DEPLOY."""
        from pulse_pipeline.core import promotion, registry

        event = context.instance.get_latest_materialization_event(report_key)
        if event is None or event.run_id != context.run.run_id or event.asset_materialization is None:
            event = None  # only this run's own evaluation may promote
        meta = event.asset_materialization.metadata if event else {}
        version = getattr(meta.get("version"), "value", None)
        decision = getattr(meta.get("decision"), "value", None)
        artifacts = artifact_storage.open()
        if version is None or decision != "DEPLOY":
            current = registry.read_current(artifacts, family.name) or {}
            why = f"{version} was judged {decision}" if version else "no evaluation in this run"
            context.log.info(f"{family.name}: not promoted ({why}); `pulse promote` decides")
            return _metadata(current.get("version"), f"not promoted: {why}", "-", "-")
        with serving.open() as server:
            out = promotion.promote(
                artifacts,
                family.name,
                version,
                serving.targets(annotation_store.store, training.mlflow_tracking_uri, server),
                by=created_by(context.run.tags, context.run.run_id),
                reason=f"the promotion gate said DEPLOY (run {context.run.run_id[:8]})",
            )
            # Keep the newest `automation.keep_versions` (production, previous and a canary always
            # stay). Production has moved already: a failed cleanup is reported, not a failed run.
            try:
                removed = ", ".join(promotion.cleanup(
                    artifacts, family.name,
                    serving.targets(annotation_store.store, training.mlflow_tracking_uri, server),
                    keep=family.automation.keep_versions, by=created_by(context.run.tags, context.run.run_id),
                ).removed) or "none"  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - any cleanup error leaves the promotion standing
                removed = f"cleanup failed: {type(exc).__name__}: {exc}; `pulse cleanup` retries it"
                context.log.warning(f"{family.name}: {removed}")
        context.log.info(
            f"{family.name}: {out.version} is production; serving {out.serving}; MLflow {out.mlflow}; "
            f"old versions removed: {removed}"
        )
        return _metadata(
            out.version, out.action, out.serving, out.mlflow, previous=out.previous_version, removed=removed
        )

    return _deployment


def _metadata(
    version: str | None,
    action: str,
    serving: str,
    mlflow: str,
    previous: str | None = None,
    removed: str = "none",
):
    return dg.MaterializeResult(
        metadata={
            "production_version": version or "none",
            "previous_version": previous or "none",
            "removed_versions": removed,
            "action": action,
            "serving": serving,
            "mlflow_aliases": mlflow,
        },
        data_version=dg.DataVersion(version or "none"),
    )


class PromoteConfig(dg.Config):
    """Which version becomes production, for how much traffic, and why."""

    family: str = Field(description="The family, as in pulse.yaml.")
    version: str | None = Field(None, description="The version to promote (leave empty with previous=true).")
    previous: bool = Field(False, description="Roll back to the previous production version instead.")
    traffic_share: float = Field(1.0, gt=0, le=1, description="Below 1.0: a canary beside production.")
    force: bool = Field(False, description="Promote even a version the gate judged FAIL (recorded).")
    reason: str = Field("", description="Why, for the audit trail.")
    requested_by: str = Field("", description="Who asks (default: the Dagster user or the CLI).")


class CleanupConfig(dg.Config):
    family: str = Field(description="The family, as in pulse.yaml.")
    keep: int | None = Field(
        None,
        ge=1,
        description="Versions to keep besides production, previous and a canary "
        "(empty: the family's automation.keep_versions in pulse.yaml, default 5).",
    )


@dg.op(tags={"pulse/stage": "deployment"})
def promote_version(
    context: dg.OpExecutionContext,
    config: PromoteConfig,
    artifact_storage: ArtifactStorage,
    annotation_store: AnnotationStore,
    training: TrainingEnvironment,
    serving: ServingEnvironment,
) -> dg.Output:
    """Promote, start a canary, or roll back; the registry first, then serving, records and aliases."""
    from pulse_pipeline.core import promotion

    by = config.requested_by or created_by(context.run.tags, context.run.run_id)
    artifacts = artifact_storage.open()
    with serving.open() as server:
        targets = serving.targets(annotation_store.store, training.mlflow_tracking_uri, server)
        if config.previous:
            out = promotion.rollback(artifacts, config.family, targets, by=by, reason=config.reason)
        else:
            if not config.version:
                raise dg.Failure("give `version`, or `previous: true` to roll back")
            out = promotion.promote(
                artifacts, config.family, config.version, targets, by=by, reason=config.reason,
                traffic_share=config.traffic_share, force=config.force,
            )  # fmt: skip
    context.log.info(
        f"{config.family}: {out.action} -> {out.version}; serving {out.serving}; MLflow {out.mlflow}"
    )
    return dg.Output(
        out.__dict__,
        metadata={
            "action": out.action,
            "version": out.version or "none",
            "previous_version": out.previous_version or "none",
            "challenger": out.challenger or "none",
            "serving": out.serving,
            "mlflow_aliases": out.mlflow,
        },
    )


@dg.op(tags={"pulse/stage": "deployment"})
def cleanup_versions(
    context: dg.OpExecutionContext,
    config: CleanupConfig,
    artifact_storage: ArtifactStorage,
    annotation_store: AnnotationStore,
    training: TrainingEnvironment,
    serving: ServingEnvironment,
) -> dg.Output:
    """Remove old versions of a family: never production, the previous one or a canary."""
    from pulse_pipeline.core import promotion

    keep = config.keep
    if keep is None:
        from pulse_pipeline.core.families import load_config
        from pulse_pipeline.settings import get_settings

        keep = load_config(get_settings().pulse_config).family(config.family).automation.keep_versions
    with serving.open() as server:
        out = promotion.cleanup(
            artifact_storage.open(), config.family,
            serving.targets(annotation_store.store, training.mlflow_tracking_uri, server),
            keep=keep, by=created_by(context.run.tags, context.run.run_id),
        )  # fmt: skip
    context.log.info(f"{config.family}: removed {out.removed or 'nothing'}; kept {out.kept}")
    return dg.Output(
        {"removed": out.removed, "kept": out.kept, "serving": out.serving, "mlflow": out.mlflow},
        metadata={"removed": ", ".join(out.removed) or "none", "kept": ", ".join(out.kept)},
    )


@dg.job(tags={"pulse/stage": "deployment"})
def promote_adapter() -> None:
    """Make a version production (or a canary), or roll back to the previous one."""
    promote_version()


@dg.job(tags={"pulse/stage": "deployment"})
def cleanup_adapters() -> None:
    """Remove a family's old adapter versions, keeping the newest N, production and the previous one."""
    cleanup_versions()
