"""`<family>/drift_report` and `drift_<family>`: retrain when the data has moved.

Thin wrappers over `core.drift`. The asset compares the recent annotations with the production
adapter's training split and records the figures, the decision and a plot as metadata. The
sensor reads the newest report: when it crossed a threshold, still compares against the
current reference snapshot, and enough new trainable annotations exist (recounted at tick
time), it requests the retrain job with the run key `drift:<family>:<snapshot watermark>`,
so one data state starts at most one drift retrain; otherwise it skips with the reason.
"""

from typing import TYPE_CHECKING

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.defs.automation.runs import retrain_request
from pulse_pipeline.defs.metadata import for_people
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment
from pulse_pipeline.defs.retries import retry_transient

if TYPE_CHECKING:
    from pulse_pipeline.core.drift.report import DriftReport


def drift_report_key(family: FamilyConfig) -> dg.AssetKey:
    return dg.AssetKey([family.name, "drift_report"])


def drift_report_asset(family: FamilyConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=drift_report_key(family),
        deps=[dg.AssetKey([family.name, "annotations"]), dg.AssetKey([family.name, "dataset_snapshot"])],
        group_name=family.snake,
        kinds={"python"},
        tags={"pulse/family": family.name, "pulse/stage": "monitoring"},
    )
    @retry_transient
    def _drift_report(
        context: dg.AssetExecutionContext,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
        training: TrainingEnvironment,
    ) -> dg.MaterializeResult:
        """Recent annotations against the production adapter's training data: embedding drift,
        label or score drift and length drift, with a plot; `drift_<family>` acts on it."""
        from pulse_pipeline.core.drift.embeddings import SentenceEncoder
        from pulse_pipeline.core.drift.report import build_drift_report, write_report

        artifacts = artifact_storage.open()
        encoder = SentenceEncoder(family.automation.drift.encoder, training.home_path / "models")
        report = build_drift_report(annotation_store.store, artifacts, family, encoder)
        uris = write_report(artifacts, report)
        context.log.info(f"{family.name}: {report.message}")
        return dg.MaterializeResult(metadata=for_people(_metadata(report, uris)))

    return _drift_report


def _link(uri: str) -> dg.MetadataValue:
    return dg.MetadataValue.url(uri) if "://" in uri else dg.MetadataValue.path(uri)


def _metadata(report: "DriftReport", uris: dict[str, str]) -> dict[str, object]:
    """What the UI shows and the sensor reads (`crossed`, `reasons`, `reference_dataset_version`)."""
    import base64

    f = report.figures
    reference = f.get("reference", {})
    meta: dict[str, object] = {
        "status": report.status,
        "summary": report.message,
        "crossed": dg.MetadataValue.bool(report.crossed),
        "reasons": "; ".join(report.reasons) or report.message,
        "window_days": f["window"]["days"],
        "recent_size": f["recent"]["size"],
        "reference_size": reference.get("size", 0),
        "reference_dataset_version": reference.get("dataset_version") or "none",
        "reference_source": reference.get("source") or "none",
        "new_annotations": f["new_annotations"],
        "training_watermark": f["training_watermark"],
        "report": _link(uris["report"]),
    }
    if report.status != "compared":
        return meta
    emb, target, length = f["embedding"], f["target"], f["length"]
    name = {"label": "label", "scores": "score"}.get(target["kind"], "kind")
    meta |= {
        "drift_score": dg.MetadataValue.float(emb["domain_auc"]),
        "domain_auc": dg.MetadataValue.float(emb["domain_auc"]),
        "mmd": dg.MetadataValue.float(emb["mmd2"]),
        "mmd_p_value": dg.MetadataValue.float(emb["mmd_p_value"]),
        f"{name}_psi": dg.MetadataValue.float(target["psi"]),
        f"{name}_js": dg.MetadataValue.float(target["js"]),
        f"{name}_p_value": dg.MetadataValue.float(target["p_value"]),
        "length_psi": dg.MetadataValue.float(length["psi"]),
        "mean_length_reference": dg.MetadataValue.float(length["mean_reference"]),
        "mean_length_recent": dg.MetadataValue.float(length["mean_recent"]),
        "texts_embedded": emb["texts_embedded"],
        "reference_sampled": reference["sampled"],
        "recent_sampled": f["recent"]["sampled"],
    }
    if "answer_length" in f:
        meta["answer_length_psi"] = dg.MetadataValue.float(f["answer_length"]["psi"])
    if report.plot is not None:
        image = base64.b64encode(report.plot).decode()
        meta["plot"] = dg.MetadataValue.md(f"![drift report](data:image/png;base64,{image})")
        meta["plot_file"] = _link(uris["plot"])
    return meta


def drift_sensor(family: FamilyConfig, job_name: str) -> dg.SensorDefinition:
    cfg = family.automation.drift
    key = drift_report_key(family)

    @dg.sensor(
        name=f"drift_{family.snake}",
        job_name=job_name,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Retrain {family.name} when its drift report crosses a threshold (drift score "
        f"{cfg.threshold:g}, distribution PSI {cfg.distribution_threshold:g}) and {cfg.min_new_annotations} "
        "new trainable annotations exist.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
        training: TrainingEnvironment,
    ) -> dg.SensorResult | dg.SkipReason:
        from pulse_pipeline.core.drift.sides import reference_version
        from pulse_pipeline.core.retraining import NewAnnotations, new_annotations

        event = context.instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            return dg.SkipReason(f"no drift report yet: materialize {key.to_user_string()}")
        meta = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
        if not meta.get("crossed"):
            return dg.SkipReason(f"no drift: {meta.get('reasons', 'the report crossed no threshold')}")
        artifacts = artifact_storage.open()
        found = reference_version(artifacts, family.name)
        now_version = found[0] if found else None
        if now_version != meta.get("reference_dataset_version"):
            return dg.SkipReason(
                f"the drift report compared against snapshot {meta.get('reference_dataset_version')}, "
                f"the reference is now {now_version}: waiting for a new report"
            )
        store = annotation_store.store
        seen = new_annotations(store, artifacts, family, NewAnnotations.from_cursor(context.cursor))
        context.update_cursor(seen.to_cursor())
        if seen.count < cfg.min_new_annotations:
            return dg.SkipReason(
                f"drift ({meta['reasons']}) but {seen.count} of {cfg.min_new_annotations} new annotations"
            )
        request = retrain_request(  # one drift retrain per data state
            context.instance,
            family,
            f"drift:{family.name}:{seen.watermark}",
            {
                "pulse/trigger": "drift",
                "pulse/new_annotations": str(seen.count),
                "pulse/drift_score": f"{meta.get('drift_score', float('nan')):.3f}",
            },
            job_name=job_name,
            store=store,
            training=training,
        )
        if isinstance(request, dg.SkipReason):
            return request
        return dg.SensorResult(run_requests=[request])  # the cursor is set above (update_cursor)

    return _sensor
