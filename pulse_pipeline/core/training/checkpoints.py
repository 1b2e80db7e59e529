"""Checkpoints in a training's work folder, so a crashed training resumes instead of restarting.

The work folder is named after what the training is (`run_key`: family, dataset_version, base
model and resolved config), so re-running the same training finds its own checkpoints and a
different training never picks up someone else's. A checkpoint holds the trainable weights
(the adapter and any head), the optimizer (by parameter name, whole: it resumes on another
number of processes, sharded by FSDP or not) and scheduler, the RNG states and the loop's place
(epoch, batches done in it, history); it is written to a temporary folder and renamed into
place, so the newest `step-*` folder is always whole. The best epoch's weights by validation
loss are kept beside them in `best.safetensors`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

KEEP = 2  # checkpoints kept; older ones are removed after a new one is in place


def run_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trainable_state(model: Any) -> dict[str, Any]:
    """The trainable weights by name, whole and on the CPU. Under FSDP each is gathered from every
    process's shard, so every process must call this (a collective)."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            value = p.detach()
            if hasattr(value, "full_tensor"):  # a DTensor: FSDP2's shard of it
                value = value.full_tensor()
            out[name] = value.to("cpu").clone().contiguous()
    return out


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    """Copy `state` into the model's trainable weights (under FSDP, every process its shard)."""
    import torch

    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint does not fit the model: unknown parameters {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            param = params[name]
            value = value.to(param.device, param.dtype)
            if hasattr(param, "device_mesh"):  # FSDP2: this process's shard of the whole tensor
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value, param.device_mesh, param.placements)
            param.copy_(value)


def save(
    work: Path, model: Any, optimizer: Any, scheduler: Any, loop: dict[str, Any], *, write: bool = True
) -> Path:
    """Write checkpoint `step-<loop['step']>` atomically; keep the newest KEEP.

    The optimizer's state is saved by parameter name and whole, so a checkpoint resumes on any
    number of processes, sharded or not. Under FSDP every process calls this (the weights and
    the optimizer's state are gathered from all of them) and only the one with `write` writes."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    target = work / f"step-{loop['step']:07d}"
    weights, optimizer_state = trainable_state(model), optimizer_state_by_name(model, optimizer)
    if not write:
        return target
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=work))
    try:
        save_file(weights, tmp / "trainable.safetensors")
        torch.save(
            {
                "optimizer_by_name": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "rng": {
                    "python": random.getstate(),
                    "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                },
            },
            tmp / "state.pt",
        )
        (tmp / "loop.json").write_text(json.dumps(loop))
        if target.exists():  # the same step written again (an epoch end that is also an N-step mark)
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(work.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def optimizer_state_by_name(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name (torch.distributed.checkpoint's layout),
    whole: gathered from the shards under FSDP (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sharded = _sharded(model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=sharded)
    return get_optimizer_state_dict(model, optimizer, options=options)


def latest(work: Path) -> Path | None:
    found = sorted(p for p in work.glob("step-*") if (p / "loop.json").is_file())
    return found[-1] if found else None


def restore_weights(checkpoint: Path, model: Any) -> None:
    from safetensors.torch import load_file

    load_trainable_state(model, load_file(checkpoint / "trainable.safetensors"))


def restore_training_state(checkpoint: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Load a checkpoint's optimizer, scheduler and RNG states (after `restore_weights` and any
    wrapping of the model: the optimizer is the one over the wrapped parameters); return the
    loop's place."""
    import numpy as np
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(checkpoint / "state.pt", weights_only=False)
    if "optimizer_by_name" in state:
        options = StateDictOptions(full_state_dict=_sharded(model))
        set_optimizer_state_dict(model, optimizer, state["optimizer_by_name"], options=options)
    else:  # written before checkpoints named their parameters
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return json.loads((checkpoint / "loop.json").read_text())


def _sharded(model: Any) -> bool:
    return any(hasattr(p, "device_mesh") for p in model.parameters())


def save_best(work: Path, model: Any, *, write: bool = True) -> None:
    """Keep the model's trainable weights as the best epoch's (under FSDP: every process calls
    this, the one with `write` writes)."""
    from safetensors.torch import save_file

    weights = trainable_state(model)
    if not write:
        return
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / ".best.safetensors.tmp"
    save_file(weights, tmp)
    os.replace(tmp, work / "best.safetensors")


def load_best(work: Path, model: Any) -> None:
    from safetensors.torch import load_file

    load_trainable_state(model, load_file(work / "best.safetensors"))
