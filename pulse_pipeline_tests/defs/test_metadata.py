"""Metadata floats rounded for people (4 significant digits), in one place, and only the metadata:
what the core computes keeps full precision."""

import datetime as dt
import math

import dagster as dg
import orjson
import pytest

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.capture_report import capture_report
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.store import Store
from pulse_pipeline.definitions import annotation_partitions
from pulse_pipeline.defs.automation.daily_report import daily_report_asset
from pulse_pipeline.defs.metadata import for_people, readable
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage

DAY = dt.date(2026, 12, 1)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(5 / 6, 0.8333), (2 / 3, 0.6667), (1234.5678, 1235.0), (123456.7, 123500.0), (-0.000123456, -0.0001235),
     (0.5, 0.5), (0.0, 0.0), (3.0, 3.0)],
)  # fmt: skip
def test_readable_keeps_four_significant_digits(value, shown):
    assert readable(value) == shown


def test_readable_leaves_infinities_and_nan_alone():
    assert readable(math.inf) == math.inf and math.isnan(readable(math.nan))


def test_for_people_rounds_every_float_and_nothing_else():
    meta = for_people({
        "plain": 5 / 6,
        "value": dg.MetadataValue.float(1 / 3),
        "json": dg.MetadataValue.json({"versions": [{"accuracy": 2 / 3, "judged": 7, "ok": True}]}),
        "nested": {"a": [1 / 7, "x"]},
        "count": 12,
        "flag": True,
        "text": "0.8333333333333334",
        "table": dg.MetadataValue.md("| a | 0.123456789 |"),
    })  # fmt: skip
    assert meta["plain"] == 0.8333
    assert meta["value"] == dg.MetadataValue.float(0.3333)
    assert meta["json"] == dg.MetadataValue.json({"versions": [{"accuracy": 0.6667, "judged": 7, "ok": True}]})
    assert meta["nested"] == {"a": [0.1429, "x"]}
    assert (meta["count"], meta["flag"], meta["text"]) == (12, True, "0.8333333333333334")
    assert meta["table"] == dg.MetadataValue.md("| a | 0.123456789 |")  # text a person wrote stays as it is


def _capture(text: str, confidence: float) -> bytes:
    return orjson.dumps({
        "kind": "intent_label", "family": "intent-router", "text": text, "label": "balance",
        "predicted_label": "balance", "confidence": confidence, "provider": "encoder",
        "created_at": f"{DAY}T10:00:00Z",
    })  # fmt: skip


def test_a_materialization_shows_rounded_floats_while_the_report_keeps_full_precision(config, tmp_path):
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    with Store(url) as store:  # two of three captures above the auto-approval bar: 2/3
        ingest_lines(store, [_capture("a", 0.95), _capture("b", 0.91), _capture("c", 0.40)], config, source="t")
        family = config.family("intent-router")
        full = capture_report(store, open_artifact_store(str(tmp_path / "artifacts")), family, DAY)
    assert full.auto_approval_rate == 2 / 3 and full.average_confidence == pytest.approx(2.26 / 3)
    asset = daily_report_asset(family, annotation_partitions(config))
    resources = {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key=DAY.isoformat(), resources=resources, instance=instance)
        assert result.success
        recorded = instance.get_latest_materialization_event(asset.key).asset_materialization.metadata
    assert recorded["auto_approval_rate"].value == 0.6667
    assert recorded["average_confidence"].value == 0.7533
    assert recorded["captures"].value == 3 and recorded["auto_approved"].value == 2
