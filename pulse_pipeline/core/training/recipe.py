"""The training recipe: setup -> train -> validate -> save, for one family's dataset snapshot.

`train(job)` is plain PyTorch, readable top to bottom, and knows nothing of Dagster, MLflow or
where the adapter will be published: it takes the snapshot's train and val examples and
writes a complete adapter folder under the job's work folder. `pulse_pipeline.core.training.
runner` wraps it with the snapshot, the registry and MLflow.

- chat_sft: causal LM, chat template applied, loss on the assistant's tokens only, each
  example's loss weighted by its weight (losses.weighted_causal_lm_loss).
- classification / regression: encoder + head (heads.py); the head is fitted on frozen
  embeddings first (`probe_epochs`), then LoRA on the body and the head train together.

Batches are length-grouped and padded to their own longest example (never to max_length),
or packed into one row per batch with per-example boundaries (`packing: true`). A checkpoint
is written every `checkpoint_every` optimizer steps and at each epoch end; running the same
job again resumes from the newest one.

What is saved is the best on validation (`better_on_validation`): the epoch with the highest
validation accuracy (classification), the lowest MAE (regression) or the lowest loss (chat).
A classification family also fits its frozen-encoder floor (floor.py: a logistic regression on
the frozen embeddings, computed once with the probe's) and publishes it instead, as a linear
head on an unchanged encoder, when no fine-tuned epoch beats it on validation: a fine-tune is
never worse than no fine-tune. `training_metadata.json` says which (`selected`, `floor`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.core.training import checkpoints
from pulse_pipeline.core.training.base_models import BaseModel
from pulse_pipeline.core.training.batching import (
    chat_features,
    collate,
    collate_text,
    length_grouped_batches,
    pack,
    text_features,
    token_budget_batches,
)
from pulse_pipeline.core.training.config import TrainingConfig, TrainingConfigError
from pulse_pipeline.core.training.distributed import (
    World,
    accumulating,
    barrier,
    sum_all,
    take_even_turn,
    take_turn,
    world,
    wrap,
)
from pulse_pipeline.core.training.hardware import Plan, describe, library_versions, plan_for, prepare_device
from pulse_pipeline.core.training.losses import (
    IGNORE,
    weighted_causal_lm_loss,
    weighted_classification_loss,
    weighted_regression_loss,
)

if TYPE_CHECKING:
    from pulse_pipeline.core.training.continual import InitAdapter
    from pulse_pipeline.core.training.heads import HeadConfig
    from pulse_pipeline.core.training.preference import PreferenceData


class TrainingError(RuntimeError):
    """The training cannot run as asked; the message says why."""


@dataclass
class TrainingJob:
    family: FamilyConfig
    config: TrainingConfig
    dataset_version: str
    train: list[dict[str, Any]]  # the snapshot's examples in the export shape (snapshots.read_split)
    val: list[dict[str, Any]]
    base_model: BaseModel
    work_root: Path  # checkpoints go to work_root/<family>/<run_key>/
    init: InitAdapter | None = None  # the adapter a continual run starts from (continual.py)
    preferences: PreferenceData | None = None  # objective dpo/kto/sft_then_*: the snapshot's (preference.py)

    @property
    def key(self) -> str:
        return checkpoints.run_key(
            {
                "family": self.family.name,
                "task": self.family.task.value,
                "dataset_version": self.dataset_version,
                "base_model": self.base_model.name,
                "config": self.config.model_dump(mode="json"),
                "labels": list(self.family.labels or ()),
                "dimensions": list(self.family.dimensions or ()),
                **({"init": self.init.describe()} if self.init else {}),
            }
        )

    @property
    def work(self) -> Path:
        return self.work_root / self.family.name / self.key


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: int  # 1-based
    epochs: int
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float


@dataclass
class TrainingResult:
    folder: Path  # the complete adapter folder (weights, tokenizer, head, metadata, loss curve)
    metadata: dict[str, Any]
    resumed_from_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Session:
    """One training run as `setup` builds it: what the other steps read and advance.

    `loop` is the run's place and record (step, epoch, batches done in it, tokens, seconds,
    per-step history, per-epoch records, the best epoch): what a checkpoint saves and restores.
    """

    job: TrainingJob
    world: World
    plan: Plan
    tokenizer: Any
    head: HeadConfig | None
    train_set: list[Any]
    val_set: list[Any]
    model: Any  # the peft model
    step_model: Any  # what a training step calls: the model, DDP around it, or the model sharded by FSDP
    optimizer: Any  # over the trainable parameters, once the model is wrapped (setup)
    scheduler: Any
    scaler: Any
    total_steps: int
    loop: dict[str, Any]
    floor: Any = None  # classification: the frozen-encoder floor (rank 0)
    resumed_from: int | None = None
    started: float = 0.0

    @property
    def config(self) -> TrainingConfig:
        return self.job.config

    @property
    def task(self) -> str:
        return self.job.family.task.value

    @property
    def sharded(self) -> bool:
        """FSDP: every process holds a shard, so gathering the weights takes all of them."""
        return self.plan.data_parallel == "fsdp"

    @property
    def sentence(self) -> Any:
        """The model under the adapter (encoder families: encoder and head)."""
        return self.model.get_base_model()


def train(
    job: TrainingJob,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_metrics: Callable[[dict[str, float], int], None] | None = None,
) -> TrainingResult:
    """Setup, then per epoch fit and validate, then keep the best and save: the recipe, run in
    this process or (under torchrun / accelerate launch) in each of the launcher's processes.
    A chat family's `objective` other than sft adds the preference stage (preference.py) after
    it (sft_then_dpo, sft_then_kto) or trains with that stage alone (dpo, kto)."""
    objective = job.config.objective
    result = None
    if objective in ("sft", "sft_then_dpo", "sft_then_kto"):
        session = setup(job)
        for epoch in range(session.loop["epoch"], job.config.epochs):
            fit_epoch(session, epoch, on_progress=on_progress, on_metrics=on_metrics)
            end_epoch(session, epoch, validate(session), on_metrics=on_metrics)
        selected = keep_best(session)
        result = save(session, selected)
        if objective == "sft":
            return result
    from pulse_pipeline.core.training.preference import train_preferences

    return train_preferences(job, result, on_progress=on_progress, on_metrics=on_metrics)


def setup(job: TrainingJob) -> Session:
    """Tokenize the splits, load the base model with a fresh adapter, then either restore the
    newest checkpoint's weights or fit the head and the floor on the frozen encoder (rank 0);
    wrap the model for several processes (distributed.wrap: DDP or FSDP, each process starting
    from rank 0's weights), and build the optimizer and schedule over what a step trains
    (restoring their state on resume)."""
    import torch

    from pulse_pipeline.core.training.floor import Floor
    from pulse_pipeline.core.training.models import load_for_training, load_tokenizer

    started = time.monotonic()
    config, task, here = job.config, job.family.task.value, world()
    torch.manual_seed(config.seed + here.rank)  # each process its own dropout
    try:
        plan = plan_for(
            config, job.base_model.architecture, model_path=job.base_model.path, processes=here.size
        )
    except TrainingConfigError as exc:
        raise TrainingError(f"{job.family.name}: {exc}") from None
    prepare_device(plan)
    if task == "chat_sft" and job.base_model.architecture == "encoder":
        raise TrainingError(
            f"{job.family.name}: base model {job.base_model.name} is an encoder; chat needs a causal LM"
        )
    if task != "chat_sft" and config.packing:
        raise TrainingError(f"{job.family.name}: training.packing applies to chat families only")
    tokenizer = load_tokenizer(job.base_model.path)
    head = head_config(job)
    train_set = encode_examples(
        job, tokenizer, job.train[: config.max_samples] if config.max_samples else job.train
    )
    val_set = encode_examples(job, tokenizer, job.val)
    if not train_set:
        raise TrainingError(f"{job.family.name}: no training examples in snapshot {job.dataset_version}")
    init = job.init
    if init is not None and init.mode == "champion":
        from pulse_pipeline.core.training.continual import lora_mismatch

        problem = lora_mismatch(init.folder, config.lora)
        if problem:
            raise TrainingError(f"{job.family.name}: {problem}")
    try:
        model = load_for_training(
            job.base_model, plan, config.lora, head=head, gradient_checkpointing=config.gradient_checkpointing,
            merge_from=init.folder if init is not None and init.mode == "merge_champion" else None,
        )  # fmt: skip
    except TrainingConfigError as exc:
        raise TrainingError(f"{job.family.name}: {exc}") from None
    total_steps = math.ceil(len(train_set) / config.effective_batch_size) * config.epochs
    session = Session(
        job, here, plan, tokenizer, head, train_set, val_set, model, step_model=model,
        optimizer=None, scheduler=None,
        scaler=torch.amp.GradScaler("cuda") if plan.precision == "fp16" else None,
        total_steps=total_steps,
        loop={"step": 0, "epoch": 0, "group": 0, "tokens": 0, "train_seconds": 0.0, "history": [],
              "epochs": [], "best": None},
        started=started,
    )  # fmt: skip
    job.work.mkdir(parents=True, exist_ok=True)
    found = checkpoints.latest(job.work)
    if found is not None:
        checkpoints.restore_weights(found, model)
        session.floor = Floor.load(job.work) if here.is_main else None
    else:
        if head is not None and here.is_main:  # the floor is the frozen base's, whatever the start
            session.floor = fit_on_frozen_encoder(session)
        if init is not None and init.mode == "champion":
            from pulse_pipeline.core.training.continual import load_init_weights

            try:
                load_init_weights(model, init.folder)
            except TrainingConfigError as exc:
                raise TrainingError(f"{job.family.name}: {exc}") from None
    session.step_model = wrap(here, plan, model)
    session.optimizer = _optimizer(model, config)  # over the wrapped model's parameters (FSDP's shards)
    session.scheduler = _scheduler(session.optimizer, config, total_steps)
    if found is not None:
        session.loop = checkpoints.restore_training_state(found, model, session.optimizer, session.scheduler)
        session.resumed_from = session.loop["step"]
        session.started -= session.loop["train_seconds"]  # the interrupted attempt's time counts too
    return session


def fit_on_frozen_encoder(session: Session) -> Any:
    """Before any LoRA step: one pass of the frozen encoder over train (and val), shared by the
    head's linear probe and the family's floor (classification; None otherwise)."""
    from pulse_pipeline.core.training.models import restore_4bit_for_training

    config, head, model, task = session.config, session.head, session.model, session.task
    pad_id = session.tokenizer.pad_token_id
    floor = None
    frozen = embed_frozen(model, session.train_set, session.plan, pad_id)
    if head.kind == "cosine" and config.probe_epochs:  # type: ignore[union-attr]
        fit_head_on_frozen_embeddings(model, frozen, config)
    if task == "classification" and (session.val_set or head.kind == "linear"):  # type: ignore[union-attr]
        val_set = session.val_set
        val_frozen = embed_frozen(model, val_set, session.plan, pad_id) if val_set else None
        floor = fit_floor_on_frozen_embeddings(head, frozen, val_frozen)  # type: ignore[arg-type]
        floor.save(session.job.work)
        if head.kind == "linear":  # type: ignore[union-attr]
            copy_floor_into(session.sentence.head, floor)
    if session.plan.quantization == "4bit":
        restore_4bit_for_training(model)
    return floor


def forward(session: Session, batch: list[Any], model: Any) -> tuple[Any, Any, int]:
    """Loss and outputs of one micro-batch through `model` (weighted loss), and its real
    (unpadded) token count."""
    import torch

    config, plan, task, pad_id = session.config, session.plan, session.task, session.tokenizer.pad_token_id
    with torch.autocast(plan.device, dtype=plan.dtype, enabled=plan.autocast):
        if task == "chat_sft":
            if plan.packing:
                b = _to(pack(batch), plan.device)
                out = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
            else:
                b = _to(collate(batch, pad_id, plan.pad_multiple), plan.device)
                out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss = weighted_causal_lm_loss(out, b["labels"], b["weights"])
        else:
            b = _to(collate_text(batch, pad_id, plan.pad_multiple), plan.device)
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            if task == "classification":
                cosine = session.head.kind == "cosine"  # type: ignore[union-attr]
                training = session.model.training and cosine
                margin = config.margin * session.sentence.head.log_scale.exp() if training else 0.0
                smoothing = config.label_smoothing if session.model.training else 0.0
                loss = weighted_classification_loss(out, b["targets"], b["weights"], margin, smoothing)
            else:
                loss = weighted_regression_loss(out, b["targets"], b["weights"])
            out = (out.float(), b["targets"])
    return loss, out, sum(len(f) for f in batch)


def fit_epoch(
    session: Session,
    epoch: int,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_metrics: Callable[[dict[str, float], int], None] | None = None,
) -> None:
    """One pass over the train split (from where a resumed run stopped), an optimizer step per
    group of micro-batches, a checkpoint every `checkpoint_every` steps.

    A step's micro-batches (`step_groups`) are the same whatever the number of processes; each
    process takes its turn of them (distributed.take_turn) and DDP averages the gradients, so a
    step sees the same examples and the same gradient as in one process."""
    import torch

    config, loop, model = session.config, session.loop, session.model
    groups = step_groups(session, epoch)
    model.train()
    segment_start, segment_tokens = time.monotonic(), 0
    for g in range(loop["group"], len(groups)):
        step_loss, tokens = _accumulate(session, groups[g])
        if session.scaler:
            session.scaler.unscale_(session.optimizer)
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], config.max_grad_norm
            )
        if session.scaler:
            session.scaler.step(session.optimizer)
            session.scaler.update()
        else:
            session.optimizer.step()
        lr = session.scheduler.get_last_lr()[0]
        session.scheduler.step()
        session.optimizer.zero_grad(set_to_none=True)
        loop["step"] += 1
        segment_tokens += tokens
        elapsed = loop["train_seconds"] + time.monotonic() - segment_start
        tokens_done = loop["tokens"] + segment_tokens
        rate = tokens_done / elapsed if elapsed > 0 else 0.0
        loop["history"].append(
            {"step": loop["step"], "epoch": epoch + 1, "loss": step_loss, "learning_rate": lr, "tokens_per_second": rate}
        )  # fmt: skip
        if on_metrics:
            on_metrics({"loss": step_loss, "learning_rate": lr, "tokens_per_second": rate}, loop["step"])
        if on_progress and (loop["step"] % config.log_every == 0 or loop["step"] == session.total_steps):
            done = max(loop["step"] - (session.resumed_from or 0), 1)
            eta = elapsed / done * (session.total_steps - loop["step"])
            on_progress(
                Progress(
                    loop["step"], session.total_steps, epoch + 1, config.epochs, step_loss, lr, rate, eta
                )
            )
        if loop["step"] % config.checkpoint_every == 0 and g + 1 < len(groups):
            loop.update(epoch=epoch, group=g + 1, tokens=tokens_done, train_seconds=elapsed)
            _checkpoint(session)
            segment_start, segment_tokens = time.monotonic(), 0  # saving is not training time
    elapsed = loop["train_seconds"] + time.monotonic() - segment_start
    loop.update(tokens=loop["tokens"] + segment_tokens, train_seconds=elapsed)


def step_groups(session: Session, epoch: int) -> list[list[list[int]]]:
    """The epoch's optimizer steps, each a list of micro-batches (indices into the train split):
    length-grouped micro-batches of `micro_batch_size` examples, `accumulation_steps` a step; or,
    with a token budget (`plan.batch_tokens`, CUDA), length-grouped steps of
    `effective_batch_size` examples each cut into micro-batches of at most that many tokens."""
    config, plan = session.config, session.plan
    lengths = [len(f) for f in session.train_set]
    if plan.batch_tokens:
        steps = length_grouped_batches(lengths, config.effective_batch_size, seed=config.seed, epoch=epoch)
        return [token_budget_batches(step, lengths, plan.batch_tokens, plan.pad_multiple) for step in steps]
    batches = length_grouped_batches(lengths, config.micro_batch_size, seed=config.seed, epoch=epoch)
    accumulation = config.accumulation_steps
    return [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]


def _accumulate(session: Session, group: list[list[int]]) -> tuple[float, int]:
    """Forward and backward of this process's turn of one step's micro-batches, each loss scaled
    so that the gradients add up (over micro-batches and DDP's average over processes) to the
    step's mean: by its share of the step's micro-batches, or of its examples when a token
    budget makes them uneven; returns the step's loss and tokens over all processes."""
    here, scaler = session.world, session.scaler
    examples = sum(len(mb) for mb in group)
    shares = [len(mb) / examples if session.plan.batch_tokens else 1 / len(group) for mb in group]
    turns = list(zip(group, shares, strict=True))
    # Fewer micro-batches than processes at the epoch's end: join the gradient sum with 0. Under
    # FSDP every process runs as many as the others (distributed.take_even_turn).
    if session.plan.data_parallel == "fsdp":
        mine = take_even_turn(here, turns, (group[0], 0.0))
    else:
        mine = take_turn(here, turns) or [(group[0], 0.0)]
    step_loss, tokens = 0.0, 0
    for i, (idx, share) in enumerate(mine):
        with accumulating(here, session.step_model, sync=i == len(mine) - 1):
            loss, _, n = forward(session, [session.train_set[j] for j in idx], session.step_model)
            loss = loss * (share * here.size)
            (scaler.scale(loss) if scaler else loss).backward()
        if share:
            step_loss += float(loss.detach()) / here.size
            tokens += n
    if here.distributed:
        step_loss, tokens = sum_all(here, [step_loss, float(tokens)])
    return step_loss, int(tokens)


def validate(session: Session) -> dict[str, float]:
    """Validation loss (and accuracy or MAE) over the whole val split, in eval mode, each process
    taking its turn of the batches."""
    import torch

    from pulse_pipeline.core.training.models import restore_4bit_for_training

    config, head, task, model, val_set = (
        session.config,
        session.head,
        session.task,
        session.model,
        session.val_set,
    )
    model.eval()
    num = den = correct = abs_err = 0.0
    with torch.no_grad():
        batches = length_grouped_batches([len(f) for f in val_set], config.micro_batch_size, seed=0)
        if session.plan.data_parallel == "fsdp":
            mine = take_even_turn(session.world, batches, None)
        else:
            mine = take_turn(session.world, batches)
        for idx in mine:
            if idx is None:  # FSDP: a pass to keep step with the others, not counted
                forward(session, [val_set[i] for i in batches[0]], model)
                continue
            batch = [val_set[i] for i in idx]
            loss, out, _ = forward(session, batch, model)
            w = sum(f.weight for f in batch)
            num, den = num + float(loss) * w, den + w
            if task == "classification":
                correct += float((out[0].argmax(-1) == out[1]).sum())
            elif task == "regression":
                span = head.score_range[1] - head.score_range[0]  # type: ignore[union-attr]
                abs_err += float((out[0] - out[1]).abs().mean(-1).sum()) * span
    num, den, correct, abs_err = sum_all(session.world, [num, den, correct, abs_err])
    model.train()
    if session.plan.quantization == "4bit":
        restore_4bit_for_training(model)  # see models.restore_4bit_for_training
    metrics = {"val_loss": num / den} if den else {}  # no val split: the last epoch is kept
    if task == "classification" and val_set:
        metrics["val_accuracy"] = correct / len(val_set)
    if task == "regression" and val_set:
        metrics["val_mae"] = abs_err / len(val_set)
    return metrics


def end_epoch(
    session: Session,
    epoch: int,
    metrics: dict[str, float],
    *,
    on_metrics: Callable[[dict[str, float], int], None] | None = None,
) -> None:
    """Record the epoch, keep its weights if it is the best on validation so far, checkpoint."""
    loop, work, main = session.loop, session.job.work, session.world.is_main
    epoch_loss = [p["loss"] for p in loop["history"] if p["epoch"] == epoch + 1]
    record = {"epoch": epoch + 1, "train_loss": sum(epoch_loss) / max(len(epoch_loss), 1), **metrics}
    loop["epochs"].append(record)
    if on_metrics:
        on_metrics({k: v for k, v in record.items() if k != "epoch"}, loop["step"])
    if (
        not session.val_set
        or loop["best"] is None
        or better_on_validation(session.task, metrics, loop["best"])
    ):
        loop["best"] = {"epoch": epoch + 1, **metrics}
        if main or session.sharded:
            checkpoints.save_best(work, session.model, write=main)
    loop.update(epoch=epoch + 1, group=0)
    _checkpoint(session)
    barrier(session.world)  # a process that resumes finds this epoch's checkpoint written


def keep_best(session: Session) -> str:
    """Load what is published: the best fine-tuned epoch on validation, or the frozen-encoder
    floor when no epoch beats it (classification). Returns which: "fine_tune" or "floor"."""
    loop = session.loop
    if session.floor is not None and floor_wins(session.floor, loop["best"]):
        session.model, session.head = floor_model(session.job, session.plan, session.head, session.floor)  # type: ignore[arg-type]
        return "floor"
    if (
        loop["best"]
        and loop["best"]["epoch"] != session.config.epochs
        and (session.world.is_main or session.sharded)
    ):
        checkpoints.load_best(session.job.work, session.model)
    return "fine_tune"


def save(session: Session, selected: str) -> TrainingResult:
    """Write the adapter folder (rank 0): weights, tokenizer, head, floor, metadata, loss curve."""
    job, loop, floor = session.job, session.loop, session.floor
    out = job.work / "adapter"
    metadata = _metadata(
        job, session.plan, loop, len(session.train_set), session.started, session.resumed_from
    )
    metadata["selected"] = selected  # what was published: "fine_tune" (best_epoch) or "floor"
    metadata["floor"] = floor.describe() if floor is not None else None
    metadata["hardware"]["processes"] = session.world.size
    # Under FSDP the weights are gathered from every process's shard first.
    weights = checkpoints.trainable_state(session.model) if session.sharded else None
    if session.world.is_main:
        if out.exists():
            import shutil

            shutil.rmtree(out)
        out.mkdir(parents=True)
        session.model.save_pretrained(out, state_dict=weights)
        session.tokenizer.save_pretrained(out)
        if session.head is not None:
            session.head.save(out)
        if floor is not None:
            floor.save(out)  # the family's floor travels with the version: the evaluation compares with it
        (out / "training_metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        plot_loss_curve(
            loop["history"],
            loop["epochs"],
            out / "loss_curve.png",
            title=f"{job.family.name} ({job.dataset_version})",
        )
    barrier(session.world)
    return TrainingResult(out, metadata, session.resumed_from, loop["history"])


# -- pieces of the recipe ------------------------------------------------------------------------

# What picks the epoch that is kept: the family's main measure on validation, not the loss, which
# keeps falling (or rising) for reasons accuracy does not share. (Name, higher is better.)
SELECTED_ON = {"classification": "val_accuracy", "regression": "val_mae", "chat_sft": "val_loss"}
_HIGHER_IS_BETTER = {"val_accuracy"}


def _checkpoint(session: Session) -> None:
    """Write a checkpoint of the run's place (rank 0; under FSDP all gather, rank 0 writes)."""
    if session.world.is_main or session.sharded:
        checkpoints.save(
            session.job.work, session.model, session.optimizer, session.scheduler, session.loop,
            write=session.world.is_main,
        )  # fmt: skip


def better_on_validation(task: str, metrics: dict[str, float], best: dict[str, Any]) -> bool:
    """Whether an epoch's validation `metrics` beat the best epoch's: on the task's main measure
    (SELECTED_ON), a tie going to the lower validation loss."""
    name = SELECTED_ON[task]
    if name not in metrics or best.get(name) is None:
        name = "val_loss"
    now, then = metrics[name], best[name]
    if now == then:
        return metrics.get("val_loss", 0.0) < best.get("val_loss", 0.0)
    return now > then if name in _HIGHER_IS_BETTER else now < then


def head_config(job: TrainingJob) -> HeadConfig | None:
    """The head an encoder family trains (None for chat): its labels or dimensions."""
    from pulse_pipeline.core.training.heads import HeadConfig  # imports torch: not at module load

    task = job.family.task.value
    if task == "chat_sft":
        return None
    hidden = json.loads((job.base_model.path / "config.json").read_text())["hidden_size"]
    if task == "classification":
        return HeadConfig(
            "classification", hidden, labels=list(job.family.labels or ()), kind=job.config.head
        )
    return HeadConfig(
        "regression",
        hidden,
        dimensions=list(job.family.dimensions or ()),
        score_range=tuple(job.family.score_range),
    )


def encode_examples(job: TrainingJob, tokenizer: Any, examples: list[dict[str, Any]]) -> list[Any]:
    """Token ids and targets of each example; an example that cannot be used is an error naming it."""
    config, family = job.config, job.family
    if family.task.value == "chat_sft":
        out = []
        for example in examples:
            f = chat_features(tokenizer, example["messages"], float(example["weight"]), config.max_length)
            if f is None:
                raise TrainingError(
                    f"example {example['id']}: the answer alone is longer than max_length "
                    f"{config.max_length}; raise training.max_length"
                )
            out.append(f)
        return out
    if family.task.value == "classification":
        index = {label: i for i, label in enumerate(family.labels or ())}
        targets = []
        for example in examples:
            if example["label"] not in index:
                raise TrainingError(
                    f"example {example['id']}: label {example['label']!r} is not in the family's labels"
                )
            targets.append(index[example["label"]])
    else:
        lo, hi = family.score_range
        targets = [[(float(v) - lo) / (hi - lo) for v in example["labels"]] for example in examples]
    return text_features(
        tokenizer, [e["text"] for e in examples], targets, [e["weight"] for e in examples], config.max_length
    )


def _optimizer(model: Any, config: TrainingConfig) -> Any:
    import torch

    body = [p for n, p in model.named_parameters() if p.requires_grad and ".head." not in n]
    head = [p for n, p in model.named_parameters() if p.requires_grad and ".head." in n]
    groups = [{"params": body, "lr": config.learning_rate}]
    if head:
        groups.append({"params": head, "lr": config.head_learning_rate or config.learning_rate})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _scheduler(optimizer: Any, config: TrainingConfig, total_steps: int) -> Any:
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[config.lr_scheduler]
    warmup = math.ceil(config.warmup_ratio * total_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def embed_frozen(model: Any, features: list[Any], plan: Plan, pad_id: int) -> tuple[Any, Any, Any]:
    """(embeddings, targets, weights) of `features` through the frozen encoder, in their order.
    Called before any LoRA step, when the fresh adapter changes nothing."""
    import torch

    sentence = model.get_base_model()
    sentence.eval()
    x, y, w = [None] * len(features), [None] * len(features), [None] * len(features)
    with torch.no_grad():
        for idx in length_grouped_batches([len(f) for f in features], 256, seed=0):
            b = _to(collate_text([features[i] for i in idx], pad_id), plan.device)
            with torch.autocast(plan.device, dtype=plan.dtype, enabled=plan.autocast):
                e = sentence.embed(b["input_ids"], b["attention_mask"]).float()
            for row, i in enumerate(idx):
                x[i], y[i], w[i] = e[row], b["targets"][row], b["weights"][row]
    sentence.train()
    return torch.stack(x), torch.stack(y), torch.stack(w)  # type: ignore[arg-type]


def fit_floor_on_frozen_embeddings(
    head: HeadConfig, train: tuple[Any, Any, Any], val: tuple[Any, Any, Any] | None
) -> Any:
    """The family's frozen-encoder floor (floor.py), from the embeddings `embed_frozen` made
    (without validation embeddings: the default C, and no validation accuracy to compare)."""
    from pulse_pipeline.core.training.floor import fit_floor

    labels = head.labels
    x, y, w = train
    return fit_floor(
        labels,
        x.cpu().numpy(),
        [labels[i] for i in y.tolist()],
        train_weights=w.cpu().numpy(),
        val_x=val[0].cpu().numpy() if val is not None else None,
        val_y=[labels[i] for i in val[1].tolist()] if val is not None else None,
    )


def copy_floor_into(layer: Any, floor: Any) -> None:
    """Set a linear head (nn.Linear over the embedding) to the floor's weights."""
    import torch

    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(floor.weight))
        layer.bias.copy_(torch.from_numpy(floor.bias))


def floor_wins(floor: Any, best: dict[str, Any] | None) -> bool:
    """Whether the floor beats the best fine-tuned epoch on validation accuracy (a tie keeps the
    fine-tune: it is not worse, and what the family asked for)."""
    if floor.val_accuracy is None:
        return False
    return best is None or best.get("val_accuracy") is None or floor.val_accuracy > best["val_accuracy"]


def floor_model(job: TrainingJob, plan: Plan, head: HeadConfig, floor: Any) -> tuple[Any, HeadConfig]:
    """A fresh adapter (its LoRA changes nothing) with a linear head holding the floor's weights:
    published like any adapter, it answers exactly as the floor does."""
    import dataclasses

    from pulse_pipeline.core.training.models import load_for_training

    linear = dataclasses.replace(head, kind="linear")
    model = load_for_training(job.base_model, plan, job.config.lora, head=linear)
    copy_floor_into(model.get_base_model().head, floor)
    return model, linear


def fit_head_on_frozen_embeddings(model: Any, frozen: tuple[Any, Any, Any], config: TrainingConfig) -> None:
    """Linear probing first: on the train split's frozen embeddings (`embed_frozen`), start the
    head from the data (class means, or the mean score), then fit the head alone on them."""
    import torch

    sentence = model.get_base_model()
    x, y, w = frozen
    head = sentence.head
    classification = y.dtype == torch.long
    with torch.no_grad():
        if classification:
            head.init_from_means(x, y)
        else:
            head.weight.zero_()
            head.bias.copy_(y.mean(dim=0))
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=10 * (config.head_learning_rate or config.learning_rate)
    )
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = weighted_classification_loss if classification else weighted_regression_loss
    for _ in range(config.probe_epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 256):
            i = order[start : start + 256].to(x.device)
            loss = loss_fn(head(x[i]), y[i], w[i])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def _metadata(
    job: TrainingJob, plan: Plan, loop: dict[str, Any], samples: int, started: float, resumed_from: int | None
) -> dict[str, Any]:
    import datetime as dt

    config = job.config
    history = loop["history"]
    last_epoch = loop["epochs"][-1] if loop["epochs"] else {}
    return {
        # The Pulse system's fields
        "adapter_name": job.family.name,
        "version": None,  # set when the adapter is published under its version name
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "base_model": job.base_model.name,
        "samples_used": samples,
        "epochs": config.epochs,
        "training_loss": last_epoch.get("train_loss"),
        "training_time_seconds": round(time.monotonic() - started, 1),
        "lora_config": config.lora.model_dump(mode="json"),
        "init": job.init.describe() if job.init else {"mode": "base"},
        # And what makes the adapter reproducible and comparable
        "family": job.family.name,
        "task": job.family.task.value,
        "dataset_version": job.dataset_version,
        "base_model_path": str(job.base_model.path),
        "validation_loss": last_epoch.get("val_loss"),
        "best_epoch": loop["best"]["epoch"] if loop["best"] else None,
        "best_validation_loss": loop["best"].get("val_loss") if loop["best"] else None,
        "selected_on": SELECTED_ON[job.family.task.value],
        "best_validation": {k: v for k, v in loop["best"].items() if k != "epoch"} if loop["best"] else None,
        "epoch_history": loop["epochs"],
        "loss_history": [{k: p[k] for k in ("step", "epoch", "loss", "learning_rate")} for p in history],
        "steps": loop["step"],
        "train_tokens": loop["tokens"],
        "tokens_per_second": round(loop["tokens"] / loop["train_seconds"], 1)
        if loop["train_seconds"]
        else None,
        "val_samples": len(job.val),
        "resumed_from_step": resumed_from,
        "run_key": job.key,
        "hardware": {
            **describe(),
            "device": plan.device,
            "precision": plan.precision,
            "quantization": plan.quantization,
            "attention": plan.attention,
            "batch_tokens": plan.batch_tokens,
            "pad_multiple": plan.pad_multiple,
            "packing": plan.packing,
            "data_parallel": plan.data_parallel,  # several processes: ddp or fsdp
            "choices": plan.choices,  # what was chosen and why (hardware.py)
        },
        "library_versions": library_versions(),
        "resolved_config": config.model_dump(mode="json"),
    }


def plot_loss_curve(
    history: list[dict[str, Any]], epochs: list[dict[str, Any]], path: Path, *, title: str
) -> None:
    """Training loss per step and validation loss per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if history:
        ax.plot(
            [p["step"] for p in history], [p["loss"] for p in history], label="training loss", linewidth=1
        )
    validated = [e for e in epochs if "val_loss" in e]
    if validated and history:
        ends = {p["epoch"]: p["step"] for p in history}
        xs = [ends.get(e["epoch"], 0) for e in validated]
        ax.plot(xs, [e["val_loss"] for e in validated], "o-", label="validation loss (epoch end)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("weighted loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


__all__ = ["IGNORE", "Progress", "TrainingError", "TrainingJob", "TrainingResult", "train"]
