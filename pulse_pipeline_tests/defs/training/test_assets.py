"""`<family>/adapter` in a real Dagster run: trained on the snapshot, published, tracked in MLflow,
reused when nothing changed, and run in the one-at-a-time `training` pool."""

import dagster as dg
import pytest
import yaml

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.registry.files import complete_folders, read_metadata
from pulse_pipeline.defs.datasets.assets import dataset_snapshot_asset, examples_asset
from pulse_pipeline.defs.training.assets import TRAINING_POOL, adapter_asset
from pulse_pipeline_tests.conftest import PROJECT


def _train(config, resources, instance, **run_config):
    fam = config.family("access-qa")
    op = dg.AssetKey(["access-qa", "adapter"]).to_python_identifier()
    return dg.materialize(
        [examples_asset(fam), dataset_snapshot_asset(fam), adapter_asset(fam)],
        resources=resources,
        instance=instance,
        run_config={"ops": {op: {"config": {"epochs": 1, "max_samples": 24, **run_config}}}},
    )


def test_adapter_trains_publishes_tracks_and_is_reused(config, resources, tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        first = _train(config, resources, instance)
        meta = first.asset_materializations_for_node("access_qa__adapter")[0].metadata
        again = _train(config, resources, instance)
        reused = again.asset_materializations_for_node("access_qa__adapter")[0].metadata
        forced = _train(config, resources, instance, force=True)
        forced_meta = forced.asset_materializations_for_node("access_qa__adapter")[0].metadata
    version = meta["version"].value
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    assert complete_folders(artifacts, "access-qa") == [version, forced_meta["version"].value]
    stored = read_metadata(artifacts, "access-qa", version)
    assert stored["samples_used"] == 24 and stored["epochs"] == 1 and stored["created_by"].startswith("run:")
    assert meta["dataset_version"].value == stored["dataset_version"] and meta["reused"].value is False
    assert meta["training_loss"].value > 0 and meta["tokens_per_second"].value > 0
    assert "| 1 |" in meta["epochs"].value
    assert reused["reused"].value is True and reused["version"].value == version  # same data, same settings
    assert not (tmp_path / "home" / "work" / "access-qa").exists() or not any(
        (tmp_path / "home" / "work" / "access-qa").iterdir()
    )  # checkpoints removed once the version is published

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(stored["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and client.get_experiment(run.info.experiment_id).name == "access-qa"
    assert run.data.params["dataset_version"] == stored["dataset_version"]
    assert run.data.params["lora.r"] == "16" and run.data.params["base_model"] == "tiny"
    assert run.data.tags["pulse.version"] == version
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, stored["steps"] + 1))
    assert "val_loss" in run.data.metrics and "tokens_per_second" in run.data.metrics
    artifacts_logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_metadata.json", "loss_curve.png"} <= artifacts_logged
    assert str(tmp_path / "home" / "mlartifacts") in run.info.artifact_uri  # not ./mlruns in the cwd


def test_training_runs_in_a_pool_of_one():
    from pulse_pipeline.definitions import defs

    for name in ("call-analysis", "intent-router", "article-scorer", "access-qa"):
        asset = defs.resolve_assets_def(dg.AssetKey([name, "adapter"]))
        assert asset.get_op_def_for_asset_key(dg.AssetKey([name, "adapter"])).pool == TRAINING_POOL
        job = defs.resolve_job_def(f"retrain_{name.replace('-', '_')}")
        assert dg.AssetKey([name, "adapter"]) in job.asset_layer.executable_asset_keys
    instance_config = yaml.safe_load((PROJECT / "pulse_pipeline" / "dagster.yaml").read_text())
    assert instance_config["concurrency"]["pools"]["default_limit"] == 1


def _family_training_elsewhere(tmp_path, monkeypatch, **resources_block):
    """access-qa with `resources:` set, in a pulse.yaml that the training process reads too."""
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.settings import get_settings

    raw = yaml.safe_load((PROJECT / "pulse.yaml").read_text())
    raw["families"]["access-qa"]["resources"] = resources_block
    beside = tmp_path / "config"  # beside the files pulse.yaml names (labels, sources, golden sets)
    beside.mkdir()
    for item in PROJECT.iterdir():
        if item.is_dir() and item.name in {"labels", "sources", "golden", "eval"}:
            (beside / item.name).symlink_to(item)
    path = beside / "pulse.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PULSE_CONFIG", str(path))
    get_settings.cache_clear()
    return load_config(path)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_adapter_trains_in_two_processes_through_dagster_pipes(resources, tmp_path, monkeypatch):
    config = _family_training_elsewhere(tmp_path, monkeypatch, launcher="subprocess", processes_per_node=2)
    with dg.DagsterInstance.ephemeral() as instance:
        result = _train(config, resources, instance, epochs=2)
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    meta = result.asset_materializations_for_node("access_qa__adapter")[0].metadata
    version = meta["version"].value
    stored = read_metadata(LocalArtifactStore(tmp_path / "artifacts"), "access-qa", version)
    assert stored["hardware"]["processes"] == 2 and stored["dagster"]["run_id"] == result.run_id
    assert stored["created_by"] == f"run:{result.run_id[:8]}"
    steps = stored["steps"]
    streamed = [m for m in logs if m.startswith(f"step {steps}/{steps} epoch 2/2 loss ")]
    assert streamed, logs  # the training process's progress, streamed into the run's log by Pipes
    assert meta["training_loss"].value == pytest.approx(stored["training_loss"], rel=1e-4)
    assert meta["tokens_per_second"].value > 0 and "| 2 |" in meta["epochs"].value
    assert meta["reused"].value is False and meta["dataset_version"].value == stored["dataset_version"]

    from mlflow import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(stored["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["pulse.version"] == version


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_training_process_that_fails_fails_the_step_with_its_reason(resources, tmp_path, monkeypatch):
    config = _family_training_elsewhere(tmp_path, monkeypatch, launcher="subprocess")
    fam = config.family("access-qa")
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [adapter_asset(fam)], resources=resources, instance=instance, raise_on_error=False
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.step_failure_data.error
    assert error.cause.cls_name == "StepError"  # one masked line (defs/retries.py)
    assert error.cause.message.strip() == (
        "pulse_pipeline.defs.retries.StepError: access-qa has no dataset snapshot yet: "
        "run `pulse snapshot --family access-qa` first"
    )


def test_a_chat_family_with_a_preference_objective_trains_on_its_feedback(config, resources, tmp_path):
    """objective sft_then_dpo: the SFT stage, then DPO (TRL) on the snapshot's pairs from the
    demo's corrections and ratings, the SFT result as the reference; shown on the asset."""
    fam = config.family("access-qa")
    fam = fam.model_copy(
        update={"training": {**fam.training, "objective": "sft_then_dpo", "preference": {"epochs": 1}}}
    )
    op = dg.AssetKey(["access-qa", "adapter"]).to_python_identifier()
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [examples_asset(fam), dataset_snapshot_asset(fam), adapter_asset(fam)],
            resources=resources,
            instance=instance,
            run_config={"ops": {op: {"config": {"epochs": 1, "max_samples": 16}}}},
        )
    meta = result.asset_materializations_for_node("access_qa__adapter")[0].metadata
    assert meta["objective"].value == "sft_then_dpo" and meta["started_from"].value == "base"
    summary = meta["preference"].value
    assert summary["trainer"] == "trl.DPOTrainer" and summary["reference"] == "the sft stage's adapter"
    stored = read_metadata(LocalArtifactStore(tmp_path / "artifacts"), "access-qa", meta["version"].value)
    assert (
        stored["preference"]["train_examples"] == summary["train_examples"] > 0
        and stored["preference"]["steps"] > 0
    )
    assert stored["epoch_history"] and stored["resolved_config"]["objective"] == "sft_then_dpo"
