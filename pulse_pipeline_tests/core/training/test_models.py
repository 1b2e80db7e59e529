"""Precision and quantization per hardware; the CPU 4-bit trap; GPU-only paths (skipped on CPU)."""

from __future__ import annotations

import pytest
import torch

from pulse_pipeline.core.training.base_models import resolve_base_model
from pulse_pipeline.core.training.config import resolve_training_config
from pulse_pipeline.core.training.hardware import plan_for
from pulse_pipeline.core.training.models import load_for_training, restore_4bit_for_training

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_full_precision_lora_on_cpu_and_qlora_on_cuda():
    chat = resolve_training_config("chat_sft")
    cpu = plan_for(chat, "causal_lm", cuda=False)
    assert (cpu.device, cpu.precision, cpu.quantization, cpu.attention) == ("cpu", "fp32", "none", "sdpa")
    eight = plan_for(resolve_training_config("chat_sft", {"quantization": "8bit"}), "causal_lm", cuda=False)
    assert eight.quantization == "8bit"
    if torch.cuda.is_available():
        gpu = plan_for(chat, "causal_lm")
        assert gpu.device == "cuda" and gpu.quantization == "4bit" and gpu.precision in ("bf16", "fp16")
        assert plan_for(chat, "encoder").quantization == "none"  # a 22M encoder gains nothing from 4-bit


def _layer0_grad(model, ids):
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    (grad,) = [
        p.grad for n, p in model.named_parameters() if "layers.0.self_attn.q_proj.lora_B" in n
    ]  # B is what the first layer learns first (A's gradient is zero while B is still zero)
    return grad


def test_cpu_4bit_training_after_an_eval_pass_still_reaches_the_first_layer(model_cache):
    """bitsandbytes repacks 4-bit weights for inference on the first eval-mode forward on CPU;
    after that, gradients no longer flow through the base weights (../shared/notes/stack.md).
    The recipe validates between epochs, so it must undo the repacking before training on."""
    pytest.importorskip("bitsandbytes")
    base = resolve_base_model("tiny", model_cache)
    config = resolve_training_config("chat_sft", {"quantization": "4bit", "lora": {"dropout": 0.0}})
    plan = plan_for(config, "causal_lm", cuda=False)
    ids = torch.randint(5, 1000, (2, 12), generator=torch.Generator().manual_seed(0))

    torch.manual_seed(0)
    fresh = _layer0_grad(load_for_training(base, plan, config.lora), ids)

    torch.manual_seed(0)
    model = load_for_training(base, plan, config.lora)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    trapped = _layer0_grad(model, ids)
    model.zero_grad()
    assert restore_4bit_for_training(model) > 0
    restored = _layer0_grad(model, ids)

    assert fresh.abs().sum() > 0
    assert trapped.abs().sum() == 0  # the trap this guards against (if bitsandbytes fixes it, drop the guard)
    # The same gradient as a model that never ran inference (up to 4-bit kernel rounding).
    cosine = torch.nn.functional.cosine_similarity(restored.flatten(), fresh.flatten(), dim=0)
    assert cosine > 0.999 and restored.norm() == pytest.approx(fresh.norm().item(), rel=0.01)


def _chat_job(config, model_cache, tmp_path, **settings):
    from pulse_pipeline.core.training.recipe import TrainingJob
    from pulse_pipeline_tests.core.training.examples import chat_examples

    data = chat_examples(24)
    overrides = {"micro_batch_size": 8, "learning_rate": 3e-3, **settings}
    return TrainingJob(
        config.family("access-qa"),
        resolve_training_config("chat_sft", {}, overrides),
        "v",
        data[:16],
        data[16:],
        resolve_base_model("tiny", model_cache),
        tmp_path,
    )


def test_cpu_4bit_recipe_keeps_learning_after_validating(config, model_cache, tmp_path):
    pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file

    from pulse_pipeline.core.training.recipe import train

    job = _chat_job(config, model_cache, tmp_path, quantization="4bit", epochs=2, checkpoint_every=100)
    result = train(job)
    assert result.metadata["hardware"]["quantization"] == "4bit"
    after_epoch = [load_file(p / "trainable.safetensors") for p in sorted(job.work.glob("step-*"))]
    assert len(after_epoch) == 2  # one checkpoint per epoch
    first_layer = [k for k in after_epoch[0] if "layers.0.self_attn.q_proj.lora_A" in k]
    # Epoch 2 (after the validation pass) still moved the first layer's adapter.
    assert not torch.equal(after_epoch[0][first_layer[0]], after_epoch[1][first_layer[0]])


@needs_cuda
def test_qlora_on_cuda_trains_4bit_with_bf16_compute(config, model_cache, tmp_path):
    from pulse_pipeline.core.training.recipe import train

    result = train(_chat_job(config, model_cache, tmp_path, epochs=2))
    hw = result.metadata["hardware"]
    assert (hw["device"], hw["quantization"]) == ("cuda", "4bit") and hw["precision"] in ("bf16", "fp16")
    epochs = result.metadata["epoch_history"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]


@needs_cuda
def test_packing_with_flash_attention_on_cuda(config, model_cache, tmp_path):
    pytest.importorskip("flash_attn")
    from pulse_pipeline.core.training.recipe import train

    job = _chat_job(config, model_cache, tmp_path, epochs=1, packing=True)
    assert train(job).metadata["hardware"]["attention"] == "flash_attention_2"
