"""Continual training: `init: champion` starts from the champion adapter's weights (checked on the
tensors) and trains on; `merge_champion` merges it into the base and puts a fresh LoRA on top;
the start is resolved through the registry (production, previous, a version, another family) and
recorded in the adapter's metadata; what does not fit is refused with one line."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.registry import Registry
from pulse_pipeline.core.store import Store
from pulse_pipeline.core.training.config import TrainingConfigError, resolve_training_config
from pulse_pipeline.core.training.continual import InitAdapter, resolve_init
from pulse_pipeline.core.training.recipe import TrainingError, TrainingJob, setup, train
from pulse_pipeline_tests.core.training.examples import intent_examples
from pulse_pipeline_tests.core.training.test_recipe import FAMILIES, _chat_job, _job
from pulse_pipeline_tests.versions import trained_version

SETTINGS = {"epochs": 1, "learning_rate": 3e-3, "micro_batch_size": 4, "effective_batch_size": 8}


def _with_init(job: TrainingJob, init: InitAdapter, work, **overrides) -> TrainingJob:
    config = job.config.model_copy(update={"init": init.mode, **overrides})
    return TrainingJob(
        job.family, config, job.dataset_version, job.train, job.val, job.base_model, work, init
    )


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_a_chat_adapter_starts_from_the_champions_weights_and_trains_on(config, model_cache, tmp_path):
    champion = train(_chat_job(config, model_cache, tmp_path / "w1", n=24, **SETTINGS))
    saved = load_file(champion.folder / "adapter_model.safetensors")
    init = InitAdapter("champion", "access-qa", "access-qa-20261201-0900", champion.folder)
    job = _with_init(_chat_job(config, model_cache, tmp_path / "w2", n=24, **SETTINGS), init, tmp_path / "w2")

    session = setup(job)  # before any step: the champion's tensors, not a fresh LoRA (B = 0)
    started = {k: v for k, v in get_peft_model_state_dict(session.model).items()}
    assert _same(started, saved) and any("lora_B" in k and v.abs().sum() > 0 for k, v in started.items())

    result = train(job)
    assert result.metadata["init"] == {"mode": "champion", "from": "access-qa@access-qa-20261201-0900"}
    after = load_file(result.folder / "adapter_model.safetensors")
    assert set(after) == set(saved) and not _same(after, saved)  # it trained on from there


def test_a_classifier_keeps_its_floor_from_the_frozen_base_and_starts_from_the_champions_head(
    model_cache, tmp_path
):
    family = FAMILIES.family("router")
    data = intent_examples(36)
    settings = {"epochs": 1, "micro_batch_size": 8, "effective_batch_size": 8}
    champion = train(_job(family, model_cache, tmp_path / "w1", (data[:27], data[27:]), **settings))
    saved = load_file(champion.folder / "adapter_model.safetensors")
    init = InitAdapter("champion", "router", "router-20261201-0900", champion.folder)
    job = _with_init(
        _job(family, model_cache, tmp_path / "w2", (data[:27], data[27:]), **settings), init, tmp_path / "w2"
    )
    session = setup(job)
    assert _same(dict(get_peft_model_state_dict(session.model)), saved)  # LoRA and head
    assert session.floor is not None  # fitted on the frozen base before the champion's weights came in


def test_merge_champion_merges_into_the_base_and_starts_a_fresh_lora(config, model_cache, tmp_path):
    champion = train(_chat_job(config, model_cache, tmp_path / "w1", n=24, **SETTINGS))
    init = InitAdapter("merge_champion", "access-qa", "access-qa-20261201-0900", champion.folder)
    plain = setup(_chat_job(config, model_cache, tmp_path / "w0", n=24, **SETTINGS))
    merged = setup(
        _with_init(_chat_job(config, model_cache, tmp_path / "w2", n=24, **SETTINGS), init, tmp_path / "w2")
    )

    def base_weight(session):
        return next(p for n, p in session.model.named_parameters() if n.endswith("q_proj.base_layer.weight"))

    assert not torch.equal(base_weight(plain), base_weight(merged))  # the champion is in the base now
    fresh = {k: v for k, v in get_peft_model_state_dict(merged.model).items() if "lora_B" in k}
    assert fresh and all(v.abs().sum() == 0 for v in fresh.values())  # and the new LoRA starts at zero


def test_a_champion_of_another_shape_is_refused_with_the_field(config, model_cache, tmp_path):
    champion = train(_chat_job(config, model_cache, tmp_path / "w1", n=24, **SETTINGS))
    init = InitAdapter("champion", "access-qa", "v1", champion.folder)
    job = _chat_job(config, model_cache, tmp_path / "w2", n=24, **SETTINGS)
    wider = job.config.lora.model_copy(update={"r": job.config.lora.r * 2})
    job = _with_init(job, init, tmp_path / "w2", lora=wider)
    with pytest.raises(
        TrainingError, match=rf"^access-qa: training.lora.r is {wider.r}, but the adapter it starts"
    ):
        setup(job)


def test_the_start_is_resolved_through_the_registry(config, tmp_path):
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    family = config.family("access-qa")
    champion = resolve_training_config("chat_sft", {}, {"init": "champion"})
    with Store(f"sqlite:///{tmp_path / 'pulse.db'}") as store:
        with pytest.raises(TrainingConfigError, match="access-qa has no production version to start from"):
            resolve_init(champion, family, artifacts, tmp_path / "cache")
        registry = Registry(store, artifacts)
        first = trained_version(store, artifacts, "access-qa", 1)
        registry.promote("access-qa", first, by="test", force=True, reason="test")
        second = trained_version(store, artifacts, "access-qa", 2, dataset="v2")
        registry.promote("access-qa", second, by="test", force=True, reason="test")

        assert resolve_init(champion, family, artifacts, tmp_path / "cache").version == second
        previous = champion.model_copy(update={"init_from": "access-qa@previous"})
        assert resolve_init(previous, family, artifacts, tmp_path / "cache").version == first
        named = champion.model_copy(update={"init_from": f"access-qa@{first}", "init": "merge_champion"})
        found = resolve_init(named, family, artifacts, tmp_path / "cache")
        assert (found.mode, found.family, found.version) == ("merge_champion", "access-qa", first)
        assert (found.folder / "adapter_config.json").is_file()
        assert resolve_init(resolve_training_config("chat_sft", {}, {}), family, artifacts, tmp_path) is None

        other_base = champion.model_copy(update={"init_from": "access-qa@production"})
        with pytest.raises(
            TrainingConfigError, match="was trained on base model 'tiny'; intent-router trains"
        ):
            resolve_init(other_base, config.family("intent-router"), artifacts, tmp_path / "cache")
        with pytest.raises(TrainingConfigError, match="access-qa@nope: no such published version"):
            resolve_init(
                champion.model_copy(update={"init_from": "access-qa@nope"}), family, artifacts, tmp_path
            )
    with pytest.raises(ValueError, match="must be <family>@<production | previous | a version>"):
        resolve_training_config("chat_sft", {}, {"init_from": "no-at-sign"})


def test_a_champion_with_fewer_labels_seeds_the_labels_it_knows(model_cache, tmp_path):
    """New intents arrive: the family's labels grow; the champion's head rows go to its labels,
    the new label keeps the row the probe gave it (its class mean), nothing is refused."""
    from pulse_pipeline.core.families import parse_config

    family = FAMILIES.family("router")
    fewer = parse_config(
        {
            "families": {
                "router": {
                    **family.model_dump(include={"task", "annotation_kinds", "base_model"}),
                    "labels": ["balance", "transfer"],
                }
            }
        }  # fmt: skip
    ).family("router")
    data = intent_examples(36)
    old = [x for x in data if x["label"] != "book_flight"]
    settings = {"epochs": 1, "micro_batch_size": 8, "effective_batch_size": 8}
    champion = train(_job(fewer, model_cache, tmp_path / "w1", (old[:20], old[20:]), **settings))
    saved = load_file(champion.folder / "adapter_model.safetensors")
    key = next(k for k in saved if k.endswith("head.weight"))
    init = InitAdapter("champion", "router", "router-20261201-0900", champion.folder)
    job = _with_init(
        _job(family, model_cache, tmp_path / "w2", (data[:27], data[27:]), **settings), init, tmp_path / "w2"
    )
    fresh = setup(_job(family, model_cache, tmp_path / "w0", (data[:27], data[27:]), **settings))
    session = setup(job)
    head = get_peft_model_state_dict(session.model)[key]
    labels = family.labels
    assert torch.equal(head[labels.index("transfer")], saved[key][1])  # by name, not position
    assert torch.equal(head[labels.index("balance")], saved[key][0])
    new_row = get_peft_model_state_dict(fresh.model)[key][labels.index("book_flight")]
    assert torch.equal(head[labels.index("book_flight")], new_row)  # the probe's, as a fresh run's


def test_replay_mixes_a_stratified_share_of_the_earlier_examples():
    from pulse_pipeline.core.training.replay import replay_mix

    train = [{"id": f"old-{i:03d}"} for i in range(90)] + [{"id": f"new-{i:03d}"} for i in range(30)]
    strata = {x["id"]: ("a" if i % 3 else "b") for i, x in enumerate(train)}  # 2:1 among the old
    earlier = {x["id"] for x in train[:90]}
    mix = replay_mix(train, strata, earlier, 0.25, seed=7, earlier_version="v1")
    assert mix.record == {
        "share": 0.25, "earlier_snapshot": "v1", "new_examples": 30, "earlier_examples": 90,
        "replayed_examples": 10, "replayed_share": 0.25, "strata_replayed": 2,
    }  # fmt: skip
    replayed = [x["id"] for x in mix.examples[30:]]
    assert [x["id"] for x in mix.examples[:30]] == [f"new-{i:03d}" for i in range(30)]
    assert sorted(strata[i] for i in replayed) == ["a"] * 7 + ["b"] * 3  # 2:1, by largest remainder
    assert replayed == [
        x["id"] for x in replay_mix(train, strata, earlier, 0.25, seed=7, earlier_version="v1").examples[30:]
    ]
    assert replayed != [
        x["id"] for x in replay_mix(train, strata, earlier, 0.25, seed=8, earlier_version="v1").examples[30:]
    ]
    assert len(replay_mix(train, strata, earlier, 0.0, seed=7, earlier_version="v1").examples) == 30
    assert (
        len(replay_mix(train, strata, earlier, 0.9, seed=7, earlier_version="v1").examples) == 120
    )  # all there is
    with pytest.raises(TrainingConfigError, match="replay mixes earlier examples into a continual run"):
        resolve_training_config("chat_sft", {"replay": 0.2})
