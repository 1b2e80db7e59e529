"""Forgetting at the gate on real snapshots: CLINC150 intents ingested in three batches, a snapshot
after each (and one kept without a test split); the old slices are the earlier snapshots' test
splits, newest first, without the examples either system trained on; a candidate is judged on
them against production through `evaluate_version`, with the slices in results.json, the
reports and MLflow under their own names."""

import datetime as dt
import json
import random
from types import SimpleNamespace

import orjson
import pytest
from mlflow import MlflowClient

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.evaluation.config import ChangeThresholds, ForgettingConfig
from pulse_pipeline.core.evaluation.forgetting import earlier_snapshots, old_slices
from pulse_pipeline.core.evaluation.runner import evaluate_version
from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.families import ConfigError, SplitConfig, parse_config
from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.registry import files, pointer
from pulse_pipeline.core.snapshots import read_manifest, read_split, write_snapshot
from pulse_pipeline.core.store import Store
from pulse_pipeline_tests.conftest import CLINC150
from pulse_pipeline_tests.versions import publish_files

INTENTS = ("balance", "transfer", "freeze_account", "book_flight", "weather", "timer", "oos")
START = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)


def _family_config(**forgetting):
    return {
        "families": {
            "intents": {
                "task": "classification",
                "annotation_kinds": ["intent_label"],
                "base_model": "minilm-l6",
                "labels": list(INTENTS),
                "split": {"train": 0.6, "val": 0.2, "test": 0.2},
                "evaluation": {
                    "gate": {"evidence": {"min_examples": 10}},
                    "forgetting": {"snapshots": 3, **forgetting},
                },
            }
        }
    }


# --- config -------------------------------------------------------------------------------------------


def test_forgetting_defaults_and_errors_that_name_the_field():
    rule = ForgettingConfig()
    assert (rule.snapshots, rule.metric, rule.max_drop, rule.decision, rule.require_significant) == (
        2, None, None, "review", True,
    )  # fmt: skip
    # no max_drop: the family's change tolerance for the metric, the test set's own standard
    change = ChangeThresholds(tolerances={"mae": 0.05})
    assert rule.tolerance("accuracy", change) == 0.02 and rule.tolerance("mae", change) == 0.05
    assert ForgettingConfig(max_drop=0.01).tolerance("mae", change) == 0.01
    assert ForgettingConfig(decision="FAIL").decision == "fail"  # as gate.change.on_regression spells it
    family = parse_config(_family_config(snapshots=0, decision="fail")).family("intents")
    assert family.evaluation.forgetting.snapshots == 0 and family.evaluation.forgetting.decision == "fail"
    for bad, field in (
        ({"snapshots": -1}, "evaluation.forgetting.snapshots"),
        ({"max_drop": -0.01}, "evaluation.forgetting.max_drop"),
        ({"decision": "deploy"}, "evaluation.forgetting.decision"),
    ):
        with pytest.raises(ConfigError, match=f"family 'intents', field '{field}'"):
            parse_config(_family_config(**bad))
    with pytest.raises(ConfigError, match=r"field 'evaluation.forgetting.max_dorp': unknown key"):
        parse_config(_family_config(max_dorp=0.01))


