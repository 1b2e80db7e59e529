"""Continual training: an adapter that starts from another one instead of a fresh LoRA.

`training.init` (config.py): `base` is a fresh LoRA (the default); `champion` copies the weights
of the adapter `training.init_from` names (default: this family's production version) into the
new adapter, which must have the same LoRA shape, and trains on; `merge_champion` merges that
adapter into the base weights and puts a fresh LoRA on top. `init_from: <family>@<alias>` names
another family's adapter (a general adapter, then a specialised one trained on top); the alias is
`production`, `previous` (the version before it) or a version name. The source must be trained on
the same base model. The adapter's metadata records what it started from (`init`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.core.training.config import LoraSettings, TrainingConfig, TrainingConfigError


@dataclass(frozen=True)
class InitAdapter:
    """The adapter a continual run starts from, as a local folder."""

    mode: str  # champion or merge_champion
    family: str
    version: str
    folder: Path

    def describe(self) -> dict[str, str]:
        return {"mode": self.mode, "from": f"{self.family}@{self.version}"}


def resolve_init(
    config: TrainingConfig, family: FamilyConfig, artifacts: ArtifactStore, cache: Path
) -> InitAdapter | None:
    """The adapter `config.init` starts from (copied under `cache` from a remote store); None for
    `init: base`. TrainingConfigError names what is missing or does not fit."""
    from pulse_pipeline.core.registry import files, read_current

    if config.init == "base":
        return None
    source, _, alias = (config.init_from or f"{family.name}@production").partition("@")
    current = read_current(artifacts, source)
    if alias in ("production", "previous"):
        version = (current or {}).get("version" if alias == "production" else "previous_version")
        if not version:
            raise TrainingConfigError(
                f"training.init {config.init}: {source} has no {alias} version to start from "
                f"(train it with init: base first, or name a version in training.init_from)"
            )
    else:
        version = alias
        if version not in files.complete_folders(artifacts, source):
            raise TrainingConfigError(f"training.init_from {source}@{version}: no such published version")
    folder = files.local_folder(artifacts, source, str(version), cache)
    trained_on = files.read_metadata(artifacts, source, str(version)).get("base_model")
    if trained_on and trained_on != family.base_model:
        raise TrainingConfigError(
            f"training.init_from {source}@{version} was trained on base model {trained_on!r}; "
            f"{family.name} trains {family.base_model!r}: an adapter only fits its own base model"
        )
    return InitAdapter(config.init, source, str(version), folder)


def lora_mismatch(folder: Path, lora: LoraSettings) -> str | None:
    """Why the adapter in `folder` cannot seed a LoRA of shape `lora` (rank, alpha, modules)."""
    theirs = json.loads((folder / "adapter_config.json").read_text())
    ours = {"r": lora.r, "alpha": lora.alpha, "target_modules": sorted(lora.target_modules)}
    found = {
        "r": theirs.get("r"),
        "alpha": theirs.get("lora_alpha"),
        "target_modules": sorted(theirs.get("target_modules") or []),
    }
    for name in ("r", "alpha", "target_modules"):
        if ours[name] != found[name]:
            return (
                f"training.lora.{name} is {ours[name]}, but the adapter it starts from ({folder.name}) has "
                f"{found[name]}: set it to that, or use init: merge_champion (a new LoRA on the merged weights)"
            )
    return None


def load_init_weights(model: Any, folder: Path) -> int:
    """Copy the adapter's trained weights (LoRA and any saved head) into the fresh peft `model`;
    returns how many tensors were loaded.

    A classification head is matched by label name: the labels the adapter knows get its rows,
    labels added to the family since keep the rows they have (the probe's class means), and
    labels since removed are dropped."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(folder / "adapter_model.safetensors"))
    state = _head_by_label(model, folder, state)
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise TrainingConfigError(
            f"the adapter in {folder.name} does not fit this model: {len(unexpected)} of its tensors have no "
            f"place here (first: {unexpected[0]})"
        )
    return len(state)


def _head_by_label(model: Any, folder: Path, state: dict[str, Any]) -> dict[str, Any]:
    """`state` with its classification head's rows placed at this model's labels' positions."""
    from peft import get_peft_model_state_dict

    from pulse_pipeline.core.training.heads import HEAD_CONFIG, HeadConfig

    ours = getattr(model.get_base_model(), "head_config", None)
    if ours is None or ours.task != "classification" or not (folder / HEAD_CONFIG).is_file():
        return state
    theirs = HeadConfig.load(folder).labels
    if theirs == ours.labels:
        return state
    if ours.kind != HeadConfig.load(folder).kind:
        raise TrainingConfigError(
            f"training.head is {ours.kind}, but the adapter it starts from ({folder.name}) has a "
            f"{HeadConfig.load(folder).kind} head: set it to that"
        )
    current = get_peft_model_state_dict(model)
    row_of = {label: i for i, label in enumerate(theirs)}
    out = dict(state)
    for key, tensor in state.items():
        if ".head." not in key or tensor.dim() == 0 or tensor.shape[0] != len(theirs):
            continue
        placed = current[key].detach().clone().to(tensor.dtype)
        for i, label in enumerate(ours.labels):
            if label in row_of:
                placed[i] = tensor[row_of[label]]
        out[key] = placed
    return out


def merge_into_base(model: Any, folder: Path) -> Any:
    """The base `model` with the adapter in `folder` merged into its weights (unquantized only)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
