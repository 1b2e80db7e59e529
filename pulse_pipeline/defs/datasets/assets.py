"""Per family: `review_queue` and `examples` from the annotations, then `dataset_snapshot`."""

import dagster as dg
import orjson

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.build_stats import BuildStats
from pulse_pipeline.core.examples import build_examples, formatter_version
from pulse_pipeline.core.families import FamilyConfig, TaskKind
from pulse_pipeline.core.review import review_queue
from pulse_pipeline.core.snapshots import (
    Preferences,
    check_names,
    check_snapshot,
    from_parquet,
    no_examples_reason,
    prefix,
    to_parquet,
    write_snapshot,
)
from pulse_pipeline.core.triage import generates_qa
from pulse_pipeline.defs.metadata import count_table
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage
from pulse_pipeline.defs.retries import retry_transient


def _key(family: FamilyConfig, name: str) -> dg.AssetKey:
    return dg.AssetKey([family.name, name])


def examples_key(family: str) -> str:
    return f"examples/{family}/examples.parquet"


def build_stats_key(family: str) -> str:
    return f"examples/{family}/build.json"


def preferences_key(family: str, name: str) -> str:
    """A chat family's preference data beside its examples: `dpo`, `kto` (Parquet), `stats` (JSON)."""
    return f"examples/{family}/preferences-{name}.{'json' if name == 'stats' else 'parquet'}"


def review_queue_asset(family: FamilyConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=_key(family, "review_queue"),
        deps=[_key(family, "annotations")] + ([_key(family, "generated_qa")] if generates_qa(family) else []),
        group_name=family.snake,
        kinds={"python"},
        tags={"pulse/family": family.name, "pulse/stage": "review"},
    )
    @retry_transient
    def _review_queue(
        context: dg.AssetExecutionContext, annotation_store: AnnotationStore
    ) -> dg.MaterializeResult:
        """Captured predictions and generated QA pairs waiting for a person, priority first (`pulse review export` sends them to Label Studio)."""
        queue = review_queue(annotation_store.store.annotations.iter_family(family.name), family)
        context.log.info(f"{family.name}: {len(queue.items)} waiting for review")
        top = [
            f"| {i.status} | {i.confidence if i.confidence is not None else ''} | {i.provider or ''} | {i.suggestion} | {i.text[:80]} |"
            for i in queue.items[:25]
        ]
        return dg.MaterializeResult(
            metadata={
                "waiting": len(queue.items),
                "priority": sum(1 for i in queue.items if i.status == "priority_review"),
                "settled_by_review": queue.settled,
                "by_status": count_table(("status", "records"), sorted(queue.by_status.items())),
                "next_up": dg.MetadataValue.md(
                    "\n".join(
                        [
                            "| status | confidence | provider | suggestion | text |",
                            "|---|---:|---|---|---|",
                            *top,
                        ]
                    )
                ),
            }
        )

    return _review_queue


def examples_asset(family: FamilyConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=_key(family, "examples"),
        deps=[_key(family, "annotations")],
        group_name=family.snake,
        kinds={"parquet"},
        tags={"pulse/family": family.name, "pulse/stage": "examples"},
    )
    @retry_transient
    def _examples(
        context: dg.AssetExecutionContext,
        annotation_store: AnnotationStore,
        artifact_storage: ArtifactStorage,
    ) -> dg.MaterializeResult:
        """Approved and human-reviewed annotations as weighted, PII-redacted, deduplicated training examples."""
        table, stats = build_examples(annotation_store.store, family)
        artifacts = artifact_storage.open()
        artifacts.write_bytes(examples_key(family.name), to_parquet(table))
        artifacts.write_bytes(build_stats_key(family.name), stats.to_json())
        context.log.info(f"{family.name}: {table.num_rows} examples from {stats.annotations} annotations")
        preference_metadata = {}
        if family.task is TaskKind.chat_sft:
            from pulse_pipeline.core.preferences import build_preferences

            dpo, kto, prefs = build_preferences(annotation_store.store, family)
            artifacts.write_bytes(preferences_key(family.name, "dpo"), to_parquet(dpo))
            artifacts.write_bytes(preferences_key(family.name, "kto"), to_parquet(kto))
            artifacts.write_bytes(preferences_key(family.name, "stats"), orjson.dumps(prefs.to_json()))
            preference_metadata = {"preferences": dg.MetadataValue.json(prefs.to_json())}
        by_kind = (
            {k["values"]: k["counts"] for k in table["kind"].value_counts().to_pylist()}
            if table.num_rows
            else {}
        )
        weights = sorted(set(table["weight"].to_pylist()))
        return dg.MaterializeResult(
            metadata={
                "examples": table.num_rows,
                "annotations_read": stats.annotations,
                "store_watermark": stats.watermark,
                "by_review_status": count_table(("status", "annotations"), sorted(stats.by_status.items())),
                "by_kind": dict(sorted(by_kind.items())),
                "exact_duplicates": stats.exact_duplicates,
                "normalized_duplicates": stats.normalized_duplicates,
                "negatives": stats.negatives,
                "redactions": count_table(("placeholder", "replaced"), sorted(stats.redactions.items()))
                if stats.redactions
                else ("none found" if family.redaction.enabled else "disabled in pulse.yaml"),
                "weights": ", ".join(f"{w:g}" for w in weights),
                "formatter_version": formatter_version(family),
                "path": dg.MetadataValue.path(artifacts.uri(examples_key(family.name))),
                **preference_metadata,
            },
            # moves with new records, with a data fix (invalidation) and with a new formatter
            data_version=dg.DataVersion(
                f"{stats.watermark}-{stats.invalidations}-{formatter_version(family)}"
            ),
        )

    return _examples


