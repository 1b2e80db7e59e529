"""The recipe's processes when it runs under `torchrun` or `accelerate launch`.

Both launchers start one process per device and tell each its place through the environment
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`); `world()` reads it and
joins the process group (gloo on CPU, NCCL on CUDA) the first time. Without a launcher it is a
world of one process and every collective below does nothing, so the one-process path is the
same code with no torch.distributed in it.

How the work is shared (recipe.py):
- an optimizer step takes the same examples whatever the world size: the epoch's
  length-grouped micro-batches are cut into groups of `effective_batch_size / micro_batch_size`
  and process r takes micro-batches r, r + N, ... of each group, so the loss curve matches one
  process with the same global batch, and a checkpoint written by N processes resumes on M;
- gradients are averaged by DistributedDataParallel (DDP), each process holding the whole model;
  or, for a causal LM too large for one device, FSDP2 (`fully_shard` on each decoder layer, then
  the model) keeps a shard of every weight, gradient and optimizer state in each process and
  gathers a layer's weights only while it runs (hardware.py decides which: `data_parallel`);
- validation batches are shared out and the sums added up;
- rank 0 alone fits the frozen-encoder floor (its weights are copied to the others when the
  model is wrapped), writes checkpoints and the adapter, and (runner.py) records, publishes and
  logs to MLflow. Under FSDP the others join in gathering what it writes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def describe(self) -> dict[str, Any]:
        return {"processes": self.size, "backend": backend() if self.distributed else None}


def world() -> World:
    """This process's place, from the launcher's environment (joining the process group once)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    here = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(here.local_rank)
        dist.init_process_group(backend=backend())
    return here


def backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def barrier(here: World) -> None:
    if here.distributed:
        import torch.distributed as dist

        dist.barrier()


def sum_all(here: World, values: list[float]) -> list[float]:
    """`values` added up over every process (as float64), in order."""
    if not here.distributed:
        return values
    import torch
    import torch.distributed as dist

    device = "cuda" if backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def from_main(here: World, value: Any) -> Any:
    """Rank 0's `value` (anything picklable), on every process."""
    if not here.distributed:
        return value
    import torch.distributed as dist

    box = [value if here.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first(here: World) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a model cache), then the others."""
    if not here.is_main:
        barrier(here)
    yield
    if here.is_main:
        barrier(here)


def take_turn(here: World, items: list[Any]) -> list[Any]:
    """This process's share of `items`: items rank, rank + size, ..."""
    return items[here.rank :: here.size]


def wrap(here: World, plan: Any, model: Any) -> Any:
    """What a training step calls in this process: the model itself in a world of one; DDP
    around it; or, with `plan.data_parallel == "fsdp"`, the same model sharded in place. Each
    process starts from rank 0's trainable weights (DDP broadcasts them as it wraps)."""
    if not here.distributed:
        return model
    if plan.data_parallel != "fsdp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from pulse_pipeline.core.training.checkpoints import load_trainable_state, trainable_state

    main = from_main(here, trainable_state(model) if here.is_main else None)
    if not here.is_main:
        load_trainable_state(model, main)
    # Compute in the plan's dtype, gradients reduced in fp32 (the adapter's weights stay fp32).
    policy = MixedPrecisionPolicy(
        param_dtype=plan.dtype if plan.autocast else None,
        reduce_dtype=torch.float32 if plan.autocast else None,
    )
    layers = set(getattr(model.get_base_model(), "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model.to(plan.device)


@contextlib.contextmanager
def accumulating(here: World, step_model: Any, sync: bool) -> Iterator[None]:
    """A backward pass whose gradients stay in this process (added to the next ones) unless
    `sync`: DDP's no_sync, FSDP2's requires_gradient_sync."""
    if sync or not here.distributed:
        yield
    elif hasattr(step_model, "no_sync"):
        with step_model.no_sync():
            yield
    else:
        step_model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            step_model.set_requires_gradient_sync(True)


def take_even_turn(here: World, items: list[Any], filler: Any) -> list[Any]:
    """This process's turn of `items`, filled up with `filler` to as many as rank 0's (the most):
    under FSDP every process must run as many forward passes as the others, since each pass
    gathers weights from all of them."""
    mine = take_turn(here, items)
    return mine + [filler] * (len(items[:: here.size]) - len(mine))
