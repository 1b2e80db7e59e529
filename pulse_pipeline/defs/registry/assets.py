"""`<family>/deployment`, and the `promote_adapter`, `cleanup_adapters` and `reconcile_adapters` jobs.

Thin wrappers over `core.registry`: the deployment asset ends each retrain run and promotes the
version its own run's evaluation judged DEPLOY, provided production is still what that
evaluation compared it with (a REVIEW waits for a person; a FAIL never gets here: the blocking
`promotion_gate` check stops the run first); it gives the family's training lock back. When a
vLLM replica fails to load or answer the version, nothing moves and its `rollout` check fails,
naming the replica. The jobs
take their family and version from run config, so a person launches them from the Launchpad (or
`pulse promote`, `pulse cleanup`, `pulse registry reconcile`).
"""

import dagster as dg
from pydantic import Field

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.lineage import this_runs_metadata
from pulse_pipeline.defs.resources import (
    AnnotationStore,
    ArtifactStorage,
    ServingEnvironment,
    TrainingEnvironment,
)
from pulse_pipeline.defs.retries import retry_transient
from pulse_pipeline.defs.training.assets import created_by
from pulse_pipeline.defs.training.locking import free_dead_trainings, step_lease


def deployment_asset(family: FamilyConfig) -> dg.AssetsDefinition:
    report_key = dg.AssetKey([family.name, "eval_report"])
    key = dg.AssetKey([family.name, "deployment"])

    @dg.asset(
        key=key,
        deps=[report_key],
        group_name=family.snake,
        kinds={"vllm"},
        tags={"pulse/family": family.name, "pulse/stage": "deployment"},
        check_specs=[
            dg.AssetCheckSpec(
                ROLLOUT_CHECK, asset=key, description="Every vLLM replica loaded and answered the version promoted."
            )
        ],
    )
    @retry_transient
    def _deployment(
        context: dg.AssetExecutionContext,
        artifact_storage: ArtifactStorage,
        annotation_store: AnnotationStore,
        training: TrainingEnvironment,
        serving: ServingEnvironment,
    ) -> dg.MaterializeResult:
        """The production adapter: the version this run evaluated, when its gate said DEPLOY."""
        from pulse_pipeline.core.metrics import record_promotion
        from pulse_pipeline.core.registry import Expected, Registry

        evaluation = this_runs_metadata(context, report_key) or {}  # only this run's own evaluation
        version, decision = evaluation.get("version"), evaluation.get("decision")
        store = annotation_store.store
        who = created_by(context.run.tags, context.run.run_id)
        lock = training.lock(store, context.instance)
        lease = step_lease(context, family.name, lock, who=who, acquire=False, release=True)
        with lease, serving.open_replicas() as servers:
            registry = Registry(store, artifact_storage.open(), serving.targets(training.mlflow_tracking_uri, servers))
            production = (registry.current(family.name) or {}).get("version")
            record = registry.record(family.name, str(version)) if version else None
            why = (
                "no evaluation in this run" if record is None
                else f"{version} was judged {decision}" if decision != "DEPLOY"
                else f"production is {production or 'none'} now, not {record.baseline_version or 'none'} as when "
                f"{version} was evaluated; evaluate it again"
                if production != record.baseline_version
                else None
            )  # fmt: skip
            if why is not None:
                context.log.info(f"{family.name}: not promoted ({why}); `pulse promote` decides")
                return _metadata(production, f"not promoted: {why}", "-", "-")
            try:
                out = registry.promote(
                    family.name, str(version), by=who, expect=Expected(record.baseline_version),
                    reason=f"the promotion gate said DEPLOY (run {context.run.run_id[:8]})",
                )  # fmt: skip
            except Exception:
                record_promotion(family.name, "failed", warn=context.log.warning)
                raise
            record_promotion(
                family.name, out.action, changed=out.changed, partial=out.partial, warn=context.log.warning
            )
            if out.partial:  # nothing moved: the failed check and the metadata say which replica failed
                context.log.error(f"{family.name}: {version} not promoted, {production or 'none'} stays: {out.serving}")
                return _metadata(production, "partial", out.serving, out.mlflow, replicas=out.replicas, partial=True)
            # Keep the newest `automation.keep_versions` (production, previous and a canary always
            # stay). Production has moved already: a failed cleanup is reported, not a failed run.
            try:
                cleaned = registry.cleanup(family.name, keep=family.automation.keep_versions, by=who)
                removed = ", ".join(cleaned.removed) or "none"
            except Exception as exc:  # noqa: BLE001 - any cleanup error leaves the promotion standing
                removed = f"cleanup failed: {exc}; `pulse cleanup` retries it"
                context.log.warning(f"{family.name}: {removed}")
        context.log.info(
            f"{family.name}: {out.version} is production; serving {out.serving}; MLflow {out.mlflow}; "
            f"old versions removed: {removed}"
        )
        return _metadata(
            out.version, out.action, out.serving, out.mlflow, previous=out.previous_version, removed=removed,
            replicas=out.replicas,
        )  # fmt: skip

    return _deployment


ROLLOUT_CHECK = "rollout"


