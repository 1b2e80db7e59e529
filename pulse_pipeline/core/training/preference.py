"""The preference stage: DPO or KTO on a chat family's LoRA adapter, with TRL's trainers.

`training.objective` (config.py) says what a chat adapter learns from: `sft` (the recipe alone),
`dpo` or `kto` (this stage alone) or `sft_then_dpo` / `sft_then_kto` (the recipe, then this stage
on its result). The data is the snapshot's preference tables (core/preferences.py: DPO pairs from
corrections and ranked ratings, KTO examples from ratings and thumbs with their weights), the
train rows trained on and the val rows scored at the end.

The losses are TRL's (`DPOTrainer`, `KTOTrainer`), not ours. The adapter starts from the SFT
stage's result, else the champion's weights (`init: champion`), else a fresh LoRA, and **that
starting adapter is the frozen reference**: TRL copies it into a second adapter, `ref`, that is
never trained (a fresh LoRA is the base model). So a continual run from the champion moves away
from the champion only as far as beta allows. Only the trained adapter is saved.

TRL's checkpoints (`<work>/preference/checkpoint-*`, every `checkpoint_every` steps) let a killed
run resume. The stage runs in one process: under torchrun with several it stops with an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pulse_pipeline.core.artifacts import ArtifactStore
    from pulse_pipeline.core.families import FamilyConfig
    from pulse_pipeline.core.training.recipe import Progress, TrainingJob, TrainingResult

PREFERENCE_OBJECTIVES = {"dpo": "dpo", "kto": "kto", "sft_then_dpo": "dpo", "sft_then_kto": "kto"}


@dataclass(frozen=True)
class PreferenceData:
    """A snapshot's preference rows as TRL reads them (conversational), by split."""

    dpo: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # prompt, chosen, rejected
    kto: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # prompt, completion, label
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def rows(self, kind: str, split: str) -> list[dict[str, Any]]:
        return (self.dpo if kind == "dpo" else self.kto).get(split, [])


def read_preference_data(
    artifacts: ArtifactStore, family: FamilyConfig, manifest: dict[str, Any]
) -> PreferenceData:
    """The preference tables of the snapshot `manifest` describes (empty when it has none)."""
    from pulse_pipeline.core import snapshots

    version = manifest["dataset_version"]
    entry = manifest.get("preferences") or {}
    out: dict[str, dict[str, list[dict[str, Any]]]] = {"dpo": {}, "kto": {}}
    for kind in ("dpo", "kto"):
        table = snapshots.read_preferences(artifacts, family.name, version, kind)
        if table is None:
            continue
        for row in table.to_pylist():
            if kind == "dpo":
                item = {
                    "prompt": row["prompt"],
                    "chosen": [{"role": "assistant", "content": row["chosen"]}],
                    "rejected": [{"role": "assistant", "content": row["rejected"]}],
                }
            else:
                item = {
                    "prompt": row["prompt"],
                    "completion": [{"role": "assistant", "content": row["completion"]}],
                    "label": bool(row["label"]),
                }
            out[kind].setdefault(row["split"], []).append(item)
    return PreferenceData(
        out["dpo"],
        out["kto"],
        float(entry.get("kto_desirable_weight") or 1.0),
        float(entry.get("kto_undesirable_weight") or 1.0),
    )


def preference_problem(config: Any, data: PreferenceData | None, family: str, version: str) -> str | None:
    """Why `config.objective` cannot train on this snapshot's preference data (None: it can)."""
    kind = PREFERENCE_OBJECTIVES.get(config.objective)
    if kind is None:
        return None
    train = data.rows(kind, "train") if data is not None else []
    if kind == "dpo" and not train:
        return (
            f"{family}: training.objective {config.objective} needs DPO pairs, and snapshot {version} has none "
            f"in train (corrected answers and several rated answers to one prompt make them)"
        )
    if kind == "kto" and len({row["label"] for row in train}) < 2:
        return (
            f"{family}: training.objective {config.objective} needs desirable and undesirable answers, and "
            f"snapshot {version} has {len(train)} KTO examples in train, all of one kind (thumbs and ratings "
            f"on both sides of preferences.desirable_min_rating / undesirable_max_rating make both)"
        )
    if kind == "kto" and config.micro_batch_size < 2:
        return f"{family}: training.objective {config.objective}: KTO needs micro_batch_size of at least 2"
    return None


