"""What the machine offers, and the precision, quantization, attention and batching picked for it.

On CPU: full-precision LoRA (fp32), PyTorch's SDPA attention, a fixed number of examples per
micro-batch padded to their longest (measured best there: benchmarks/README.md).

On CUDA (`auto` everywhere), each choice and its reason go into the adapter's metadata
(`hardware.choices`), from what a profile of the recipe on an H200 showed (issue 16):
- bf16 where the GPU supports it (fp16 otherwise);
- QLoRA (4-bit NF4 through bitsandbytes) only where it pays: when the model's bf16 weights would
  take more than `QLORA_ABOVE_SHARE` of the GPU's memory. Below that 4-bit saved nothing (peft
  upcasts embeddings, lm_head and norms to fp32: 1 GiB more at 0.5 B parameters) and was no faster;
- flash attention 2 when the package is installed, and then padding-free packed rows (position
  ids restart per example; its varlen kernel keeps examples apart); else SDPA with the cuDNN
  backend off, as it re-plans for every new batch width (~140 ms of CPU per micro-batch);
- micro-batches filled to a token budget (`batch_tokens`, 16,384 padded tokens) rather than a
  fixed count: the step is bound by kernel launches, so a micro-batch of 4 short examples
  leaves the GPU idle; and widths rounded up to a multiple of 64, so that the kernels and the
  allocator see a few shapes instead of one per batch;
- liger-kernel's RMSNorm, RoPE and SwiGLU kernels when the package is installed;
- the caching allocator's expandable segments, against fragmentation from varying widths;
- in several processes, FSDP2 (weights sharded, bf16 rather than 4-bit) when the bf16 weights
  would pass that share of one GPU and a process's share of them would not; DDP otherwise.
4-bit and 8-bit can be asked for on CPU too (bitsandbytes has CPU kernels); see
`models.restore_4bit_for_training` for the one trap that brings.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulse_pipeline.core.training.config import TrainingConfig, TrainingConfigError

QLORA_ABOVE_SHARE = 0.4  # QLoRA when the bf16 weights would take more of the GPU's memory than this
CUDA_BATCH_TOKENS = 16_384  # padded tokens per micro-batch on CUDA (batch_tokens: auto)
CUDA_PAD_MULTIPLE = 64  # batch widths on CUDA are rounded up to a multiple of this


@dataclass(frozen=True)
class Gpu:
    """What the planner needs to know of the GPU (tests pass one in; otherwise torch is asked)."""

    name: str
    memory_bytes: int
    bf16: bool


@dataclass(frozen=True)
class Plan:
    device: str  # "cuda" or "cpu"
    precision: str  # "bf16", "fp16" or "fp32": the compute dtype
    quantization: str  # "4bit", "8bit" or "none"
    attention: str  # transformers' attn_implementation
    batch_tokens: int | None = (
        None  # each step's examples cut into micro-batches of at most this many padded tokens
    )
    pad_multiple: int = 1  # batch widths rounded up to a multiple of this
    packing: bool = False  # chat: each micro-batch in one row, position ids restarting per example
    liger: bool = False  # liger-kernel's RMSNorm, RoPE and SwiGLU on the base model
    cudnn_attention: bool = True  # SDPA may pick its cuDNN backend
    data_parallel: str = "none"  # several processes: "ddp" or "fsdp"
    choices: dict[str, str] = field(default_factory=dict, compare=False)  # what was chosen, and why

    @property
    def dtype(self) -> Any:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]

    @property
    def autocast(self) -> bool:
        """Mixed precision: fp32 master weights for the adapter, half-precision compute."""
        return self.precision != "fp32"


def plan_for(
    config: TrainingConfig,
    architecture: str,
    *,
    cuda: bool | None = None,
    model_path: Path | None = None,
    gpu: Gpu | None = None,
    processes: int = 1,
) -> Plan:
    """The plan for training `architecture` ("causal_lm" or "encoder") with `config` here, in
    `processes` processes (one GPU each on CUDA); with `model_path`, the model's size decides
    QLoRA and FSDP on CUDA."""
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    if not cuda:
        quantization = "none" if config.quantization == "auto" else config.quantization
        data_parallel, reason = _data_parallel(config, architecture, processes, quantization, None)
        return Plan(
            "cpu",
            "fp32" if config.precision == "auto" else config.precision,
            quantization,
            "sdpa",
            batch_tokens=config.batch_tokens,
            pad_multiple=config.pad_to_multiple_of or 1,
            packing=config.packing,
            data_parallel=data_parallel,
            choices={"data_parallel": reason} if processes > 1 else {},
        )
    if gpu is None:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu = Gpu(props.name, props.total_memory, torch.cuda.is_bf16_supported())
    choices: dict[str, str] = {}
    if config.precision == "auto":
        precision = "bf16" if gpu.bf16 else "fp16"
        choices["precision"] = f"{precision}: {'supported' if gpu.bf16 else 'no bf16'} on {gpu.name}"
    else:
        precision = config.precision
        choices["precision"] = f"{precision}: training.precision"
    weights = _bf16_weights(model_path) if architecture == "causal_lm" else None
    shard = _shard_for_size(config, processes, weights, gpu)
    quantization, choices["quantization"] = _quantization(config, architecture, weights, gpu, shard)
    data_parallel, reason = _data_parallel(config, architecture, processes, quantization, shard)
    if processes > 1:
        choices["data_parallel"] = reason
    flash = importlib.util.find_spec("flash_attn") is not None and precision != "fp32"
    causal = architecture == "causal_lm"
    if flash and causal:
        attention = "flash_attention_2"
        choices["attention"] = (
            "flash_attention_2: installed; its varlen kernel makes packed rows padding-free"
        )
    else:
        attention = "sdpa"
        choices["attention"] = "sdpa without the cuDNN backend (it re-plans for every new batch width)"
    packing = config.packing or (attention == "flash_attention_2" and causal)
    if packing:
        choices["packing"] = "packed rows: " + (
            "training.packing" if config.packing else "a varlen kernel is present"
        )
    batch_tokens = config.batch_tokens or CUDA_BATCH_TOKENS
    pad_multiple = config.pad_to_multiple_of or CUDA_PAD_MULTIPLE
    choices["batching"] = (
        f"micro-batches of at most {batch_tokens} padded tokens, widths rounded up to {pad_multiple}"
    )
    liger = causal and importlib.util.find_spec("liger_kernel") is not None
    choices["kernels"] = (
        "liger-kernel (RMSNorm, RoPE, SwiGLU)" if liger else "PyTorch's (liger-kernel not installed)"
    )
    return Plan(
        "cuda", precision, quantization, attention,
        batch_tokens=batch_tokens, pad_multiple=pad_multiple, packing=packing, liger=liger,
        cudnn_attention=False, data_parallel=data_parallel, choices=choices,
    )  # fmt: skip


def _quantization(
    config: TrainingConfig, architecture: str, weights: int | None, gpu: Gpu, shard: str | None
) -> tuple[str, str]:
    if config.quantization != "auto":
        return config.quantization, f"{config.quantization}: training.quantization"
    if architecture != "causal_lm":
        return "none", "none: an encoder is small"
    if weights is None:
        return "none", "none: the model's size is unknown (its weights are not safetensors)"
    size = _size(weights, gpu)
    if weights <= QLORA_ABOVE_SHARE * gpu.memory_bytes:
        return "none", f"none: {size}; 4-bit would save nothing here"
    if shard:
        return "none", f"none: {size}, sharded over the processes (FSDP) instead"
    return "4bit", f"4bit (QLoRA): {size}"


def _shard_for_size(config: TrainingConfig, processes: int, weights: int | None, gpu: Gpu) -> str | None:
    """Why FSDP (auto) shards the model: its bf16 weights would crowd one GPU and a process's
    share of them would not; None when it need not or cannot."""
    budget = QLORA_ABOVE_SHARE * gpu.memory_bytes
    if (
        weights is None
        or processes <= 1
        or config.data_parallel == "ddp"
        or config.quantization != "auto"
        or weights <= budget
        or weights / processes > budget
    ):
        return None
    return f"fsdp: {_size(weights, gpu)}; {weights / processes / 2**30:.1f} GiB a process once sharded"


def _data_parallel(
    config: TrainingConfig, architecture: str, processes: int, quantization: str, shard: str | None
) -> tuple[str, str]:
    """How several processes share the work: "ddp" (a replica each) or "fsdp" (FSDP2, the
    weights sharded; `shard`: why, when the model's size decided it); "none" in one process."""
    if processes <= 1:
        return "none", "one process"
    if config.data_parallel == "fsdp":
        if architecture != "causal_lm":
            raise TrainingConfigError(
                "training.data_parallel: fsdp shards causal LMs that do not fit one device; "
                "an encoder family trains with ddp"
            )
        if quantization != "none":
            raise TrainingConfigError(
                f"training.data_parallel: fsdp does not shard {quantization} weights; "
                "set training.quantization: none, or data_parallel: ddp"
            )
        return "fsdp", f"fsdp: training.data_parallel, over {processes} processes"
    replicas = f"a replica of the model in each of {processes} processes"
    if config.data_parallel == "ddp":
        return "ddp", f"ddp: training.data_parallel, {replicas}"
    if shard:
        return "fsdp", shard
    return "ddp", f"ddp: {replicas}"


def _bf16_weights(model_path: Path | None) -> int | None:
    params = parameter_count(model_path) if model_path is not None else None
    return None if params is None else 2 * params


def _size(weights: int, gpu: Gpu) -> str:
    budget = QLORA_ABOVE_SHARE * gpu.memory_bytes
    return f"bf16 weights {weights / 2**30:.1f} GiB, {QLORA_ABOVE_SHARE:.0%} of {gpu.memory_bytes / 2**30:.0f} GiB is {budget / 2**30:.1f} GiB"


def parameter_count(model_path: Path) -> int | None:
    """Parameters in a model folder's safetensors files, read from their headers (no weights
    loaded); None when it has none."""
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def prepare_device(plan: Plan) -> None:
    """Process-wide CUDA settings of the plan, before the model is loaded: SDPA's cuDNN backend,
    and the caching allocator's expandable segments."""
    if plan.device != "cuda":
        return
    import torch

    torch.backends.cuda.enable_cudnn_sdp(plan.cudnn_attention)
    with contextlib.suppress(AttributeError, RuntimeError):  # an older torch
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")


def describe() -> dict[str, Any]:
    """The machine, for training_metadata.json."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            cuda_version=torch.version.cuda,
        )
    return info


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "tokenizers", "flash-attn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