def _metadata(
    version: str | None,
    action: str,
    serving: str,
    mlflow: str,
    previous: str | None = None,
    removed: str = "none",
    replicas: list[dict[str, str]] | None = None,
    partial: bool = False,
):
    """The deployment's metadata, and its `rollout` check: failed when a replica kept the old version."""
    replica_lines = "\n".join(f"- {r['url']}: {r['status']}" for r in replicas or []) or "none asked"
    return dg.MaterializeResult(
        metadata={
            "production_version": version or "none",
            "previous_version": previous or "none",
            "removed_versions": removed,
            "action": action,
            "serving": serving,
            "vllm_replicas": dg.MetadataValue.md(replica_lines),
            "mlflow_aliases": mlflow,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=ROLLOUT_CHECK,
                passed=not partial,
                severity=dg.AssetCheckSeverity.ERROR,
                description=f"partial: production stays {version or 'none'}" if partial else None,
                metadata={"serving": serving, "vllm_replicas": dg.MetadataValue.md(replica_lines)},
            )
        ],
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
    """Promote, start a canary, or roll back: every vLLM replica first, then the pointer, records and
    aliases; a replica that fails leaves all of them unchanged (`partial`)."""
    from pulse_pipeline.core.metrics import record_promotion
    from pulse_pipeline.core.registry import Registry

    by = config.requested_by or created_by(context.run.tags, context.run.run_id)
    with serving.open_replicas() as servers:
        registry = Registry(
            annotation_store.store, artifact_storage.open(), serving.targets(training.mlflow_tracking_uri, servers)
        )
        if config.previous:
            out = registry.rollback(config.family, by=by, reason=config.reason)
        else:
            if not config.version:
                raise dg.Failure("give `version`, or `previous: true` to roll back")
            try:
                out = registry.promote(
                    config.family, config.version, by=by, reason=config.reason,
                    traffic_share=config.traffic_share, force=config.force,
                )  # fmt: skip
            except Exception:
                record_promotion(config.family, "failed", warn=context.log.warning)
                raise
    record_promotion(
        config.family, out.action, changed=out.changed, partial=out.partial, warn=context.log.warning
    )
    if out.partial:  # nothing moved; `pulse promote` exits non-zero naming the replica
        context.log.error(
            f"{config.family}: {out.attempted} not served, {out.version or 'none'} stays production: {out.serving}"
        )
    else:
        context.log.info(
            f"{config.family}: {out.action} -> {out.version}; serving {out.serving}; MLflow {out.mlflow}"
        )
    for note in out.notes:
        context.log.warning(f"{config.family}: {note}")
    return dg.Output(
        out.__dict__,
        metadata={
            "action": out.action,
            "version": out.version or "none",
            "previous_version": out.previous_version or "none",
            "challenger": out.challenger or "none",
            "forced": out.forced,
            "partial": out.partial,
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
    from pulse_pipeline.core.registry import Registry

    keep = config.keep
    if keep is None:
        from pulse_pipeline.core.families import load_config
        from pulse_pipeline.settings import get_settings

        keep = load_config(get_settings().pulse_config).family(config.family).automation.keep_versions
    with serving.open_replicas() as servers:
        registry = Registry(
            annotation_store.store, artifact_storage.open(), serving.targets(training.mlflow_tracking_uri, servers)
        )
        out = registry.cleanup(config.family, keep=keep, by=created_by(context.run.tags, context.run.run_id))
    context.log.info(f"{config.family}: removed {out.removed or 'nothing'}; kept {out.kept}")
    return dg.Output(
        {"removed": out.removed, "kept": out.kept, "serving": out.serving, "mlflow": out.mlflow},
        metadata={"removed": ", ".join(out.removed) or "none", "kept": ", ".join(out.kept)},
    )


class ReconcileConfig(dg.Config):
    family: str = Field(description="The family, as in pulse.yaml.")
    dry_run: bool = Field(False, description="Say what would change and change nothing.")
    requested_by: str = Field("", description="Who asks (default: the Dagster user or the CLI).")


@dg.op(tags={"pulse/stage": "deployment"})
def reconcile_versions(
    context: dg.OpExecutionContext,
    config: ReconcileConfig,
    artifact_storage: ArtifactStorage,
    annotation_store: AnnotationStore,
    training: TrainingEnvironment,
) -> dg.Output:
    """Repair a family's registry after a crash: see core/registry/reconcile.py. While a live
    training of the family holds its lock, that training's own version is left alone."""
    from pulse_pipeline.core.registry import Registry

    store = annotation_store.store
    by = config.requested_by or created_by(context.run.tags, context.run.run_id)
    lock = training.lock(store, context.instance)
    free_dead_trainings(store, context.instance, [config.family], lock, context.log.warning)
    alive = lock.state(config.family).held
    out = Registry(store, artifact_storage.open()).reconcile(
        config.family, by=by, training_alive=alive, dry_run=config.dry_run
    )
    for line in out.changes:
        context.log.info(f"{config.family}: {'would change' if config.dry_run else 'changed'}: {line}")
    for line in out.problems:
        context.log.warning(f"{config.family}: {line}")
    report = {
        "family": config.family, "dry_run": config.dry_run, "changes": out.changes, "problems": out.problems,
        "training_alive": alive,
    }  # fmt: skip
    return dg.Output(report, metadata={"changes": len(out.changes), "problems": len(out.problems)})


@dg.job(tags={"pulse/stage": "deployment"})
def promote_adapter() -> None:
    """Make a version production (or a canary), or roll back to the previous one."""
    promote_version()


@dg.job(tags={"pulse/stage": "deployment"})
def cleanup_adapters() -> None:
    """Remove a family's old adapter versions, keeping the newest N, production and the previous one."""
    cleanup_versions()


@dg.job(tags={"pulse/stage": "deployment"})
def reconcile_adapters() -> None:
    """Repair a family's registry: adopt or remove folders without a record, finish or fail
    trainings that died, make records follow current.json."""
    reconcile_versions()