def train_preferences(
    job: TrainingJob,
    sft: TrainingResult | None,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_metrics: Callable[[dict[str, float], int], None] | None = None,
) -> TrainingResult:
    """Train the adapter on the snapshot's preferences (DPO or KTO, TRL) and write its folder.

    It starts from `sft`'s adapter (objective sft_then_*), else from the init's champion, else a
    fresh LoRA; the start is the frozen reference. The folder is `sft`'s with the weights replaced,
    or a new one; its metadata gets `objective` and `preference` (the stage's record)."""
    from pulse_pipeline.core.training.config import TrainingConfigError
    from pulse_pipeline.core.training.distributed import world
    from pulse_pipeline.core.training.hardware import plan_for, prepare_device
    from pulse_pipeline.core.training.models import load_for_training, load_tokenizer
    from pulse_pipeline.core.training.recipe import TrainingError, TrainingResult

    started = time.monotonic()
    config, family = job.config, job.family.name
    kind = PREFERENCE_OBJECTIVES[config.objective]
    if world().size > 1:
        raise TrainingError(
            f"{family}: training.objective {config.objective} trains its preference stage in one process; "
            f"run it without torchrun/accelerate launch (or with --nproc_per_node 1)"
        )
    problem = preference_problem(config, job.preferences, family, job.dataset_version)
    if problem:
        raise TrainingError(problem)
    data: PreferenceData = job.preferences  # type: ignore[assignment]
    try:
        plan = plan_for(config, job.base_model.architecture, model_path=job.base_model.path, processes=1)
    except TrainingConfigError as exc:
        raise TrainingError(f"{family}: {exc}") from None
    prepare_device(plan)
    tokenizer = load_tokenizer(job.base_model.path)
    init = job.init
    try:
        model = load_for_training(
            job.base_model, plan, config.lora, gradient_checkpointing=config.gradient_checkpointing,
            merge_from=init.folder if init is not None and init.mode == "merge_champion" else None,
        )  # fmt: skip
        start, reference = _load_start(model, job, sft)
    except TrainingConfigError as exc:
        raise TrainingError(f"{family}: {exc}") from None

    from transformers import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint
    from transformers.utils import logging as transformers_logging

    data, too_long = _fitting(kind, data, tokenizer, config.max_length)
    if not data.rows(kind, "train") or (
        kind == "kto" and len({r["label"] for r in data.rows(kind, "train")}) < 2
    ):
        raise TrainingError(
            f"{family}: training.objective {config.objective}: {too_long} {kind.upper()} train rows are longer "
            f"than training.max_length {config.max_length}, and too few are left to train on: raise max_length"
        )
    trainer = _trainer(kind, job, plan, model, tokenizer, data)
    log = _Log(on_progress, on_metrics, config.preference.epochs)
    trainer.remove_callback(PrinterCallback)  # its lines go to the run's log through `log`
    trainer.add_callback(log.callback())

    work = job.work / "preference"
    resume = get_last_checkpoint(str(work)) if work.is_dir() else None
    trained = trainer.train(resume_from_checkpoint=resume)
    scored = trainer.evaluate() if trainer.eval_dataset is not None else {}
    transformers_logging.disable_progress_bar()  # the trainer turned it back on

    out = sft.folder if sft is not None else job.work / "adapter"
    record = {
        "objective": config.objective,
        "trainer": f"trl.{type(trainer).__name__}",
        "reference": reference,
        "started_from": start,
        "beta": config.preference.beta,
        "epochs": config.preference.epochs,
        "learning_rate": config.preference.learning_rate,
        "train_examples": len(data.rows(kind, "train")),  # those that fit max_length
        "val_examples": len(data.rows(kind, "val")),
        **(
            {"desirable_weight": data.desirable_weight, "undesirable_weight": data.undesirable_weight}
            if kind == "kto"
            else {}
        ),
        "steps": trainer.state.global_step,
        "resumed_from_step": _step_of(resume),
        "first_loss": log.history[0]["loss"] if log.history else None,
        "final_loss": log.history[-1]["loss"] if log.history else None,
        "mean_loss": trained.training_loss,  # over this attempt's steps: steadier than one step's
        "dropped_too_long": too_long,
        "validation": {k.removeprefix("eval_"): v for k, v in scored.items() if "/" in k or k == "eval_loss"},
        "loss_history": log.history,
        "training_time_seconds": round(time.monotonic() - started, 1),
    }
    metadata = _write_folder(job, plan, model, tokenizer, out, sft, record)
    return TrainingResult(out, metadata, sft.resumed_from_step if sft else _step_of(resume), log.history)


