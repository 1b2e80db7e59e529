"""`<family>/drift_report` materialized with the real minilm-l6 encoder, and `drift_<family>` ticks
against it, on CLINC150 data shifted on purpose or not: the production adapter trained on banking
and travel intents; recent traffic from the same domains requests nothing, traffic from other
domains requests one retrain per data state once enough new annotations exist."""

import datetime as dt
import itertools
import json
import random

import dagster as dg
import orjson
import pytest

from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.registry import Registry
from pulse_pipeline.core.registry.pointer import write_current
from pulse_pipeline.core.snapshots import latest_manifest, read_manifest, write_snapshot
from pulse_pipeline.core.store import Store
from pulse_pipeline.defs.automation.drift import drift_report_asset, drift_sensor
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment
from pulse_pipeline_tests.conftest import CLINC150
from pulse_pipeline_tests.core.registry.conftest import adapter_folder

FAMILY = "intent-router"
PRODUCTION = "intent-router-20260601-0900"
BEFORE = ["banking", "travel"]  # what production trained on
AFTER = ["kitchen_and_dining", "home", "utility"]  # traffic that moved


@pytest.fixture(scope="module")
def clinc():
    data = json.loads((CLINC150 / "data_full.json").read_text())
    domains = json.loads((CLINC150 / "domains.json").read_text())

    def pairs(names, start, stop):
        """Rows start:stop of a seeded shuffle of the train split's utterances of these domains
        (disjoint slices never share an utterance)."""
        intents = {i for d in names for i in domains[d]}
        pool = [(t, lab) for t, lab in data["train"] if lab in intents]
        random.Random(1).shuffle(pool)
        return pool[start:stop]

    return pairs


class Setup:
    """A store and artifact folder where production trained on banking and travel utterances."""

    def __init__(self, config, tmp_path, clinc):
        self.config, self.tmp_path, self.family = config, tmp_path, config.family(FAMILY)
        self.url = f"sqlite:///{tmp_path / 'pulse.db'}"
        self.resources = {
            "annotation_store": AnnotationStore(database_url=self.url),
            "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
            "training": TrainingEnvironment(home=str(tmp_path / "home")),
        }
        self.artifacts = self.resources["artifact_storage"].open()
        self.now = dt.datetime.now(dt.UTC)
        self.batches = itertools.count()
        self.ingest(clinc(BEFORE, 0, 200), days_ago=90)
        version = self.snapshot()
        self.trained(version, when=dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.UTC))
        write_current(self.artifacts, FAMILY, {"version": PRODUCTION, "dataset_version": version})

    def ingest(self, pairs, days_ago):
        when = (self.now - dt.timedelta(days=days_ago)).isoformat()
        records = [
            {"kind": "intent_label", "family": FAMILY, "text": text, "label": label, "annotator": "reviewer",
             "created_at": when}
            for text, label in pairs
        ]  # fmt: skip
        path = self.tmp_path / f"batch-{next(self.batches)}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        with Store(self.url) as store:
            ingest_file(store, path, self.config)

    def snapshot(self):
        with Store(self.url) as store:
            table, stats = build_examples(store, self.family)
        return write_snapshot(self.artifacts, self.family, table, stats).version

    def trained(self, dataset_version, when=None):
        """A version trained on the snapshot (recorded with its watermark, as a training does)."""
        manifest = read_manifest(self.artifacts, FAMILY, dataset_version)
        with Store(self.url) as store:
            registry = Registry(store, self.artifacts)
            record = registry.begin(
                FAMILY, dataset_version=dataset_version, base_model="minilm-l6", training_config={},
                created_by="test", watermark=latest_manifest(self.artifacts, FAMILY)["watermark"]["seq"],
                when=when,
            )  # fmt: skip
            registry.publish(
                record,
                adapter_folder(self.tmp_path, next(self.batches)),
                {"dataset": manifest["dataset_version"]},
            )
        return record.version

    def report(self, instance):
        result = dg.materialize(
            [drift_report_asset(self.family)], resources=self.resources, instance=instance
        )
        (event,) = result.get_asset_materialization_events()
        return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}

    def tick(self, instance, cursor=None):
        sensor = drift_sensor(self.family, "retrain_intent_router")
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=self.resources) as context:
            return sensor(context), context.cursor


