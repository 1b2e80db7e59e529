"""`<family>/production_accuracy` and `production_accuracy_<family>`: live accuracy against test accuracy.

Thin wrappers over `core.production_accuracy`. The asset reads the family's reviewed outputs that
carry `model_version`, once, and records each version's live accuracy against its test accuracy.
The sensor watches the asset's materializations: when the production version's alert flag turns
on it logs and posts an alert (PULSE_ALERT_WEBHOOK); with `production_watch.rollback` it also
requests a `promote_adapter` rollback run, once per version (run key `rollback:<family>:<version>`),
unless production has moved since, a canary runs, or the previous version is below its own test
accuracy too.
"""

import dagster as dg
import orjson

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.metadata import for_people
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage
from pulse_pipeline.defs.retries import retry_transient


def production_accuracy_key(family: FamilyConfig) -> dg.AssetKey:
    return dg.AssetKey([family.name, "production_accuracy"])


def production_accuracy_asset(family: FamilyConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=production_accuracy_key(family),
        deps=[dg.AssetKey([family.name, "annotations"]), dg.AssetKey([family.name, "deployment"])],
        group_name=family.snake,
        tags={"pulse/family": family.name, "pulse/stage": "monitoring"},
    )
    @retry_transient
    def _production_accuracy(
        context: dg.AssetExecutionContext,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
    ) -> dg.MaterializeResult:
        """Each deployed version's accuracy on live traffic (reviewed outputs carrying model_version)
        against its test accuracy; flags the production version when it falls below."""
        from pulse_pipeline.core.production_accuracy import production_accuracy

        report = production_accuracy(
            annotation_store.store.annotations.iter_family(family.name), artifact_storage.open(), family
        )
        (context.log.warning if report.alert else context.log.info)(f"{family.name}: {report.summary()}")
        current = report.current
        metadata: dict[str, object] = {
            "production_version": report.current_version or "none",
            "status": current.status if current else "no production version",
            "alert": report.alert,
            "reason": current.reason if current else report.summary(),
            "metric": f"{report.metric or 'none'} on {report.eval_set}",
            "judged": current.live.judged if current else 0,
            "without_model_version": report.without_version,
            "versions": dg.MetadataValue.json([w.to_json() for w in report.versions]),
            "report": dg.MetadataValue.md(report.to_markdown()),
        }
        if current is not None:  # numbers only where known, so the UI plots stay numeric
            figures = {
                "live_accuracy": current.live.accuracy,
                "test_accuracy": current.test,
                "drop": current.drop,
            }
            metadata |= {k: dg.MetadataValue.float(v) for k, v in figures.items() if v is not None}
        return dg.MaterializeResult(metadata=for_people(metadata))

    return _production_accuracy


def production_accuracy_sensor(
    family: FamilyConfig, promote_job: str = "promote_adapter"
) -> dg.SensorDefinition:
    key = production_accuracy_key(family)
    name = f"production_accuracy_{family.snake}"
    watch = family.automation.production_watch

    @dg.sensor(
        name=name,
        job_name=promote_job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Alert when {family.name}'s production version is more than {watch.margin:.0%} below its "
        "test accuracy on live traffic"
        + (", and roll back to the previous version." if watch.rollback else "."),
    )
    def _sensor(context: dg.SensorEvaluationContext, artifact_storage: ArtifactStorage) -> dg.SensorResult:
        from pulse_pipeline.core import registry
        from pulse_pipeline.core.alerts import send_alert
        from pulse_pipeline.core.production_accuracy import production_alert, rollback_target

        seen = _cursor(context.cursor)
        records = context.instance.fetch_materializations(key, limit=1).records
        if not records or records[0].storage_id <= seen["storage_id"]:
            return dg.SensorResult(skip_reason=f"no new materialization of {key.to_user_string()}")
        meta = records[0].asset_materialization.metadata  # type: ignore[union-attr]
        if not {"production_version", "alert", "versions"} <= meta.keys():
            seen["storage_id"] = records[0].storage_id
            return dg.SensorResult(
                skip_reason="the newest materialization has no verdict", cursor=orjson.dumps(seen).decode()
            )
        version, alert = meta["production_version"].value, meta["alert"].value
        alerting = {v["version"] for v in meta["versions"].value if v["alert"]}  # type: ignore[union-attr]
        was_alerting = version in seen["alerting"]
        seen = {"storage_id": records[0].storage_id, "alerting": sorted(alerting & {version})}
        cursor = orjson.dumps(seen).decode()
        if not alert:
            return dg.SensorResult(skip_reason=f"{version}: {meta['status'].value}", cursor=cursor)

        if watch.rollback:
            target, why_not = rollback_target(
                registry.read_current(artifact_storage.open(), family.name), version, alerting
            )
        else:
            target, why_not = None, "rollback is off (production_watch.rollback)"
        reason = f"live accuracy below test: {meta['reason'].value}"
        if not was_alerting:  # alert when the flag turns on, not on every materialization while it stays on
            context.log.warning(f"{family.name} {version}: {reason}")
            figures = {
                k: meta[k].value for k in ("live_accuracy", "test_accuracy", "drop", "judged") if k in meta
            }
            posted = send_alert(production_alert(family.name, version, reason, target, why_not, figures))
            context.log.info(f"alert {posted}")
        if target is None:
            return dg.SensorResult(skip_reason=f"{version}: alert; not rolled back: {why_not}", cursor=cursor)
        context.log.warning(f"{family.name}: rolling back from {version} to {target}")
        config = {
            "family": family.name,
            "previous": True,
            "reason": f"{version}: {reason}",
            "requested_by": f"sensor:{name}",
        }
        request = dg.RunRequest(
            run_key=f"rollback:{family.name}:{version}",  # one rollback per version
            run_config={"ops": {"promote_version": {"config": config}}},
            tags={"pulse/family": family.name, "pulse/rollback_from": version},
        )
        return dg.SensorResult(run_requests=[request], cursor=cursor)

    return _sensor


def _cursor(raw: str | None) -> dict:
    """The sensor's cursor: the newest materialization read and the versions alerted on; an old
    or foreign cursor starts again from nothing."""
    fresh = {"storage_id": 0, "alerting": []}
    try:
        seen = orjson.loads(raw) if raw else fresh
    except orjson.JSONDecodeError:
        return fresh
    ok = isinstance(seen, dict) and isinstance(seen.get("storage_id"), int) and isinstance(seen.get("alerting"), list)
    return seen if ok else fresh
