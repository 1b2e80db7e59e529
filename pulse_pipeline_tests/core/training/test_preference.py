"""The preference stage: DPO and KTO with TRL's trainers on the tiny chat model. The loss falls and
the adapter moves; the adapter it starts from (the champion, the SFT stage's result) is the frozen
reference, which shows in the first step's loss (policy = reference: DPO's log 2, KTO's 0.5); only
the trained adapter is saved and it loads in peft; a killed run resumes from TRL's checkpoint;
what cannot train is refused with one line."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from pulse_pipeline.core.preferences import kto_weights
from pulse_pipeline.core.training.config import TrainingConfigError, resolve_training_config
from pulse_pipeline.core.training.continual import InitAdapter
from pulse_pipeline.core.training.models import load_adapter
from pulse_pipeline.core.training.preference import PreferenceData, preference_problem
from pulse_pipeline.core.training.recipe import TrainingError, TrainingJob, train
from pulse_pipeline_tests.core.training.examples import preference_rows
from pulse_pipeline_tests.core.training.test_recipe import _chat_job

SFT = {"epochs": 1, "learning_rate": 3e-3, "micro_batch_size": 4, "effective_batch_size": 8}
PREFERENCE = {"beta": 0.1, "epochs": 2, "learning_rate": 2e-3}


def _preferences(n: int = 24, undesirable: int | None = None) -> PreferenceData:
    dpo, kto = preference_rows(n)
    good = [r for r in kto if r["label"]]
    bad = [r for r in kto if not r["label"]][: undesirable if undesirable is not None else n]
    d_w, u_w = kto_weights(len(good), len(bad))
    val_dpo, val_kto = preference_rows(8, seed=1)
    return PreferenceData({"train": dpo, "val": val_dpo}, {"train": good + bad, "val": val_kto}, d_w, u_w)


def _preference_job(
    job: TrainingJob, objective: str, data: PreferenceData, init=None, **overrides
) -> TrainingJob:
    config = job.config.model_copy(
        update={
            "objective": objective,
            "preference": job.config.preference.model_copy(update=PREFERENCE),
            **({"init": init.mode} if init else {}),
            **overrides,
        }
    )
    return TrainingJob(
        job.family, config, job.dataset_version, job.train, job.val, job.base_model, job.work_root, init, data
    )


def _moved(a: dict, b: dict) -> bool:
    return set(a) == set(b) and any(not torch.equal(a[k], b[k]) for k in a)


def test_dpo_from_the_champion_trains_with_the_champion_as_reference(config, model_cache, tmp_path):
    champion = train(_chat_job(config, model_cache, tmp_path / "w1", n=24, **SFT))
    before = load_file(champion.folder / "adapter_model.safetensors")
    init = InitAdapter("champion", "access-qa", "access-qa-20261201-0900", champion.folder)
    job = _preference_job(
        _chat_job(config, model_cache, tmp_path / "w2", n=24, **SFT), "dpo", _preferences(), init
    )

    result = train(job)
    record = result.metadata["preference"]
    assert record["trainer"] == "trl.DPOTrainer" and result.metadata["objective"] == "dpo"
    assert record["reference"] == record["started_from"] == "access-qa@access-qa-20261201-0900"
    # Policy = reference at the first step: DPO's loss is -log sigmoid(0) = log 2 exactly. A
    # reference other than the start (the bare base) would make it something else.
    assert record["loss_history"][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert record["final_loss"] < 0.5 * record["first_loss"]
    assert record["validation"]["rewards/accuracies"] > 0.5  # it prefers the held-out chosen answers
    after = load_file(result.folder / "adapter_model.safetensors")
    assert _moved(after, before)  # the champion's tensors, trained on
    assert not any(".ref." in k for k in after)  # TRL's frozen copy is not published
    assert result.metadata["init"]["mode"] == "champion" and result.metadata["samples_used"] == 24
    loaded = load_adapter(result.folder)  # a plain peft adapter
    assert list(loaded.model.peft_config) == ["default"]


def test_kto_from_ratings_trains_with_the_computed_weights_and_the_champion_as_reference(
    config, model_cache, tmp_path
):
    champion = train(_chat_job(config, model_cache, tmp_path / "w1", n=24, **SFT))
    before = load_file(champion.folder / "adapter_model.safetensors")
    init = InitAdapter("champion", "access-qa", "access-qa-20261201-0900", champion.folder)
    data = _preferences(24, undesirable=8)  # 24 desirable, 8 undesirable: weighted to TRL's range
    assert (data.desirable_weight, data.undesirable_weight) == (1.0, 2.25)
    job = _preference_job(_chat_job(config, model_cache, tmp_path / "w2", n=24, **SFT), "kto", data, init)

    result = train(job)
    record = result.metadata["preference"]
    assert (
        record["trainer"] == "trl.KTOTrainer" and record["reference"] == "access-qa@access-qa-20261201-0900"
    )
    assert (record["desirable_weight"], record["undesirable_weight"]) == (1.0, 2.25)
    assert record["train_examples"] == 32
    # At the start policy = reference: rewards and KL are 0, so each example's loss is its weight
    # times 1 - sigmoid(0) = 0.5; the mean over a batch lies between 0.5 and 0.5 * 2.25.
    assert 0.5 - 1e-4 <= record["loss_history"][0]["loss"] <= 1.125 + 1e-4
    # Each step's batch mixes the kinds by chance, so its loss is noisy; on the held-out examples
    # the desirable answers' rewards are now above the undesirable ones' and the loss is down.
    assert record["validation"]["rewards/margins"] > 1 and record["validation"]["loss"] < 0.4
    assert _moved(load_file(result.folder / "adapter_model.safetensors"), before)
    assert (result.folder / "tokenizer_config.json").is_file() and (
        result.folder / "loss_curve.png"
    ).is_file()


def test_sft_then_dpo_runs_the_preference_stage_on_the_sft_result(config, model_cache, tmp_path):
    job = _preference_job(
        _chat_job(config, model_cache, tmp_path / "w", n=24, **SFT), "sft_then_dpo", _preferences()
    )
    result = train(job)
    meta = result.metadata
    assert meta["epoch_history"] and meta["epoch_history"][0]["train_loss"] > 0  # the SFT stage ran
    assert meta["preference"]["reference"] == "the sft stage's adapter"
    assert meta["preference"]["loss_history"][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert meta["objective"] == "sft_then_dpo" and meta["preference"]["final_loss"] < math.log(2)


def test_a_killed_preference_run_resumes_from_its_checkpoint(config, model_cache, tmp_path):
    class Killed(Exception):
        pass

    def die_at_step_5(progress):
        if progress.step == 5:
            raise Killed

    job = _preference_job(
        _chat_job(config, model_cache, tmp_path / "w", n=24, **SFT), "dpo", _preferences(), checkpoint_every=2
    )
    with pytest.raises(Killed):
        train(job, on_progress=die_at_step_5)
    assert (job.work / "preference" / "checkpoint-4").is_dir()

    result = train(job)
    record = result.metadata["preference"]
    assert record["resumed_from_step"] == 4 and record["steps"] == 6  # 24 pairs / 8 a step, 2 epochs
    assert [p["step"] for p in record["loss_history"]] == [5, 6]


def test_what_cannot_train_on_preferences_is_refused_with_one_line():
    with pytest.raises(TrainingConfigError, match="^training.objective: dpo trains chat families"):
        resolve_training_config("classification", {"objective": "dpo"})
    config = resolve_training_config("chat_sft", {"objective": "dpo"})
    assert preference_problem(config, PreferenceData(), "faq", "v1") == (
        "faq: training.objective dpo needs DPO pairs, and snapshot v1 has none in train (corrected answers "
        "and several rated answers to one prompt make them)"
    )
    kto = resolve_training_config("chat_sft", {"objective": "sft_then_kto"})
    only_good = PreferenceData(kto={"train": [{"prompt": [], "completion": [], "label": True}]})
    assert "all of one kind" in preference_problem(kto, only_good, "faq", "v1")
    assert preference_problem(resolve_training_config("chat_sft", {}), None, "faq", "v1") is None


def test_a_preference_run_without_data_stops_before_loading_anything(config, model_cache, tmp_path):
    job = _preference_job(
        _chat_job(config, model_cache, tmp_path / "w", n=24, **SFT), "dpo", PreferenceData()
    )
    with pytest.raises(TrainingError, match="^access-qa: training.objective dpo needs DPO pairs"):
        train(job)


def test_pairs_longer_than_max_length_are_left_out_and_none_left_is_one_line(config, model_cache, tmp_path):
    job = _preference_job(
        _chat_job(config, model_cache, tmp_path / "w", n=24, **SFT), "dpo", _preferences(), max_length=16
    )
    with pytest.raises(TrainingError, match="24 DPO train rows are longer than training.max_length 16"):
        train(job)
