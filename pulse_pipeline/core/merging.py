"""Merge a chat LoRA adapter into its base model: one full checkpoint for engines without LoRA support.

`merge_adapter(adapter_folder, out, base_path=None)` loads the base model in float32 (the one the
adapter names in adapter_config.json's `base_model_name_or_path`, unless `base_path` is given),
applies the adapter with peft, folds it into the weights (`merge_and_unload`) and writes:

- the merged model (config, generation config, `model.safetensors`, float32),
- the adapter folder's tokenizer with its chat template (the base's when the adapter has none),
- `merge_metadata.json`: the source adapter folder, the base model, the peft version, merged_at.

The folder is built beside `out` and renamed into place, so `out` is whole or absent; an existing
non-empty `out` is refused (a merged model is never overwritten in place).

Causal LM adapters only: a classification or regression adapter carries a custom head
(`head_config.json`) that no plain model class can hold, so it is refused with `MergeError`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MERGE_METADATA = "merge_metadata.json"
ADAPTER_CONFIG = "adapter_config.json"
HEAD_CONFIG = "head_config.json"  # as in training/heads.py; not imported, so this module loads without torch


class MergeError(RuntimeError):
    """The adapter cannot be merged (or not into `out`); the message says why and what to do."""


def merge_adapter(adapter_folder: Path, out: Path, *, base_path: Path | None = None) -> Path:
    """Write the base model with `adapter_folder`'s LoRA weights merged in to `out`; returns `out`."""
    adapter_folder, out = Path(adapter_folder), Path(out)
    config = read_adapter_config(adapter_folder)
    _check_out(out)
    base = resolve_base(config, adapter_folder, base_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer_source = _write_merged(adapter_folder, base, tmp)
        metadata = _metadata(adapter_folder, base, tokenizer_source)
        (tmp / MERGE_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_adapter_config(adapter_folder: Path) -> dict[str, Any]:
    """The folder's adapter_config.json, checked to be a causal LM LoRA adapter."""
    path = adapter_folder / ADAPTER_CONFIG
    if not path.is_file():
        raise MergeError(f"{adapter_folder} is not an adapter folder: it has no {ADAPTER_CONFIG}")
    if (adapter_folder / HEAD_CONFIG).is_file():
        raise MergeError(
            f"cannot merge {adapter_folder}: classification/regression adapters carry a custom head; "
            "serve them with peft"
        )
    config = json.loads(path.read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("task_type") != "CAUSAL_LM":
        raise MergeError(
            f"cannot merge {adapter_folder}: only causal LM LoRA adapters merge into a plain model "
            f"(this one is peft_type={config.get('peft_type')!r}, task_type={config.get('task_type')!r})"
        )
    return config


def resolve_base(config: dict[str, Any], adapter_folder: Path, base_path: Path | None) -> Path:
    """The base model folder: `base_path` when given, else the one the adapter was trained on."""
    if base_path is not None:
        base = Path(base_path)
        hint = "base_path"
    else:
        name = config.get("base_model_name_or_path")
        if not name:
            raise MergeError(
                f"{adapter_folder / ADAPTER_CONFIG} names no base_model_name_or_path; pass base_path"
            )
        base = Path(name).expanduser()
        hint = f"the base model named in {adapter_folder / ADAPTER_CONFIG}"
    if not (base / "config.json").is_file():
        raise MergeError(
            f"{hint} ({base}) is not a model folder with a config.json; pass base_path=<the base model's folder>"
        )
    return base.resolve()


def _check_out(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        raise MergeError(f"{out} already exists and is not empty; merge into a new folder or remove it first")
    if out.exists() and not out.is_dir():
        raise MergeError(f"{out} already exists and is not a folder; merge into a new folder")


def _write_merged(adapter_folder: Path, base: Path, folder: Path) -> str:
    """Merge and save model and tokenizer into `folder`; returns where the tokenizer came from."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; not the caller's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        merged = PeftModel.from_pretrained(model, adapter_folder).merge_and_unload()
    merged.save_pretrained(folder)
    tokenizer, source = _tokenizer(adapter_folder, base)
    tokenizer.save_pretrained(folder)
    return source


def _tokenizer(adapter_folder: Path, base: Path) -> tuple[Any, str]:
    """The adapter folder's tokenizer (the one training used, chat template included), else the base's."""
    from transformers import AutoTokenizer

    has_own = any((adapter_folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    source = adapter_folder if has_own else base
    return AutoTokenizer.from_pretrained(source), str(source.resolve())


def _metadata(adapter_folder: Path, base: Path, tokenizer_source: str) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    return {
        "source_adapter_folder": str(adapter_folder.resolve()),
        "base_model": str(base),
        "tokenizer_from": tokenizer_source,
        "dtype": "float32",
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "merged_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out` (an empty `out` folder is replaced)."""
    try:
        os.rename(tmp, out)
    except OSError as exc:  # `out` was filled (or became a file) while merging
        raise MergeError(
            f"cannot move the merged model into {out}: {exc.strerror}; it was not changed"
        ) from None