def _load_start(model: Any, job: TrainingJob, sft: TrainingResult | None) -> tuple[str, str]:
    """Put the starting weights into the fresh adapter; (what it started from, the reference)."""
    from pulse_pipeline.core.training.config import TrainingConfigError
    from pulse_pipeline.core.training.continual import load_init_weights, lora_mismatch

    init = job.init
    if sft is not None:
        load_init_weights(model, sft.folder)
        return "sft", "the sft stage's adapter"
    if init is not None and init.mode == "champion":
        problem = lora_mismatch(init.folder, job.config.lora)
        if problem:
            raise TrainingConfigError(problem)
        load_init_weights(model, init.folder)
        return f"{init.family}@{init.version}", f"{init.family}@{init.version}"
    if init is not None:  # merge_champion: a fresh LoRA on the merged weights
        return "fresh LoRA", f"base with {init.family}@{init.version} merged"
    return "fresh LoRA", "base"


def _fitting(kind: str, data: PreferenceData, tokenizer: Any, max_length: int) -> tuple[PreferenceData, int]:
    """The rows whose prompt and longest completion fit `max_length` tokens, and how many train rows
    did not: TRL would cut a completion's end (its end-of-turn token too) or drop the row itself."""
    import dataclasses

    def fits(row: dict[str, Any]) -> bool:
        answers = [row["chosen"], row["rejected"]] if kind == "dpo" else [row["completion"]]
        return all(
            len(
                tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=True, return_dict=True)[
                    "input_ids"
                ]
            )
            <= max_length
            for answer in answers
        )

    table = data.dpo if kind == "dpo" else data.kto
    kept = {split: [r for r in rows if fits(r)] for split, rows in table.items()}
    dropped = len(table.get("train", [])) - len(kept.get("train", []))
    return dataclasses.replace(data, **{kind: kept}), dropped


