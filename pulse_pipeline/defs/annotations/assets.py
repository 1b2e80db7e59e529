"""`<family>/annotations`: the day's annotations of one family, counted and audited.

The store stays the source of truth; a materialization records what a day holds (counts and
breakdowns of its valid records as metadata, a data version that changes when the day's valid
records change, invalidations included) and checks that every line received for that day is
accounted for (invalidated records were received and stored: they count as stored).
"""

import datetime as dt

import dagster as dg

from pulse_pipeline.core.annotations import summarize
from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.core.store import DayAudit
from pulse_pipeline.defs.metadata import count_table
from pulse_pipeline.defs.resources import AnnotationStore
from pulse_pipeline.defs.retries import retry_transient

CHECK_ACCOUNTED = "every_line_accounted_for"


def annotations_asset(family: FamilyConfig, partitions: dg.DailyPartitionsDefinition) -> dg.AssetsDefinition:
    key = dg.AssetKey([family.name, "annotations"])

    @dg.asset(
        key=key,
        partitions_def=partitions,
        group_name=family.snake,
        kinds={"sql"},
        tags={"pulse/family": family.name, "pulse/stage": "annotations"},
        description=f"{family.name}: one UTC day of human judgments ({', '.join(family.annotation_kinds)}).",
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_ACCOUNTED,
                asset=key,
                blocking=True,
                description="Lines received for this day = stored + duplicates + quarantined.",
            )
        ],
    )
    @retry_transient
    def _annotations(
        context: dg.AssetExecutionContext, annotation_store: AnnotationStore
    ) -> dg.MaterializeResult:
        day = dt.date.fromisoformat(context.partition_key)
        store = annotation_store.store
        summary = summarize(store.annotations.iter_day(family.name, day))
        audit = store.annotations.audit_day(family.name, day)
        context.log.info(
            f"{family.name} {day}: {summary.count} annotations, {audit.invalidated} invalidated, "
            f"{audit.quarantined} quarantined"
        )
        metadata: dict[str, dg.RawMetadataValue] = {
            "annotations": summary.count,
            "invalidated": audit.invalidated,
            "quarantined": audit.stored_quarantined,
            "by_kind": dict(summary.by_kind),
            "annotators": len(summary.by_annotator),
            "store_watermark": store.annotations.latest_seq(family.name),
        }
        if summary.by_segment_type:
            metadata["by_segment_type"] = dict(summary.by_segment_type)
            metadata["by_disagreement_reason"] = dict(summary.by_disagreement)
        if summary.by_label:
            metadata["labels"] = len(summary.by_label)
            metadata["top_labels"] = count_table(("label", "count"), summary.by_label.most_common(15))
        if summary.by_rating:
            metadata["by_rating"] = dict(sorted(summary.by_rating.items()))
        if summary.low_confidence:
            metadata["low_confidence"] = summary.low_confidence
        check = dg.AssetCheckResult(
            check_name=CHECK_ACCOUNTED,
            passed=audit.accounted_for,
            metadata={
                "lines_received": audit.lines,
                "accepted": audit.accepted,
                "duplicates": audit.duplicates,
                "restored": audit.restored,
                "quarantined": audit.quarantined,
                "stored": audit.stored,
                "invalidated": audit.invalidated,
                "stored_quarantined": audit.stored_quarantined,
            },
            description=None if audit.accounted_for else _mismatch(audit),
        )
        return dg.MaterializeResult(
            metadata=metadata, check_results=[check], data_version=dg.DataVersion(summary.digest[:16])
        )

    return _annotations


def _mismatch(audit: DayAudit) -> str:
    return (
        f"received {audit.lines} lines: {audit.accepted} accepted + {audit.duplicates} duplicates + "
        f"{audit.restored} restored + {audit.quarantined} quarantined; the store holds {audit.stored} annotations and "
        f"{audit.stored_quarantined} quarantined lines for this day"
    )
