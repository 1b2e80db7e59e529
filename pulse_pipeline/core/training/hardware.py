"""What the machine offers, and the precision, quantization and attention picked for it.

`auto` means: on CUDA, QLoRA (4-bit NF4 through bitsandbytes) for causal LMs, bf16 where the
GPU supports it (fp16 otherwise), flash attention 2 where the package is installed; on CPU,
full-precision LoRA (fp32) with PyTorch's SDPA attention. 4-bit and 8-bit can be asked for
on CPU too (bitsandbytes has CPU kernels); see `models.restore_4bit_for_training` for the one
trap that brings.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import dataclass
from typing import Any

from pulse_pipeline.core.training.config import TrainingConfig


@dataclass(frozen=True)
class Plan:
    device: str  # "cuda" or "cpu"
    precision: str  # "bf16", "fp16" or "fp32": the compute dtype
    quantization: str  # "4bit", "8bit" or "none"
    attention: str  # transformers' attn_implementation

    @property
    def dtype(self) -> Any:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]

    @property
    def autocast(self) -> bool:
        """Mixed precision: fp32 master weights for the adapter, half-precision compute."""
        return self.precision != "fp32"


def plan_for(config: TrainingConfig, architecture: str, *, cuda: bool | None = None) -> Plan:
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    if not cuda:
        precision = "fp32" if config.precision == "auto" else config.precision
        quantization = "none" if config.quantization == "auto" else config.quantization
        return Plan("cpu", precision, quantization, "sdpa")
    if config.precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        precision = config.precision
    if config.quantization == "auto":
        quantization = "4bit" if architecture == "causal_lm" else "none"
    else:
        quantization = config.quantization
    flash = importlib.util.find_spec("flash_attn") is not None and precision != "fp32"
    attention = "flash_attention_2" if flash and architecture == "causal_lm" else "sdpa"
    return Plan("cuda", precision, quantization, attention)


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