@pytest.mark.slow  # loads the real encoder (~7 s of imports and weights) and embeds 260 texts
def test_same_domains_report_no_drift_and_the_sensor_skips_with_the_score(config, tmp_path, clinc):
    setup = Setup(config, tmp_path, clinc)
    setup.ingest(clinc(BEFORE, 200, 300), days_ago=1)  # more of the same
    with dg.instance_for_test() as instance:
        meta = setup.report(instance)
        assert meta["status"] == "compared" and meta["crossed"] is False
        assert meta["reference_source"] == "production" and meta["reference_size"] == 160  # train split
        assert meta["recent_size"] == 100 and meta["texts_embedded"] == 260
        assert 0.35 < meta["drift_score"] < 0.65
        # The PSI of 30 labels over 100 rows is mostly noise: over 0.2, but not significant.
        assert meta["label_psi"] > 0.2 and meta["label_p_value"] > 0.01
        assert meta["plot"].startswith("![drift report](data:image/png;base64,")
        report = json.loads((tmp_path / "artifacts" / "drift" / FAMILY / "report.json").read_bytes())
        assert report["crossed"] is False and report["reference"]["adapter_version"] == PRODUCTION
        assert (tmp_path / "artifacts" / "drift" / FAMILY / "report.png").read_bytes()[:4] == b"\x89PNG"

        result, _ = setup.tick(instance)
        assert isinstance(result, dg.SkipReason)
        assert result.skip_message.startswith(f"no drift: drift score {meta['drift_score']:.2f} below 0.75")


@pytest.mark.slow  # the real encoder, four reports
def test_other_domains_request_one_retrain_per_data_state_once_enough_is_new(config, tmp_path, clinc):
    setup = Setup(config, tmp_path, clinc)
    shifted = clinc(AFTER, 0, 112)
    setup.ingest(shifted[:100], days_ago=1)
    # A retrain trained a version on the shifted data but did not promote it: production still
    # trains on banking and travel, and nothing is new since the newest trained version.
    setup.trained(setup.snapshot())
    with dg.instance_for_test() as instance:
        assert setup.tick(instance)[0].skip_message == (
            f"no drift report yet: materialize {FAMILY}/drift_report"
        )
        meta = setup.report(instance)
        assert meta["crossed"] is True and meta["drift_score"] > 0.9 and meta["mmd_p_value"] < 0.05
        assert meta["label_psi"] > 1 and meta["texts_embedded"] == 260
        result, cursor = setup.tick(instance)
        assert result.skip_message.endswith("but 0 of 20 new annotations")
        assert "drift score" in result.skip_message

        setup.ingest(shifted[100:], days_ago=0)  # 12 new: below 20; the report embeds only them
        meta = setup.report(instance)
        assert meta["texts_embedded"] == 12 and meta["new_annotations"] == 12
        assert setup.report(instance)["texts_embedded"] == 0
        result, cursor = setup.tick(instance, cursor)
        assert result.skip_message.endswith("but 12 of 20 new annotations")

        setup.ingest(clinc(AFTER, 112, 120), days_ago=0)
        result, cursor = setup.tick(instance, cursor)
        (request,) = result.run_requests
        assert request.run_key == f"drift:{FAMILY}:300"  # the newest trained version's watermark
        assert request.tags["pulse/trigger"] == "drift" and request.tags["pulse/new_annotations"] == "20"
        again, _ = setup.tick(instance, cursor)
        assert [r.run_key for r in again.run_requests] == [request.run_key]  # same data, same key

        # The retrain promoted a version trained on a new snapshot: the old report no longer applies.
        version = setup.snapshot()
        write_current(
            setup.artifacts, FAMILY, {"version": "intent-router-20260701-0900", "dataset_version": version}
        )
        result, _ = setup.tick(instance, cursor)
        assert result.skip_message.endswith("waiting for a new report")


class BagOfWords:
    """A fast stand-in for the encoder: hashed word counts, normalized."""

    def __init__(self, name, models_dir):
        self.name = name

    def __call__(self, texts):
        import numpy as np

        out = np.zeros((len(texts), 64), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, sum(map(ord, word)) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_the_asset_records_figures_and_the_sensor_follows_the_newest_report(
    config, tmp_path, clinc, monkeypatch
):
    from pulse_pipeline.core.drift import embeddings

    monkeypatch.setattr(embeddings, "SentenceEncoder", BagOfWords)
    setup = Setup(config, tmp_path, clinc)
    setup.ingest(clinc(AFTER, 0, 30), days_ago=2)
    with dg.instance_for_test() as instance:
        meta = setup.report(instance)
        assert meta["crossed"] is True and meta["status"] == "compared"
        assert {"drift_score", "domain_auc", "mmd", "mmd_p_value", "label_psi", "label_js", "length_psi",
                "mean_length_reference", "mean_length_recent", "reference_size", "recent_size",
                "reference_dataset_version", "window_days", "new_annotations", "plot", "plot_file",
                "report"} <= set(meta)  # fmt: skip
        assert meta["window_days"] == 30 and meta["new_annotations"] == 30 and meta["recent_size"] == 30
        assert meta["report"] == str(tmp_path / "artifacts" / "drift" / FAMILY / "report.json")
        (request,) = setup.tick(instance)[0].run_requests
        assert request.run_key == f"drift:{FAMILY}:200"

        # A newer report that crossed nothing (or with nothing to compare) wins over the old one.
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                [FAMILY, "drift_report"],
                metadata={
                    "crossed": False,
                    "reasons": "drift score 0.52 below 0.75; label PSI 0.10 below 0.2",
                },
            )
        )
        result, _ = setup.tick(instance)
        assert result.skip_message == "no drift: drift score 0.52 below 0.75; label PSI 0.10 below 0.2"
