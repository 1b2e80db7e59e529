"""Starting the recipe in several processes with torchrun, and saying in one line why it failed.

`python -m pulse_pipeline.core.training --family F --processes N` (and the `<family>/adapter`
asset, for a family whose `resources:` ask for more than one process) runs
`torchrun --nproc_per_node N -m pulse_pipeline.core.training --family F ...` as a child, its
output passed through. torchrun (torch.distributed.run, PyTorch's elastic launcher) starts the
processes, and when one dies it stops the others and ends with a report naming the rank, its
exit code or signal; `explain_failure` turns that report into one line a person can act on.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODULE = "pulse_pipeline.core.training"


def training_command(
    family: str,
    *,
    processes: int = 1,
    lock_holder: dict[str, Any] | None = None,
    created_by: str = "cli",
    run_id: str | None = None,
    epochs: int | None = None,
    max_samples: int | None = None,
    force: bool = False,
    tracking: bool = True,
    failure_file: Path | None = None,
    python: str | None = None,
) -> list[str]:
    """`python -m pulse_pipeline.core.training ...` for one training of `family`, as the adapter
    step starts it through Pipes: the step's lock holder, who asked and the run, this run's
    overrides; in `processes` processes (torchrun) when more than one."""
    command = [python or sys.executable, "-m", MODULE, "--family", family, "--created-by", created_by]
    if run_id:
        command += ["--run-id", run_id]
    if lock_holder is not None:
        command += ["--lock-holder", json.dumps(lock_holder, sort_keys=True)]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    if max_samples is not None:
        command += ["--max-samples", str(max_samples)]
    if force:
        command.append("--force")
    if not tracking:
        command.append("--no-tracking")
    if failure_file is not None:  # where a failed training writes its one-line reason
        command += ["--failure-file", str(failure_file)]
    if processes > 1:
        command += ["--processes", str(processes)]
    return command


def torchrun_command(
    args: list[str],
    processes: int,
    *,
    nodes: int = 1,
    node_rank: int | None = None,
    rendezvous: str | None = None,
    run_id: str | None = None,
) -> list[str]:
    """The torchrun command line that runs `python -m pulse_pipeline.core.training ARGS` in
    `processes` processes on each of `nodes` machines (several nodes: a c10d rendezvous at
    `rendezvous` host:port, `run_id` shared by the nodes)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
    if nodes == 1:
        command.append("--standalone")  # a free port on this machine, no rendezvous server
    else:
        if not rendezvous:
            raise ValueError("training on several nodes needs a rendezvous endpoint (host:port)")
        command += [f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rendezvous}"]
        command += [f"--rdzv-id={run_id or 'pulse'}"]
        if node_rank is not None:
            command.append(f"--node-rank={node_rank}")
    return [*command, "-m", MODULE, *args]


@dataclass(frozen=True)
class Launched:
    returncode: int
    output_tail: str  # the last lines of the launcher's stderr


def run(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> Launched:
    """Run the torchrun `command`, its stdout passed through and its stderr echoed line by line
    (to our stderr, or `echo`) and kept in part for `explain_failure`. A SIGTERM or Ctrl-C to this
    process, or `stop` being set (the family's lock lost), is passed on to torchrun, which stops
    its processes."""
    echo = echo or (lambda line: print(line, end="", file=sys.stderr, flush=True))
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    tail: list[str] = []

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            echo(line)
            tail.append(line)
            del tail[:-200]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    previous = (
        signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    )
    if previous is not None:
        signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    try:
        while True:
            try:
                returncode = process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if stop is not None and stop.is_set():
                    process.terminate()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        returncode = process.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    reader.join(timeout=10)
    return Launched(returncode, "".join(tail))


_ROOT_CAUSE = re.compile(r"rank\s*:\s*(?P<rank>\d+).*?exitcode\s*:\s*(?P<code>-?\d+)", re.DOTALL)
_OUR_LINE = re.compile(r"^pulse training: (?P<line>.+)$", re.MULTILINE)


def explain_failure(family: str, processes: int, launched: Launched, work: Path | None = None) -> str:
    """One line for a failed multi-process training: the recipe's own message when a process said
    why (`pulse training: ...`), else which process died and how, and where the next run resumes."""
    ours = _OUR_LINE.findall(launched.output_tail)
    if ours:
        return ours[-1]
    resume = "the next run starts over"
    if work is not None:
        steps = sorted(p.name for p in work.glob("*/step-*")) if work.is_dir() else []
        if steps:
            resume = f"the next run resumes from its checkpoint at step {int(steps[-1].split('-')[-1])}"
    cause = _ROOT_CAUSE.search(launched.output_tail.split("Root Cause", 1)[-1])
    if cause is None:
        how = f"torchrun exited with code {launched.returncode}"
    else:
        rank, code = int(cause["rank"]), int(cause["code"])
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"training process {rank} of {processes} was killed ({name})"
        else:
            how = f"training process {rank} of {processes} exited with code {code}"
    return f"{family}: {how}; the other processes were stopped and nothing was published; {resume}"
