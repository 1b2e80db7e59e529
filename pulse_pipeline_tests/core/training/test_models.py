"""Precision and quantization per hardware; the CPU 4-bit trap; GPU-only paths (skipped on CPU)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pulse_pipeline.core.training.base_models import resolve_base_model
from pulse_pipeline.core.training.config import TrainingConfigError, resolve_training_config
from pulse_pipeline.core.training.hardware import Gpu, parameter_count, plan_for
from pulse_pipeline.core.training.models import load_for_training, restore_4bit_for_training

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_full_precision_lora_on_cpu():
    chat = resolve_training_config("chat_sft")
    cpu = plan_for(chat, "causal_lm", cuda=False)
    assert (cpu.device, cpu.precision, cpu.quantization, cpu.attention) == ("cpu", "fp32", "none", "sdpa")
    assert (cpu.batch_tokens, cpu.pad_multiple, cpu.packing, cpu.liger) == (None, 1, False, False)
    eight = plan_for(resolve_training_config("chat_sft", {"quantization": "8bit"}), "causal_lm", cuda=False)
    assert eight.quantization == "8bit"


def _weights(folder, parameters: int):
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(
        {"w": torch.zeros(parameters // 4, 4), "b": torch.zeros(parameters % 4 or 4)[: parameters % 4]},
        folder / "model.safetensors",
    )
    return folder


def test_on_cuda_4bit_only_where_the_bf16_weights_would_crowd_the_gpu(tmp_path):
    chat = resolve_training_config("chat_sft")
    model = _weights(tmp_path / "m", 1_000_000)  # 2 MB of bf16 weights
    assert parameter_count(model) == 1_000_000 and parameter_count(tmp_path) is None
    roomy = plan_for(chat, "causal_lm", cuda=True, model_path=model, gpu=Gpu("H200", 140 * 2**30, True))
    assert roomy.quantization == "none" and roomy.precision == "bf16"
    assert roomy.choices["quantization"].startswith("none: bf16 weights 0.0 GiB, 40% of 140 GiB")
    small = plan_for(chat, "causal_lm", cuda=True, model_path=model, gpu=Gpu("tiny GPU", 4_000_000, False))
    assert small.quantization == "4bit" and small.precision == "fp16"  # 2 MB > 40 % of 4 MB
    assert small.choices["quantization"].startswith("4bit (QLoRA): bf16 weights")
    assert (
        plan_for(chat, "encoder", cuda=True, model_path=model, gpu=Gpu("g", 10**6, True)).quantization
        == "none"
    )
    asked = resolve_training_config("chat_sft", {"quantization": "4bit"})
    assert (
        plan_for(
            asked, "causal_lm", cuda=True, model_path=model, gpu=Gpu("H200", 140 * 2**30, True)
        ).quantization
        == "4bit"
    )


def test_several_gpus_shard_a_model_too_big_for_one_instead_of_quantizing_it(tmp_path):
    chat = resolve_training_config("chat_sft")
    model = _weights(tmp_path / "m", 1_000_000)  # 2 MB of bf16 weights
    gpu = Gpu("small GPU", 4_000_000, True)  # 40 %: 1.6 MB

    def plan(config=chat, processes=2, gpu=gpu, architecture="causal_lm"):
        return plan_for(config, architecture, cuda=True, model_path=model, gpu=gpu, processes=processes)

    alone = plan(processes=1)
    assert (alone.quantization, alone.data_parallel) == ("4bit", "none")
    sharded = plan()  # 1 MB a process
    assert (sharded.quantization, sharded.data_parallel) == ("none", "fsdp")
    assert sharded.choices["data_parallel"] == (
        "fsdp: bf16 weights 0.0 GiB, 40% of 0 GiB is 0.0 GiB; 0.0 GiB a process once sharded"
    )
    assert sharded.choices["quantization"].endswith("sharded over the processes (FSDP) instead")
    too_big = plan(gpu=Gpu("smaller GPU", 2_000_000, True))  # 1 MB a process > 0.8 MB
    assert (too_big.quantization, too_big.data_parallel) == ("4bit", "ddp")
    roomy = plan(gpu=Gpu("H100", 80 * 2**30, True))
    assert (roomy.quantization, roomy.data_parallel) == ("none", "ddp")
    assert roomy.choices["data_parallel"] == "ddp: a replica of the model in each of 2 processes"
    replicas = plan(resolve_training_config("chat_sft", {"data_parallel": "ddp"}))
    assert (replicas.quantization, replicas.data_parallel) == ("4bit", "ddp")
    on_cpu = plan_for(chat, "causal_lm", cuda=False, processes=2)
    assert on_cpu.data_parallel == "ddp" and "data_parallel" in on_cpu.choices
    fsdp = resolve_training_config("chat_sft", {"data_parallel": "fsdp"})
    assert plan_for(fsdp, "causal_lm", cuda=False, processes=2).data_parallel == "fsdp"  # asked for
    assert plan_for(fsdp, "causal_lm", cuda=False).data_parallel == "none"  # one process
    with pytest.raises(TrainingConfigError, match="training.data_parallel: fsdp shards causal LMs"):
        plan(fsdp, architecture="encoder")
    four_bit = resolve_training_config("chat_sft", {"data_parallel": "fsdp", "quantization": "4bit"})
    with pytest.raises(TrainingConfigError, match="fsdp does not shard 4bit weights"):
        plan(four_bit)


def test_on_cuda_batches_fill_a_token_budget_in_widths_of_64_without_cudnn_attention(tmp_path):
    gpu = Gpu("H100", 80 * 2**30, True)
    plan = plan_for(resolve_training_config("chat_sft"), "causal_lm", cuda=True, gpu=gpu)
    assert (plan.batch_tokens, plan.pad_multiple, plan.cudnn_attention) == (16_384, 64, False)
    flash = importlib.util.find_spec("flash_attn") is not None
    assert plan.attention == ("flash_attention_2" if flash else "sdpa") and plan.packing is flash
    assert set(plan.choices) >= {"precision", "quantization", "attention", "batching", "kernels"}
    mine = resolve_training_config("chat_sft", {"batch_tokens": 4096, "pad_to_multiple_of": 8})
    assert (
        plan_for(mine, "causal_lm", cuda=True, gpu=gpu).batch_tokens,
        plan_for(mine, "causal_lm", cuda=True, gpu=gpu).pad_multiple,
    ) == (4096, 8)
    assert plan_for(mine, "causal_lm", cuda=False).batch_tokens == 4096  # asked for: on CPU too


@needs_cuda
def test_the_recipe_trains_on_the_gpu_with_the_gpu_plan(config, model_cache, tmp_path):
    from pulse_pipeline.core.training.recipe import train
    from pulse_pipeline_tests.core.training.test_recipe import _chat_job

    result = train(_chat_job(config, model_cache, tmp_path / "work", epochs=1))
    hardware = result.metadata["hardware"]
    assert hardware["device"] == "cuda" and hardware["pad_multiple"] == 64 and hardware["choices"]
    assert result.metadata["loss_history"][-1]["loss"] < result.metadata["loss_history"][0]["loss"]


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
