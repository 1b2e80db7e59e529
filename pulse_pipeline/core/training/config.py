"""The training recipe's one typed config: every field with its default and a help line.

Resolution order: the task kind's defaults, then a preset (`training.preset` in pulse.yaml),
then the family's `training:` block, then the run's overrides (Dagster Launchpad, `pulse train
--epochs/--max-samples`). `resolve_training_config` returns the resolved config, which is what
the adapter's training_metadata.json and the MLflow run record.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CHAT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ENCODER_TARGETS = ("query", "key", "value", "dense")


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(16, ge=1, le=512, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: tuple[str, ...] = Field(
        CHAT_TARGETS, min_length=1, description="Module names that get LoRA."
    )


class PreferenceSettings(BaseModel):
    """The preference stage (objective dpo, kto, sft_then_dpo, sft_then_kto), run by TRL's trainers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(
        0.1,
        gt=0,
        description="How far the adapter may move from the reference (TRL's beta; higher: closer to it).",
    )
    epochs: int = Field(1, ge=1, le=100, description="Passes over the snapshot's preference data.")
    learning_rate: float = Field(
        5e-5,
        gt=0,
        lt=1,
        description="Peak learning rate of the preference stage (LoRA takes rates ~10x a full fine-tune's).",
    )


class TrainingConfig(BaseModel):
    """What one training run does; the defaults are the Pulse system's for chat families."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = Field(None, description="A named preset applied before the family's own settings.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapter shape.")
    epochs: int = Field(3, ge=1, le=100, description="Passes over the train split.")
    effective_batch_size: int = Field(
        8, ge=1, description="Examples per optimizer step (micro-batches x accumulation)."
    )
    micro_batch_size: int = Field(
        4, ge=1, description="Examples per forward pass; accumulation makes up the rest."
    )
    learning_rate: float = Field(1e-4, gt=0, lt=1, description="Peak learning rate.")
    head_learning_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Peak rate of a classification/regression head (default: learning_rate).",
    )
    probe_epochs: int = Field(
        0,
        ge=0,
        description="Classification/regression: fit the head alone on frozen embeddings for this many "
        "passes before tuning the body (linear probing first).",
    )
    head: Literal["cosine", "linear"] = Field(
        "cosine",
        description="Classification: the head fine-tuned with the encoder. cosine: one vector per label, "
        "started from the class means and fitted on frozen embeddings (probe_epochs), trained with "
        "the margin; linear: logits W x + b started from the frozen-encoder floor's weights.",
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    margin: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Classification: cosine margin taken off the true label while training (CosFace); "
        "wider gaps between labels help out-of-scope detection.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Classification: share of each target spread over all labels while training.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Gradients are clipped to this norm (null: not clipped)."
    )
    max_length: int = Field(
        1024, ge=16, description="Longest example in tokens; longer prompts lose their start."
    )
    max_samples: int | None = Field(
        None, ge=1, description="Train on at most this many examples (smoke runs)."
    )
    batch_tokens: int | None = Field(
        None,
        ge=16,
        description="Cut each optimizer step's examples into micro-batches of at most this many padded "
        "tokens instead of micro_batch_size examples (null: 16,384 on CUDA, off on CPU).",
    )
    pad_to_multiple_of: int | None = Field(
        None, ge=1, description="Round batch widths up to a multiple of this (null: 64 on CUDA, 1 on CPU)."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory on long sequences.")
    packing: bool = Field(False, description="Pack examples into one row with per-example boundaries.")
    quantization: Literal["auto", "4bit", "8bit", "none"] = Field(
        "auto",
        description="auto: 4-bit NF4 (QLoRA) on CUDA when the model's bf16 weights would take over 40 % "
        "of one GPU (and sharding them over the processes would not bring them under it), else none.",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16/fp16 on CUDA, fp32 on CPU."
    )
    data_parallel: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="Several processes: ddp replicates the model in each; fsdp shards it (FSDP2, chat "
        "families). auto: fsdp on CUDA when the bf16 weights would take over 40 % of one GPU and "
        "their share per process would not, else ddp.",
    )
    checkpoint_every: int = Field(
        50, ge=1, description="Optimizer steps between checkpoints (and one per epoch)."
    )
    log_every: int = Field(10, ge=1, description="Optimizer steps between progress lines.")
    seed: int = Field(42, description="Seed of initialization, shuffling and dropout.")
    objective: Literal["sft", "dpo", "kto", "sft_then_dpo", "sft_then_kto"] = Field(
        "sft",
        description="Chat families: what the adapter learns from. sft: the approved answers; dpo: the "
        "snapshot's preference pairs; kto: its desirable and undesirable answers; sft_then_*: sft, "
        "then the preference stage on its result. The adapter the preference stage starts from is "
        "its frozen reference (core/training/preference.py).",
    )
    preference: PreferenceSettings = Field(
        default_factory=PreferenceSettings, description="The preference stage's settings."
    )
    init: Literal["base", "champion", "merge_champion"] = Field(
        "base",
        description="What the adapter starts from: base (a fresh LoRA); champion (the weights of the "
        "adapter `init_from` names, same LoRA shape: continual training); merge_champion (that adapter "
        "merged into the base weights, then a fresh LoRA on top).",
    )
    init_from: str | None = Field(
        None,
        description="<family>@<production | previous | a version>: the adapter `init` starts from "
        "(default: this family's production version); another family's for a specialised adapter "
        "on top of a general one (same base model).",
    )

    replay: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Continual runs (init champion or merge_champion): train on the examples new since "
        "the start's snapshot plus earlier ones drawn (stratified) to make up this share of the mix; "
        "0: new examples only; null: the whole train split (core/training/replay.py).",
    )

    @field_validator("init_from")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z][a-z0-9-]*@[A-Za-z0-9._-]+", v):
            raise ValueError("must be <family>@<production | previous | a version>, e.g. 'faq@production'")
        return v

    @model_validator(mode="after")
    def _replay_needs_a_start(self) -> TrainingConfig:
        if self.replay is not None and self.init == "base":
            raise ValueError(
                "replay mixes earlier examples into a continual run: set training.init to champion or "
                "merge_champion, or remove training.replay"
            )
        return self

    @model_validator(mode="after")
    def _batch_sizes(self) -> TrainingConfig:
        if self.effective_batch_size % self.micro_batch_size:
            raise ValueError(
                f"effective_batch_size {self.effective_batch_size} must be a multiple of "
                f"micro_batch_size {self.micro_batch_size}"
            )
        return self

    @property
    def accumulation_steps(self) -> int:
        return self.effective_batch_size // self.micro_batch_size


# Defaults per task kind, under the presets and the family's settings.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "chat_sft": {},
    # Encoder families: fit the head first, then tune body and head (see heads.py). Measured on
    # CLINC150 and HWU64 (benchmarks/intent_quality.py, benchmarks/README.md): the margin is worth
    # 1.5 points of accuracy on CLINC150; validation accuracy still rises at the third epoch on
    # both datasets, so 4 (the epoch kept is the best on validation accuracy); lr 1e-3 beat 5e-4
    # on validation on both (+0.2 and +0.1 points).
    "classification": {
        "lora": {"target_modules": list(ENCODER_TARGETS)},
        "epochs": 4,
        "learning_rate": 1e-3,
        "head_learning_rate": 1e-3,
        "margin": 0.2,
        "max_grad_norm": None,
        "probe_epochs": 30,
        "warmup_ratio": 0.1,
        "effective_batch_size": 32,
        "micro_batch_size": 32,
        "max_length": 48,
    },
    "regression": {
        "lora": {"target_modules": list(ENCODER_TARGETS)},
        "epochs": 3,
        "learning_rate": 2e-4,
        "head_learning_rate": 1e-3,
        "probe_epochs": 30,
        "warmup_ratio": 0.1,
        "effective_batch_size": 16,
        "micro_batch_size": 16,
        "max_length": 256,
    },
}
PRESETS: dict[str, dict[str, Any]] = {
    "pulse": {},  # the Pulse system's chat defaults, as the fields above
    # The ACCESS assistant's dense preset: a wider adapter on attention only, a gentler rate.
    "access-dense": {
        "lora": {"r": 64, "alpha": 128, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "learning_rate": 2e-5,
    },
}


class TrainingConfigError(ValueError):
    """A training setting that cannot be used; the message names the field."""


def resolve_training_config(
    task: str, family_settings: dict[str, Any] | None = None, run_overrides: dict[str, Any] | None = None
) -> TrainingConfig:
    family_settings = dict(family_settings or {})
    preset = family_settings.get("preset")
    if preset is not None and preset not in PRESETS:
        raise TrainingConfigError(f"training.preset {preset!r} is not one of: {', '.join(PRESETS)}")
    merged: dict[str, Any] = {}
    for layer in (TASK_DEFAULTS.get(task, {}), PRESETS.get(preset or "", {}), family_settings):
        merged = _merge(merged, layer)
    merged = _merge(merged, {k: v for k, v in (run_overrides or {}).items() if v is not None})
    try:
        config = TrainingConfig.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        what = (
            "unknown setting"
            if first["type"] == "extra_forbidden"
            else first["msg"].removeprefix("Value error, ")
        )
        raise TrainingConfigError(f"training.{where}: {what}" if where else f"training: {what}") from None
    if config.objective != "sft" and task != "chat_sft":
        raise TrainingConfigError(
            f"training.objective: {config.objective} trains chat families; a {task} family trains with sft"
        )
    return config


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in layer.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out