def _trainer(kind: str, job: TrainingJob, plan: Any, model: Any, tokenizer: Any, data: PreferenceData) -> Any:
    """TRL's DPOTrainer or KTOTrainer over the peft `model` (its adapter copied as the reference)."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    config = job.config
    settings = config.preference
    common = {
        "output_dir": str(job.work / "preference"),
        "per_device_train_batch_size": config.micro_batch_size,
        "per_device_eval_batch_size": config.micro_batch_size,
        "gradient_accumulation_steps": config.accumulation_steps,
        "num_train_epochs": settings.epochs,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup_ratio,  # transformers 5: a float below 1 is a share of the steps
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm or 0.0,  # 0: not clipped
        "seed": config.seed,
        "beta": settings.beta,
        "max_length": config.max_length,
        "activation_checkpointing": config.gradient_checkpointing,
        "bf16": plan.precision == "bf16",
        "fp16": plan.precision == "fp16",
        "use_cpu": plan.device == "cpu",
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": config.checkpoint_every,
        "save_total_limit": 1,
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    train = Dataset.from_list(data.rows(kind, "train"))
    val_rows = data.rows(kind, "val")
    if kind == "kto":
        val_rows = val_rows if len({r["label"] for r in val_rows}) == 2 else []
    val = Dataset.from_list(val_rows) if val_rows else None
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common)
        return DPOTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer
        )
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(
        **common, desirable_weight=data.desirable_weight, undesirable_weight=data.undesirable_weight
    )
    return KTOTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer
    )


class _Log:
    """TRL's log lines as the recipe's progress and metrics (the run's MLflow and Dagster logs)."""

    KEEP = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "kl")

    def __init__(
        self,
        on_progress: Callable[[Progress], None] | None,
        on_metrics: Callable[[dict[str, float], int], None] | None,
        epochs: int,
    ):
        self.on_progress, self.on_metrics, self.epochs = on_progress, on_metrics, epochs
        self.history: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def callback(self) -> Any:
        from transformers import TrainerCallback

        log = self

        class Report(TrainerCallback):
            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                if logs and "loss" in logs and "train_loss" not in logs:
                    log.step(state, logs)

        return Report()

    def step(self, state: Any, logs: dict[str, Any]) -> None:
        from pulse_pipeline.core.training.recipe import Progress

        point = {"step": state.global_step, "epoch": float(logs.get("epoch", 0.0))}
        point.update({k: float(logs[k]) for k in (*self.KEEP, "learning_rate") if k in logs})
        self.history.append(point)
        if self.on_metrics:
            metrics = {f"preference_{k.replace('/', '_')}": float(logs[k]) for k in self.KEEP if k in logs}
            self.on_metrics(metrics, state.global_step)
        if self.on_progress:
            elapsed = time.monotonic() - self.started
            total = state.max_steps or state.global_step
            eta = elapsed / max(state.global_step, 1) * (total - state.global_step)
            self.on_progress(
                Progress(
                    state.global_step, total, min(int(point["epoch"]) + 1, self.epochs), self.epochs,
                    point["loss"], point.get("learning_rate", 0.0), 0.0, eta,
                )
            )  # fmt: skip


def _step_of(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None


def _write_folder(
    job: TrainingJob, plan: Any, model: Any, tokenizer: Any, out: Path, sft: TrainingResult | None,
    record: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The trained adapter (not TRL's `ref` copy) in `out`; the metadata with the stage's record."""
    import shutil

    from pulse_pipeline.core.training.recipe import _metadata, plot_loss_curve

    if sft is None:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        tokenizer.save_pretrained(out)
        empty = {"history": [], "epochs": [], "best": None, "step": 0, "tokens": 0, "train_seconds": 0.0}
        metadata = _metadata(job, plan, empty, record["train_examples"], time.monotonic(), None)
        metadata.update(
            samples_used=record["train_examples"],
            epochs=record["epochs"],
            training_loss=record["mean_loss"],
            training_time_seconds=record["training_time_seconds"],
            steps=record["steps"],
            selected="fine_tune",
            floor=None,
        )
        metadata["hardware"]["processes"] = 1
    else:
        metadata = dict(sft.metadata)
        metadata["training_time_seconds"] = round(
            (metadata.get("training_time_seconds") or 0.0) + record["training_time_seconds"], 1
        )
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        (out / name).unlink(missing_ok=True)
    model.save_pretrained(out, selected_adapters=["default"])
    metadata["objective"] = record["objective"]
    metadata["preference"] = record
    (out / "training_metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    if sft is None:
        plot_loss_curve(
            [{"step": p["step"], "epoch": p["epoch"], "loss": p["loss"]} for p in record["loss_history"]],
            [],
            out / "loss_curve.png",
            title=f"{job.family.name} ({job.dataset_version}, {record['objective']})",
        )
    return metadata