def dataset_snapshot_asset(family: FamilyConfig) -> dg.AssetsDefinition:
    key = _key(family, "dataset_snapshot")

    @dg.asset(
        key=key,
        deps=[_key(family, "examples")],
        group_name=family.snake,
        kinds={"parquet"},
        tags={"pulse/family": family.name, "pulse/stage": "dataset"},
        check_specs=[
            dg.AssetCheckSpec(name, asset=key, blocking=blocking) for name, blocking in check_names(family)
        ],
    )
    @retry_transient
    def _dataset_snapshot(
        context: dg.AssetExecutionContext, artifact_storage: ArtifactStorage
    ) -> dg.MaterializeResult:
        """A frozen, content-addressed train/val/test snapshot (stratified, group-aware), with its manifest."""
        artifacts = artifact_storage.open()
        try:
            table = from_parquet(artifacts.read_bytes(examples_key(family.name)))
            stats = BuildStats.from_json(artifacts.read_bytes(build_stats_key(family.name)))
        except KeyError:
            raise dg.Failure(
                f"no examples for {family.name} yet: materialize {family.name}/examples first"
            ) from None
        if table.num_rows == 0:
            raise dg.Failure(no_examples_reason(family, stats))
        snapshot = write_snapshot(
            artifacts, family, table, stats, preferences=_preferences(artifacts, family)
        )
        m = snapshot.manifest
        context.log.info(
            f"{family.name}: dataset_version {snapshot.version} ({'reused' if snapshot.reused else 'new'})"
        )
        checks = [
            dg.AssetCheckResult(
                check_name=c.name,
                passed=c.passed,
                description=c.description,
                metadata=c.metadata,
                severity=dg.AssetCheckSeverity.ERROR if c.blocking else dg.AssetCheckSeverity.WARN,
            )
            for c in check_snapshot(family, table, snapshot.splits)
        ]
        summary = {k: v for k, v in m.items() if k != "example_ids"}
        return dg.MaterializeResult(
            metadata={
                "dataset_version": snapshot.version,
                "reused": snapshot.reused,
                "parent_version": m["parent_version"] or "none",
                "splits": count_table(
                    ("split", "examples"), [(s, m["counts"][s]) for s in ("train", "val", "test")]
                ),
                "by_stratum": dg.MetadataValue.md(_strata_table(m["by_stratum"])),
                "manifest": dg.MetadataValue.json(summary),
                "path": dg.MetadataValue.path(
                    artifacts.uri(f"{prefix(family.name, snapshot.version)}/manifest.json")
                ),
            },
            check_results=checks,
            data_version=dg.DataVersion(snapshot.version),
        )

    return _dataset_snapshot


def _preferences(artifacts: ArtifactStore, family: FamilyConfig) -> Preferences | None:
    """The preference data the examples step built (chat families), or None."""
    if family.task is not TaskKind.chat_sft:
        return None
    try:
        return Preferences(
            dpo=from_parquet(artifacts.read_bytes(preferences_key(family.name, "dpo"))),
            kto=from_parquet(artifacts.read_bytes(preferences_key(family.name, "kto"))),
            stats=orjson.loads(artifacts.read_bytes(preferences_key(family.name, "stats"))),
        )
    except KeyError:  # examples built before preference data existed
        return None


def _strata_table(by_stratum: dict[str, dict[str, int]]) -> str:
    names = sorted({k for split in by_stratum.values() for k in split})
    rows = [
        f"| {n} | " + " | ".join(str(by_stratum[s].get(n, 0)) for s in ("train", "val", "test")) + " |"
        for n in names[:60]
    ]
    more = [f"| ... {len(names) - 60} more | | | |"] if len(names) > 60 else []
    return "\n".join(["| stratum | train | val | test |", "|---|---:|---:|---:|", *rows, *more])
