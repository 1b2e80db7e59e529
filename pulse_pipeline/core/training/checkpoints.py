"""Checkpoints in a training's work folder, so a crashed training resumes instead of restarting.

The work folder is named after what the training is (`run_key`: family, dataset_version, base
model and resolved config), so re-running the same training finds its own checkpoints and a
different training never picks up someone else's. A checkpoint holds the trainable weights
(the adapter and any head), the optimizer and scheduler, the RNG states and the loop's place
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
    return {
        n: p.detach().to("cpu").clone().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint does not fit the model: unknown parameters {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def save(work: Path, model: Any, optimizer: Any, scheduler: Any, loop: dict[str, Any]) -> Path:
    """Write checkpoint `step-<loop['step']>` atomically; keep the newest KEEP."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    work.mkdir(parents=True, exist_ok=True)
    target = work / f"step-{loop['step']:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=work))
    try:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
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


def latest(work: Path) -> Path | None:
    found = sorted(p for p in work.glob("step-*") if (p / "loop.json").is_file())
    return found[-1] if found else None


def restore(checkpoint: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Load a checkpoint into the model, optimizer and scheduler; return the loop's place."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    load_trainable_state(model, load_file(checkpoint / "trainable.safetensors"))
    state = torch.load(checkpoint / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return json.loads((checkpoint / "loop.json").read_text())


def save_best(work: Path, model: Any) -> None:
    from safetensors.torch import save_file

    work.mkdir(parents=True, exist_ok=True)
    tmp = work / ".best.safetensors.tmp"
    save_file(trainable_state(model), tmp)
    os.replace(tmp, work / "best.safetensors")


def load_best(work: Path, model: Any) -> None:
    from safetensors.torch import load_file

    load_trainable_state(model, load_file(work / "best.safetensors"))