# --- snapshots ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, model_cache):
    """Three snapshots of 10, 20 and 30 examples per intent, a day apart, and between the second
    and the third one built with no test split (its family's own test file held the test set)."""
    if not (CLINC150 / "data_full.json").is_file():
        pytest.skip(f"CLINC150 not found at {CLINC150}")
    tmp = tmp_path_factory.mktemp("forgetting")
    config = parse_config(_family_config())
    family = config.family("intents")
    data = json.loads((CLINC150 / "data_full.json").read_text())
    batches: list[list[dict]] = [[], [], []]
    per_label: dict[str, int] = {}
    for text, label in data["train"] + data["oos_train"]:
        if label in INTENTS and per_label.get(label, 0) < 30:
            batches[per_label.get(label, 0) // 10].append(
                {
                    "kind": "intent_label",
                    "family": "intents",
                    "text": text,
                    "label": label,
                    "annotator": "crowd",
                }
            )
            per_label[label] = per_label.get(label, 0) + 1
    artifacts = LocalArtifactStore(tmp / "artifacts")
    no_test = family.model_copy(update={"split": SplitConfig(train=0.8, val=0.2, test=0.0)})
    versions = []
    with Store(f"sqlite:///{tmp / 'pulse.db'}") as store:
        for i, batch in enumerate(batches):
            path = tmp / f"batch{i}.jsonl"
            path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in batch))
            ingest_file(store, path, config)
            table, stats = build_examples(store, family)
            if i == 2:
                empty = write_snapshot(
                    artifacts, no_test, table, stats, now=START + dt.timedelta(days=1, hours=12)
                )
            snapshot = write_snapshot(artifacts, family, table, stats, now=START + dt.timedelta(days=i))
            versions.append(snapshot.version)
    return SimpleNamespace(
        config=config, family=family, artifacts=artifacts, versions=versions, empty=empty.version,
        tmp=tmp, model_cache=model_cache, table=table, stats=stats,
    )  # fmt: skip


def _ids(artifacts, family, version, *splits):
    return {e["id"] for s in splits for e in read_split(artifacts, family, version, s)}


def test_old_slices_are_the_earlier_snapshots_test_splits_newest_first_without_trained_examples(world):
    family, artifacts, empty = world.family, world.artifacts, world.empty
    first, second, third = world.versions
    manifests, why = earlier_snapshots(artifacts, "intents", third, 5)
    assert [m["dataset_version"] for m in manifests] == [empty, second, first] and why is None
    assert earlier_snapshots(artifacts, "intents", first, 2) == (
        [], f"no snapshot of intents was created before {first}",
    )  # fmt: skip
    assert earlier_snapshots(artifacts, "intents", "no-such", 2)[1].startswith(
        "the candidate's snapshot no-such"
    )

    slices, notes = old_slices(family, artifacts, third, 3, taken=["test", "golden"])
    assert [s.eval_set.name for s in slices] == [f"old-{second[:12]}", f"old-{first[:12]}"]
    assert notes == [f"snapshot {empty}: its test split is empty, so it gives no old slice"]
    trained = _ids(artifacts, family, third, "train", "val")
    for old, version in zip(slices, (second, first), strict=True):
        whole = _ids(artifacts, family, version, "test")
        kept = {e.id for e in old.eval_set.examples}
        # the snapshot's own test examples, less those the candidate's snapshot trains or validates on
        assert kept == whole - trained and old.left_out == len(whole & trained) > 0
        assert old.dataset_version == version and old.eval_set.source.startswith(
            f"old slice: snapshot {version} test split"
        )
        assert old.created_at == read_manifest(artifacts, "intents", version)["created_at"]
    # `count` counts snapshots, not slices: the newest two give one slice and one note
    two, notes = old_slices(family, artifacts, third, 2)
    assert [s.dataset_version for s in two] == [second] and len(notes) == 1
    # the production version's snapshot is left out too; a name already taken is never reused
    both, _ = old_slices(family, artifacts, third, 3, trained_on=[first], taken=[f"old-{first[:12]}"])
    seen = trained | _ids(artifacts, family, first, "train", "val")
    assert all(e.id not in seen for s in both for e in s.eval_set.examples)
    assert [s.eval_set.name for s in both] == [f"old-{second[:12]}", f"old-{first[:12]}-2"]
    assert old_slices(family, artifacts, third, 0) == ([], [])


