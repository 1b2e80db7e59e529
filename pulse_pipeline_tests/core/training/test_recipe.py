"""The recipe end to end on CPU: each task kind trains, the loss falls, the adapter reloads in
peft and reproduces the validation loss recorded at training, and a crashed run resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pulse_pipeline.core.families import parse_config
from pulse_pipeline.core.training.base_models import resolve_base_model
from pulse_pipeline.core.training.batching import chat_features, collate, collate_text, text_features
from pulse_pipeline.core.training.config import CHAT_TARGETS, resolve_training_config
from pulse_pipeline.core.training.losses import (
    weighted_causal_lm_loss,
    weighted_classification_loss,
    weighted_regression_loss,
)
from pulse_pipeline.core.training.models import load_adapter
from pulse_pipeline.core.training.recipe import TrainingError, TrainingJob, train
from pulse_pipeline_tests.core.training.examples import chat_examples, intent_examples, score_examples

FAMILIES = parse_config(
    {
        "families": {
            "router": {
                "task": "classification",
                "annotation_kinds": ["intent_label"],
                "base_model": "minilm-l6",
                "labels": ["transfer", "balance", "book_flight"],
            },
            "scorer": {
                "task": "regression",
                "annotation_kinds": ["score_label"],
                "base_model": "minilm-l6",
                "dimensions": ["clarity", "depth"],
                "score_range": [0, 10],
            },
        }
    }
)


def _job(family, model_cache, work, data, **overrides):
    config = resolve_training_config(family.task.value, family.training, overrides)
    base = resolve_base_model(family.base_model, model_cache)
    return TrainingJob(family, config, "v-test", data[0], data[1], base, work)


def _chat_job(config, model_cache, work, n=48, **overrides):
    data = chat_examples(n)
    settings = {
        "epochs": 3,
        "learning_rate": 3e-3,
        "micro_batch_size": 4,
        "effective_batch_size": 8,
        "checkpoint_every": 4,
        **overrides,
    }
    return _job(config.family("access-qa"), model_cache, work, (data[: n - 8], data[n - 8 :]), **settings)


def test_chat_loss_falls_and_the_reloaded_adapter_reproduces_the_recorded_val_loss(
    config, model_cache, tmp_path
):
    job = _chat_job(config, model_cache, tmp_path / "work", micro_batch_size=8)  # val fits one batch
    result = train(job)
    epochs = result.metadata["epoch_history"]
    assert epochs[-1]["train_loss"] < 0.6 * epochs[0]["train_loss"]
    assert epochs[-1]["val_loss"] < 0.6 * epochs[0]["val_loss"]
    weights = load_file(result.folder / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it moved
    assert {n.split(".")[-3] for n in weights if "lora_A" in n} == set(CHAT_TARGETS)
    adapter_config = json.loads((result.folder / "adapter_config.json").read_text())
    # What vLLM's --lora-modules needs: a plain LoRA on linear layers, no extra trained modules.
    assert adapter_config["peft_type"] == "LORA" and adapter_config["task_type"] == "CAUSAL_LM"
    assert not adapter_config["modules_to_save"] and adapter_config["r"] == 16
    assert adapter_config["base_model_name_or_path"] == str(job.base_model.path)

    loaded = load_adapter(result.folder)
    features = [chat_features(loaded.tokenizer, e["messages"], e["weight"], 1024) for e in job.val]
    batch = collate(features, loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        val_loss = float(weighted_causal_lm_loss(logits, batch["labels"], batch["weights"]))
        with loaded.model.disable_adapter():
            base_logits = loaded.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
    assert val_loss == pytest.approx(result.metadata["best_validation_loss"], rel=1e-4)
    assert not torch.allclose(logits, base_logits)  # the adapter changes the model's answers
    assert (result.folder / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (result.folder / "tokenizer_config.json").read_text()
    )


def test_metadata_has_the_pulse_fields_history_and_a_loss_curve(config, model_cache, tmp_path):
    result = train(_chat_job(config, model_cache, tmp_path / "work", n=24, epochs=2))
    m = json.loads((result.folder / "training_metadata.json").read_text())
    for field in (
        "adapter_name",
        "version",
        "trained_at",
        "base_model",
        "samples_used",
        "epochs",
        "training_loss",
        "training_time_seconds",
        "lora_config",
        "dataset_version",
        "loss_history",
        "tokens_per_second",
        "hardware",
        "library_versions",
        "resolved_config",
    ):
        assert field in m, field
    assert (m["adapter_name"], m["base_model"], m["samples_used"], m["dataset_version"]) == (
        "access-qa",
        "tiny",
        16,
        "v-test",
    )
    assert m["lora_config"]["r"] == 16 and m["resolved_config"]["epochs"] == 2
    assert [p["step"] for p in m["loss_history"]] == list(range(1, m["steps"] + 1))
    assert m["tokens_per_second"] > 0 and m["hardware"]["device"] == "cpu"
    assert m["library_versions"]["torch"].startswith("2.")
    assert m["best_epoch"] == min(m["epoch_history"], key=lambda e: e["val_loss"])["epoch"]
    assert (result.folder / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_packed_training_learns_like_padded_training(config, model_cache, tmp_path):
    padded = train(_chat_job(config, model_cache, tmp_path / "a", n=24, epochs=1, lora={"dropout": 0.0}))
    packed = train(
        _chat_job(config, model_cache, tmp_path / "b", n=24, epochs=1, lora={"dropout": 0.0}, packing=True)
    )
    a = [p["loss"] for p in padded.metadata["loss_history"]]
    b = [p["loss"] for p in packed.metadata["loss_history"]]
    # Same examples, same batches: per-example boundaries make packing compute the same losses.
    assert b == pytest.approx(a, rel=2e-3)


def test_resume_after_a_crash_continues_from_the_checkpoint(config, model_cache, tmp_path):
    reference = train(_chat_job(config, model_cache, tmp_path / "reference", log_every=1))

    class Crash(Exception):
        pass

    def crash_at_step_9(p):  # 5 steps an epoch; checkpoints at 4, 5 (epoch end) and 8
        if p.step == 9:
            raise Crash

    job = _chat_job(config, model_cache, tmp_path / "work", log_every=1)
    with pytest.raises(Crash):
        train(job, on_progress=crash_at_step_9)
    assert sorted(p.name for p in job.work.glob("step-*")) == ["step-0000005", "step-0000008"]
    seen = []
    resumed = train(job, on_progress=lambda p: seen.append(p.step))
    assert resumed.resumed_from_step == 8 and seen[0] == 9  # continued, did not start over
    assert [p["step"] for p in resumed.metadata["loss_history"]] == list(range(1, 16))
    want = load_file(reference.folder / "adapter_model.safetensors")
    got = load_file(resumed.folder / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    for name in want:  # RNG, optimizer and scheduler restored: the same adapter as without a crash
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_classification_fits_the_head_first_then_tunes_and_reloads(model_cache, tmp_path):
    family = FAMILIES.family("router")
    data = intent_examples(60)
    job = _job(
        family,
        model_cache,
        tmp_path / "work",
        (data[:45], data[45:]),
        epochs=2,
        micro_batch_size=8,
        effective_batch_size=8,
    )
    result = train(job)
    assert result.metadata["epoch_history"][-1]["val_accuracy"] == 1.0
    head = json.loads((result.folder / "head_config.json").read_text())
    assert head["labels"] == ["transfer", "balance", "book_flight"] and head["task"] == "classification"
    weights = load_file(result.folder / "adapter_model.safetensors")
    assert any("head" in k for k in weights) and any("lora_A" in k and "query" in k for k in weights)

    loaded = load_adapter(result.folder)
    index = {label: i for i, label in enumerate(head["labels"])}
    features = text_features(
        loaded.tokenizer,
        [e["text"] for e in job.val],
        [index[e["label"]] for e in job.val],
        [1.0] * len(job.val),
        48,
    )
    batch = collate_text(features, loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert logits.argmax(-1).tolist() == batch["targets"].tolist()
    probabilities = loaded.predict([e["text"] for e in job.val], max_length=48)
    assert probabilities.argmax(1).tolist() == batch["targets"].tolist()
    assert probabilities.sum(1) == pytest.approx([1.0] * len(job.val), rel=1e-5)
    raw = loaded.predict([e["text"] for e in job.val], max_length=48, raw=True)  # scale x cosine
    assert torch.from_numpy(raw).softmax(-1).numpy() == pytest.approx(probabilities, abs=1e-6)
    loss = float(weighted_classification_loss(logits, batch["targets"], batch["weights"]))
    assert loss == pytest.approx(result.metadata["best_validation_loss"], rel=1e-3, abs=1e-6)


def test_regression_learns_every_dimension_and_saves_their_names(model_cache, tmp_path):
    family = FAMILIES.family("scorer")
    data = score_examples(50, dimensions=2)
    job = _job(
        family,
        model_cache,
        tmp_path / "work",
        (data[:40], data[40:]),
        epochs=3,
        micro_batch_size=8,
        effective_batch_size=8,
        max_length=96,
    )
    result = train(job)
    history = result.metadata["epoch_history"]
    assert history[-1]["val_mae"] < 2.0  # scores span 0-8: guessing the mean is off by 2.4 on average
    head = json.loads((result.folder / "head_config.json").read_text())
    assert head["dimensions"] == ["clarity", "depth"] and head["score_range"] == [0, 10]

    loaded = load_adapter(result.folder)
    targets = [[v / 10 for v in e["labels"]] for e in job.val]
    features = text_features(
        loaded.tokenizer, [e["text"] for e in job.val], targets, [1.0] * len(job.val), 96
    )
    batch = collate_text(features, loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        out = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.shape == (len(job.val), 2)
    scores = loaded.predict([e["text"] for e in job.val], max_length=96)  # in the family's 0-10 range
    assert scores == pytest.approx(10 * out.numpy(), rel=1e-4, abs=1e-4)
    loss = float(weighted_regression_loss(out, batch["targets"], batch["weights"]))
    assert loss == pytest.approx(result.metadata["best_validation_loss"], rel=1e-3)


def test_unusable_examples_are_named(config, model_cache, tmp_path):
    family = FAMILIES.family("router")
    data = intent_examples(9)
    data[4]["label"] = "weather"
    with pytest.raises(
        TrainingError, match="example intent-4: label 'weather' is not in the family's labels"
    ):
        train(_job(family, model_cache, tmp_path, (data, data[:3])))
    long = chat_examples(4)
    long[2]["messages"][-1]["content"] = "word " * 400
    with pytest.raises(TrainingError, match="example chat-2: the answer alone is longer than max_length 64"):
        train(_job(config.family("access-qa"), model_cache, tmp_path, (long, long[:1]), max_length=64))


def test_a_fine_tune_worse_than_its_floor_on_validation_is_not_what_gets_published(model_cache, tmp_path):
    family = FAMILIES.family("router")
    data = intent_examples(60)
    # A learning rate this high wrecks the encoder in one step: every fine-tuned epoch is worse on
    # validation than the logistic regression on the frozen embeddings, so the floor is published.
    job = _job(
        family, model_cache, tmp_path / "work", (data[:45], data[45:]), epochs=1, micro_batch_size=8,
        effective_batch_size=8, learning_rate=0.9, head_learning_rate=0.9, probe_epochs=0,
    )  # fmt: skip
    result = train(job)
    meta = result.metadata
    assert meta["selected"] == "floor", meta["epoch_history"]
    assert meta["floor"]["kind"] == "logistic_regression" and meta["floor"]["val_accuracy"] == 1.0
    assert meta["epoch_history"][-1]["val_accuracy"] < meta["floor"]["val_accuracy"]
    head = json.loads((result.folder / "head_config.json").read_text())
    assert head["kind"] == "linear"
    loaded = load_adapter(result.folder)
    predicted = loaded.predict([e["text"] for e in job.val], max_length=48).argmax(1).tolist()
    assert [head["labels"][i] for i in predicted] == [e["label"] for e in job.val]


def test_a_linear_head_starts_from_the_floor_and_fine_tunes_from_there(model_cache, tmp_path):
    family = FAMILIES.family("router")
    data = intent_examples(60)
    job = _job(
        family, model_cache, tmp_path / "work", (data[:45], data[45:]), epochs=1, micro_batch_size=8,
        effective_batch_size=8, head="linear", learning_rate=1e-4,
    )  # fmt: skip
    floor_only = _job(
        family, model_cache, tmp_path / "floor", (data[:45], data[45:]), epochs=1, micro_batch_size=8,
        effective_batch_size=8, head="linear", learning_rate=1e-12, head_learning_rate=1e-12,
    )  # fmt: skip
    result, untouched = train(job), train(floor_only)
    assert result.metadata["selected"] == "fine_tune" and result.metadata["floor"]["val_accuracy"] == 1.0
    assert json.loads((result.folder / "head_config.json").read_text())["kind"] == "linear"
    # with no step size the published head is the floor's weights, so the head began there
    assert untouched.metadata["selected"] == "fine_tune"
    floor_weight = torch.from_numpy(np.load(untouched.folder.parent / "floor.npz")["weight"])
    published = {k: v for k, v in load_file(untouched.folder / "adapter_model.safetensors").items() if "head" in k}
    (weight,) = [v for k, v in published.items() if k.endswith("head.weight")]
    assert torch.allclose(weight, floor_weight, atol=1e-6)
    tuned = [v for k, v in load_file(result.folder / "adapter_model.safetensors").items() if k.endswith("head.weight")]
    assert not torch.allclose(tuned[0], floor_weight, atol=1e-6)  # and fine-tuning moved it


def test_a_token_budget_cuts_each_step_into_micro_batches_and_learns(config, model_cache, tmp_path):
    """What CUDA does by default (batch_tokens 16,384, widths of 64), asked for on CPU: each step
    still takes effective_batch_size examples, in as many micro-batches as the budget allows."""
    job = _chat_job(config, model_cache, tmp_path / "work", batch_tokens=256, pad_to_multiple_of=64)
    result = train(job)
    m = result.metadata
    assert m["hardware"]["batch_tokens"] == 256 and m["hardware"]["pad_multiple"] == 64
    assert m["steps"] == 3 * 5  # 40 examples, 8 a step, 3 epochs: as with micro-batches of 4
    assert m["train_tokens"] == 3 * sum(len(f) for f in _features(job))  # every example, every epoch
    assert m["loss_history"][-1]["loss"] < m["loss_history"][0]["loss"]


def _features(job):
    from pulse_pipeline.core.training.models import load_tokenizer
    from pulse_pipeline.core.training.recipe import encode_examples

    return encode_examples(job, load_tokenizer(job.base_model.path), job.train)
