"""The recipe in several processes (DDP over gloo on CPU), started as a user would: torchrun
through `python -m pulse_pipeline.core.training --processes 2`, and `accelerate launch`.

Each run trains the demo's call-analysis family (the `tiny` chat model) on a real snapshot in a
SQLite store, and the assertions read what was published."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pulse_pipeline.cli import app
from pulse_pipeline.core.training.distributed import World, from_main, sum_all, take_turn
from pulse_pipeline.core.training.launch import Launched, explain_failure, torchrun_command
from pulse_pipeline_tests.conftest import PROJECT

runner = CliRunner()
FAMILY = "call-analysis"
TRAIN = [sys.executable, "-m", "pulse_pipeline.core.training", "--family", FAMILY, "--no-tracking"]
# Two processes against one: the same examples and mean gradient per step; what differs is the
# order of float sums and the LoRA dropout masks of the second process (its own seed).
LOSS_TOLERANCE = 1e-3  # relative, per step


@pytest.fixture
def snapshot(pulse_env, tmp_path):
    from pulse_pipeline.demo.data import DemoScale, write_demo_file

    demo = write_demo_file(
        tmp_path / "demo.jsonl", anchor=dt.date(2026, 6, 30), scale=DemoScale().scaled(0.3)
    )
    assert runner.invoke(app, ["ingest", str(demo.path)]).exit_code == 0
    assert runner.invoke(app, ["snapshot", "--family", FAMILY]).exit_code == 0
    return pulse_env


def _train(*args: str, command: list[str] | None = None) -> dict:
    out = subprocess.run([*(command or TRAIN), *args, "--json"], capture_output=True, text=True, cwd=PROJECT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return json.loads((Path(report["path"]) / "training_metadata.json").read_text())


def _versions() -> list[str]:
    status = runner.invoke(app, ["status", "--family", FAMILY, "--json"])
    return json.loads(status.stdout)["available_versions"]


def _losses(metadata: dict) -> list[float]:
    return [p["loss"] for p in metadata["loss_history"]]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_processes_follow_the_loss_curve_of_one_and_publish_one_version(snapshot):
    one = _train("--epochs", "2")
    assert one["hardware"]["processes"] == 1 and _versions() == [one["version"]]
    two = _train("--epochs", "2", "--force", "--processes", "2")
    assert two["hardware"]["processes"] == 2
    assert _versions() == [one["version"], two["version"]]  # one version, published by rank 0 alone
    assert [p["step"] for p in two["loss_history"]] == [p["step"] for p in one["loss_history"]]
    assert _losses(two) == pytest.approx(_losses(one), rel=LOSS_TOLERANCE)
    assert _losses(two)[-1] < _losses(two)[0]  # it learned
    assert two["samples_used"] == one["samples_used"] and two["train_tokens"] == one["train_tokens"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_accelerate_launch_runs_the_same_recipe(snapshot):
    accelerate = [
        str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "pulse_pipeline.core.training", "--family", FAMILY, "--no-tracking",
    ]  # fmt: skip
    launched = _train("--epochs", "1", command=accelerate)
    assert launched["hardware"]["processes"] == 2  # gloo on a machine without CUDA
    assert _versions() == [launched["version"]]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_process_fails_the_run_with_one_line_and_the_next_run_resumes(snapshot):
    work = snapshot / "work" / FAMILY
    training = subprocess.Popen(
        [*TRAIN, "--epochs", "6", "--processes", "2"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(work.glob("*/step-*")):  # the first checkpoint (the end of epoch 1)
        assert training.poll() is None and time.monotonic() < deadline, training.communicate()[1][-3000:]
        time.sleep(0.2)
    os.kill(_rank_pid(training.pid, 1), signal.SIGKILL)
    _, stderr = training.communicate(timeout=120)
    checkpoint = int(sorted(work.glob("*/step-*"))[-1].name.split("-")[-1])
    assert training.returncode == 1
    assert stderr.strip().splitlines()[-1] == (
        f"pulse training: {FAMILY}: training process 1 of 2 was killed (SIGKILL); the other processes "
        f"were stopped and nothing was published; the next run resumes from its checkpoint at step {checkpoint}"
    )
    assert _versions() == []  # nothing published
    status = json.loads(runner.invoke(app, ["status", "--family", FAMILY, "--json"]).stdout)
    assert status["is_training"] is False  # the lock went with the launcher

    resumed = _train("--epochs", "6")  # and in one process: the step order does not depend on the count
    assert resumed["resumed_from_step"] == checkpoint and resumed["hardware"]["processes"] == 1
    assert [p["step"] for p in resumed["loss_history"]] == list(range(1, resumed["steps"] + 1))
    assert _versions() == [resumed["version"]]


def _rank_pid(launcher: int, rank: int) -> int:
    """The PID of the training process with RANK=`rank` under the launcher `launcher`."""
    for pid in _descendants(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no process with RANK={rank} under {launcher}")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            out.append(int(child))
            todo.append(int(child))
    return out


# -- the pieces, without processes ---------------------------------------------------------------


def test_each_process_takes_its_turn_of_the_micro_batches():
    group = [[0, 1], [2, 3], [4, 5]]
    assert take_turn(World(0, 2), group) == [[0, 1], [4, 5]]
    assert take_turn(World(1, 2), group) == [[2, 3]]
    assert take_turn(World(3, 4), group) == []  # joins the step with a zero gradient
    assert take_turn(World(), group) == group
    assert sum_all(World(), [1.0, 2.0]) == [1.0, 2.0] and from_main(World(), {"a": 1}) == {"a": 1}


def test_the_torchrun_command_for_one_machine_and_for_several():
    one = torchrun_command(["--family", "f"], 2)
    assert one[1:] == [
        "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
        "-m", "pulse_pipeline.core.training", "--family", "f",
    ]  # fmt: skip
    several = torchrun_command(
        ["--family", "f"], 8, nodes=2, node_rank=1, rendezvous="head:29400", run_id="r1"
    )
    assert "--nnodes=2" in several and "--rdzv-endpoint=head:29400" in several and "--node-rank=1" in several
    with pytest.raises(ValueError, match="rendezvous"):
        torchrun_command([], 8, nodes=2)


TORCHRUN_REPORT = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
pulse_pipeline.core.training FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-05_13:22:54
  rank      : 0 (local_rank: 0)
  exitcode  : 143 (pid: 30240)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-05_13:22:52
  host      : localhost
  rank      : {rank} (local_rank: {rank})
  exitcode  : {code} (pid: 30241)
  error_file: <N/A>
============================================================
"""


def test_a_failure_is_explained_in_one_line(tmp_path):
    killed = Launched(1, TORCHRUN_REPORT.format(rank=1, code=-9))
    assert explain_failure("fam", 2, killed) == (
        "fam: training process 1 of 2 was killed (SIGKILL); the other processes were stopped and "
        "nothing was published; the next run starts over"
    )
    (tmp_path / "key" / "step-0000012").mkdir(parents=True)
    crashed = Launched(1, TORCHRUN_REPORT.format(rank=3, code=1))
    assert explain_failure("fam", 4, crashed, tmp_path).endswith(
        "training process 3 of 4 exited with code 1; the other processes were stopped and nothing was "
        "published; the next run resumes from its checkpoint at step 12"
    )
    said = Launched(1, "noise\npulse training: fam has no dataset snapshot yet\n" + TORCHRUN_REPORT)
    assert explain_failure("fam", 2, said) == "fam has no dataset snapshot yet"  # the recipe's own words
    assert "torchrun exited with code 2" in explain_failure("fam", 2, Launched(2, "usage: ..."))