def test_an_old_slice_with_exactly_the_current_test_examples_is_still_a_slice(world, tmp_path):
    # The same examples under another split setting that moves none of them: a new dataset_version
    # with the very same test split. The old champion was judged on it, so it is still scored.
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    split = world.family.split.model_copy(update={"min_examples_per_label": 4})
    before = write_snapshot(
        artifacts, world.family.model_copy(update={"split": split}), world.table, world.stats, now=START
    )
    after = write_snapshot(
        artifacts, world.family, world.table, world.stats, now=START + dt.timedelta(days=1)
    )
    assert before.version != after.version
    (old,), notes = old_slices(world.family, artifacts, after.version, 2)
    assert notes == [] and old.same_as_test and old.left_out == 0
    assert {e.id for e in old.eval_set.examples} == _ids(artifacts, world.family, after.version, "test")


# --- through evaluate_version -------------------------------------------------------------------------


def _train(world, dataset, *, shuffled=False, epochs=1):
    from pulse_pipeline.core.training.base_models import resolve_base_model
    from pulse_pipeline.core.training.config import resolve_training_config
    from pulse_pipeline.core.training.recipe import TrainingJob, train
    from pulse_pipeline.core.training.tracking import MlflowRun

    family, artifacts, tmp = world.family, world.artifacts, world.tmp
    train_set = read_split(artifacts, family, dataset, "train")
    if shuffled:
        labels = [e["label"] for e in train_set]
        random.Random(0).shuffle(labels)
        train_set = [{**e, "label": label} for e, label in zip(train_set, labels, strict=True)]
    settings = resolve_training_config("classification", family.training, {"epochs": epochs})
    base = resolve_base_model(family.base_model, world.model_cache)
    val_set = read_split(artifacts, family, dataset, "val")
    job = TrainingJob(
        family, settings, dataset, train_set, val_set, base, tmp / "work" / f"{dataset}-{shuffled}"
    )
    run = MlflowRun(
        f"sqlite:///{tmp / 'mlflow.db'}", "intents", run_name="t", artifact_root=tmp / "ml", tags={}
    )
    result = train(job)
    run.finish(ok=True)
    return result, {**result.metadata, "mlflow": {"run_id": run.run_id}}


def _evaluate(world, version, family=None):
    return evaluate_version(
        family or world.family, world.config, world.artifacts, home=world.tmp / "home", version=version,
        tracking_uri=f"sqlite:///{world.tmp / 'mlflow.db'}",
    )  # fmt: skip


@pytest.fixture(scope="module")
def production(world):
    """An adapter trained on the first snapshot, published (not yet in production)."""
    result, meta = _train(world, world.versions[0])
    return publish_files(world.artifacts, "intents", result.folder, meta), result, meta


