"""The gate end to end on real adapters: CLINC150 intents on `minilm-l6`, an adapter trained on
shuffled labels against a good production adapter (FAIL, naming the metric), the good one
against the shuffled one (DEPLOY), the first version against the base model, the same inputs
giving the same intervals, the reports written next to the adapter, and a test split too small
for the task's default minimum of examples asking a person (REVIEW)."""

import json
import random

import orjson
import pytest
from mlflow import MlflowClient

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.evaluation.config import EvidenceConfig
from pulse_pipeline.core.evaluation.runner import evaluate_version
from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.families import parse_config
from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.registry import files, pointer
from pulse_pipeline.core.snapshots import read_split, write_snapshot
from pulse_pipeline.core.store import Store
from pulse_pipeline.core.training.base_models import resolve_base_model
from pulse_pipeline.core.training.config import resolve_training_config
from pulse_pipeline.core.training.recipe import TrainingJob, train
from pulse_pipeline.core.training.tracking import MlflowRun
from pulse_pipeline_tests.conftest import CLINC150
from pulse_pipeline_tests.versions import publish_files

INTENTS = ("balance", "transfer", "freeze_account", "book_flight", "weather", "timer", "oos")


@pytest.fixture(scope="module")
def world(tmp_path_factory, model_cache):
    if not (CLINC150 / "data_full.json").is_file():
        pytest.skip(f"CLINC150 not found at {CLINC150}")
    tmp = tmp_path_factory.mktemp("gate")
    config = parse_config(
        {
            "families": {
                "intents": {
                    "task": "classification",
                    "annotation_kinds": ["intent_label"],
                    "base_model": "minilm-l6",
                    "labels": list(INTENTS),
                    "split": {"train": 0.6, "val": 0.2, "test": 0.2},
                    # ~42 test examples: under classification's default minimum (100), so the
                    # DEPLOY paths lower it; the test also runs once with the default.
                    "evaluation": {
                        "gate": {
                            "absolute": {"accuracy": {"fail_below": 0.5}},
                            "evidence": {"min_examples": 30},
                        }
                    },
                }
            }
        }
    )
    family = config.family("intents")
    data = json.loads((CLINC150 / "data_full.json").read_text())
    per_label: dict[str, int] = {}
    lines = []
    for text, label in data["train"] + data["oos_train"]:
        if label in INTENTS and per_label.get(label, 0) < 30:
            per_label[label] = per_label.get(label, 0) + 1
            lines.append(
                {
                    "kind": "intent_label",
                    "family": "intents",
                    "text": text,
                    "label": label,
                    "annotator": "crowd",
                }
            )
    (tmp / "records.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    with Store(f"sqlite:///{tmp / 'pulse.db'}") as store:
        ingest_file(store, tmp / "records.jsonl", config)
        table, stats = build_examples(store, family)
    artifacts = LocalArtifactStore(tmp / "artifacts")
    dataset = write_snapshot(artifacts, family, table, stats).version
    return config, family, artifacts, dataset, tmp, model_cache


def _publish(world, *, shuffled: bool) -> str:
    config, family, artifacts, dataset, tmp, model_cache = world
    train_set = read_split(artifacts, family, dataset, "train")
    if shuffled:
        labels = [e["label"] for e in train_set]
        random.Random(0).shuffle(labels)
        train_set = [{**e, "label": label} for e, label in zip(train_set, labels, strict=True)]
    settings = resolve_training_config("classification", family.training, {"epochs": 1})
    base = resolve_base_model(family.base_model, model_cache)
    val_set = read_split(artifacts, family, dataset, "val")
    job = TrainingJob(family, settings, dataset, train_set, val_set, base, tmp / "work" / str(shuffled))
    run = MlflowRun(
        f"sqlite:///{tmp / 'mlflow.db'}", "intents", run_name="t", artifact_root=tmp / "ml", tags={}
    )
    result = train(job)
    run.finish(ok=True)
    meta = {**result.metadata, "mlflow": {"run_id": run.run_id}}
    return publish_files(artifacts, family.name, result.folder, meta)


def _point_current(artifacts, version):
    artifacts.write_bytes(pointer.current_key("intents"), orjson.dumps({"version": version}))


def _evaluate(world, version, family=None):
    config, default, artifacts, _, tmp, _ = world
    return evaluate_version(
        family or default,
        config,
        artifacts,
        home=tmp / "home",
        version=version,
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
    )


@pytest.mark.slow
def test_shuffled_labels_fail_against_a_good_adapter_and_a_good_one_deploys(world):
    artifacts = world[2]
    good = _publish(world, shuffled=False)

    first = _evaluate(world, good)  # no production yet: judged against the base model
    assert first.results["baseline"]["kind"] == "base_model"
    assert first.decision == "DEPLOY", first.results["gate"]
    test_size = next(s["examples"] for s in first.results["sets"] if s["name"] == "test")
    assert f"evidence: {test_size} test examples (at least 30)" in [
        c["reason"] for c in first.results["gate"]["checks"]
    ]

    family = world[1]  # the same run under the task's default minimum: too few examples to deploy
    gate = family.evaluation.gate.model_copy(update={"evidence": EvidenceConfig()})
    thin = family.model_copy(update={"evaluation": family.evaluation.model_copy(update={"gate": gate})})
    small = _evaluate(world, good, thin)
    assert small.decision == "REVIEW" and small.results["gate"]["reasons"] == [
        f"not enough evidence: {test_size} test examples, fewer than 100"
    ]

    bad = _publish(world, shuffled=True)
    _point_current(artifacts, good)
    judged = _evaluate(world, bad)
    r = judged.results
    assert r["baseline"] == {"kind": "production", "version": good}
    assert judged.decision == "FAIL"
    assert any(reason.startswith("accuracy") and "FAIL" in reason for reason in r["gate"]["reasons"])
    acc = next(row for row in r["comparison"]["test"] if row["metric"] == "accuracy")
    assert acc["delta"] < -0.3 and acc["ci_high"] < 0
    assert r["flipped"] and all(f["candidate"] != f["reference"] for f in r["flipped"])
    assert r["threshold"]["chosen_on"] == "val" and "in_scope_accuracy" in r["metrics"]["test"]["candidate"]

    _point_current(artifacts, bad)
    better = _evaluate(world, good)
    assert better.decision == "DEPLOY" and better.results["gate"]["reasons"] == []
    again = _evaluate(world, good)

    def quality(evaluation):  # latency is measured anew each time; every other row must repeat exactly
        return [
            row for row in evaluation.results["comparison"]["test"] if not row["metric"].startswith("latency")
        ]

    assert quality(again) == quality(better) and len(quality(better)) >= 4  # same inputs, same intervals

    folder = artifacts.local_path(files.key("intents", good)) / "eval"
    assert {p.name for p in folder.iterdir()} == {"results.json", "report.md", "report.html"}
    assert json.loads((folder / "results.json").read_text())["gate"]["decision"] == "DEPLOY"
    assert "DEPLOY" in (folder / "report.md").read_text()

    client = MlflowClient(f"sqlite:///{world[4] / 'mlflow.db'}")
    run_id = files.read_metadata(artifacts, "intents", bad)["mlflow"]["run_id"]
    logged = client.get_run(run_id)
    assert logged.data.tags["pulse.decision"] == "FAIL" and "eval.test.accuracy" in logged.data.metrics
    assert {
        "eval.test.baseline.accuracy",
        "eval.test.delta.accuracy",
        "eval.test.delta.accuracy.ci_high",
    } <= set(logged.data.metrics)
    assert logged.data.metrics["eval.test.delta.accuracy"] == pytest.approx(acc["delta"])
    assert {a.path for a in client.list_artifacts(run_id, "eval")} == {
        "eval/results.json", "eval/report.md", "eval/report.html",
    }  # fmt: skip

    # A user's own test file named test.jsonl: beside the snapshot's test split, never over it.
    data = json.loads((CLINC150 / "data_full.json").read_text())
    own = [
        {"kind": "intent_label", "family": "intents", "text": text, "label": label, "annotator": "crowd"}
        for text, label in data["test"] if label in INTENTS
    ][:40]  # fmt: skip
    (world[4] / "test.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in own))
    config, family = world[0], world[1]
    both = evaluate_version(
        family, config, artifacts, home=world[4] / "home", version=good, eval_files=(world[4] / "test.jsonl",),
        tracking_uri=f"sqlite:///{world[4] / 'mlflow.db'}",
    )  # fmt: skip
    assert [s["name"] for s in both.results["sets"]] == ["test", "test-external"]
    assert set(both.results["metrics"]) == {"test", "test-external"}
    assert both.results["floor"]["set"] == "test" and both.results["floor"]["fit"]["kind"] == "logistic_regression"
    # the floor is the one the recipe fitted on the same snapshot, saved with the adapter (not refitted)
    assert both.results["floor"]["fit"] == files.read_metadata(artifacts, "intents", good)["floor"]
    assert any(c["kind"] == "floor" for c in both.results["gate"]["checks"])
    metrics = client.get_run(files.read_metadata(artifacts, "intents", good)["mlflow"]["run_id"]).data.metrics
    assert {"eval.test.accuracy", "eval.test-external.accuracy", "eval.test.floor.floor.top1_accuracy"} <= set(metrics)


def test_the_family_test_file_is_its_test_set_and_keeps_its_own_name_beside_a_test_split(world):
    from pulse_pipeline.core.evaluation.runner import _evaluation_sets
    from pulse_pipeline.core.families import SplitConfig

    config, family, artifacts, dataset, tmp, _ = world
    data = json.loads((CLINC150 / "data_full.json").read_text())
    own = [
        {"kind": "intent_label", "family": "intents", "text": text, "label": label, "annotator": "crowd"}
        for text, label in data["test"] if label in INTENTS
    ][:20]  # fmt: skip
    path = tmp / "official.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in own))
    with_file = family.evaluation.model_copy(update={"test_file": path})
    only = family.model_copy(update={"evaluation": with_file, "split": SplitConfig(train=0.9, val=0.1, test=0.0)})
    sets, empty = _evaluation_sets(only, config, artifacts, dataset, ())
    assert [(s.name, s.source, len(s)) for s in sets] == [("test", str(path), 20)] and empty == []
    both = family.model_copy(update={"evaluation": with_file})  # the snapshot keeps its test split too
    sets, _ = _evaluation_sets(both, config, artifacts, dataset, (path,))
    assert [s.name for s in sets] == ["test", "official", "official-external"]
    assert sets[0].source.startswith("snapshot ")