def test_the_candidate_is_judged_on_the_old_slices_against_production(world, production):
    family, artifacts, empty = world.family, world.artifacts, world.empty
    first, second, third = world.versions
    production, result, meta = production
    # the same weights, as if trained on the newest snapshot: every old slice's delta is exactly 0
    candidate = publish_files(artifacts, "intents", result.folder, {**meta, "dataset_version": third})

    alone = _evaluate(world, candidate)  # no production yet: nothing to have forgotten
    (check,) = [c for c in alone.results["gate"]["checks"] if c["kind"] == "forgetting"]
    assert check["outcome"] == "skipped" and "the baseline is the base model" in check["reason"]
    assert not any(s["name"].startswith("old-") for s in alone.results["sets"])  # listed, not scored
    assert [s["name"] for s in alone.results["forgetting"]["slices"]] == [
        f"old-{second[:12]}",
        f"old-{first[:12]}",
    ]

    artifacts.write_bytes(pointer.current_key("intents"), orjson.dumps({"version": production}))
    judged = _evaluate(world, candidate)
    r = judged.results
    names = [f"old-{second[:12]}", f"old-{first[:12]}"]
    assert [s["name"] for s in r["sets"]] == ["test", *names]
    assert set(r["metrics"]) == set(r["comparison"]) == {"test", *names}
    assert r["forgetting"]["metric"] == "accuracy" and r["forgetting"]["max_drop"] == 0.02
    assert r["forgetting"]["baseline"] == production
    assert r["forgetting"]["notes"] == [
        f"snapshot {empty}: its test split is empty, so it gives no old slice"
    ]
    # only examples neither system trained on: not in the train/val splits of the first or third snapshot
    seen = _ids(artifacts, family, third, "train", "val") | _ids(artifacts, family, first, "train", "val")
    sizes = {s["name"]: s["examples"] for s in r["sets"]}
    assert sizes[names[0]] == len(_ids(artifacts, family, second, "test") - seen)
    checks = [c for c in r["gate"]["checks"] if c["kind"] == "forgetting"]
    assert [(c["set"], c["outcome"]) for c in checks] == [(n, "pass") for n in names]
    assert all(c["value"] == 0 for c in checks)
    assert checks[0]["reason"].startswith(f"forgetting on {names[0]} (snapshot {second}): accuracy ")

    folder = artifacts.local_path(files.key("intents", candidate)) / "eval"
    saved = json.loads((folder / "results.json").read_text())
    assert saved["forgetting"]["slices"][0]["dataset_version"] == second
    markdown = (folder / "report.md").read_text()
    assert "## Forgetting (old slices)" in markdown
    assert f"| old-{second[:12]} | {second} | 2026-11-02 09:00 | {sizes[names[0]]} |" in markdown
    assert "its test split is empty, so it gives no old slice" in markdown
    html = (folder / "report.html").read_text()
    assert "<h2>Forgetting (old slices)</h2>" in html and f"<td>old-{first[:12]}</td>" in html
    metrics = (
        MlflowClient(f"sqlite:///{world.tmp / 'mlflow.db'}").get_run(meta["mlflow"]["run_id"]).data.metrics
    )
    assert {
        f"eval.{names[0]}.accuracy", f"eval.{names[0]}.baseline.accuracy", f"eval.{names[0]}.delta.accuracy",
        "eval.forgetting.worst_delta.accuracy",
    } <= set(metrics)  # fmt: skip
    assert metrics["eval.forgetting.worst_delta.accuracy"] == 0

    off = family.model_copy(
        update={
            "evaluation": family.evaluation.model_copy(update={"forgetting": ForgettingConfig(snapshots=0)})
        }
    )
    quiet = _evaluate(world, candidate, off).results
    assert "forgetting" not in quiet and [s["name"] for s in quiet["sets"]] == ["test"]
    assert not any(c["kind"] == "forgetting" for c in quiet["gate"]["checks"])


@pytest.mark.slow  # a second training; about 8 s on an idle machine, several times that under load
def test_a_candidate_that_forgot_is_sent_to_review_or_failed_as_configured(world, production):
    family, artifacts = world.family, world.artifacts
    first, second, third = world.versions
    artifacts.write_bytes(pointer.current_key("intents"), orjson.dumps({"version": production[0]}))
    result, meta = _train(world, third, shuffled=True)  # learned nothing: forgot all it knew
    candidate = publish_files(artifacts, "intents", result.folder, meta)
    names = [f"old-{second[:12]}", f"old-{first[:12]}"]

    judged = _evaluate(world, candidate).results
    checks = {c["set"]: c for c in judged["gate"]["checks"] if c["kind"] == "forgetting"}
    assert [checks[n]["outcome"] for n in names] == ["review", "review"], checks
    assert all(checks[n]["reason"] in judged["gate"]["reasons"] for n in names)
    assert checks[names[0]]["value"] < -0.3  # accuracy, candidate - production

    rule = family.evaluation.forgetting.model_copy(update={"decision": "fail"})
    strict = family.model_copy(
        update={"evaluation": family.evaluation.model_copy(update={"forgetting": rule})}
    )
    failed = _evaluate(world, candidate, strict).results
    assert failed["gate"]["decision"] == "FAIL"
    assert [c["outcome"] for c in failed["gate"]["checks"] if c["kind"] == "forgetting"] == ["fail", "fail"]
