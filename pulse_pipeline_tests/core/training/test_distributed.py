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
import torch
import yaml
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


@pytest.fixture
def fsdp(snapshot, tmp_path, monkeypatch):
    """The family set to shard its model over the processes (FSDP2) rather than replicate it."""
    config = yaml.safe_load((PROJECT / "pulse.yaml").read_text())
    family = config["families"][FAMILY]
    config["families"] = {
        FAMILY: {**family, "training": {**family.get("training", {}), "data_parallel": "fsdp"}}
    }
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("PULSE_CONFIG", str(tmp_path / "fsdp.yaml"))
    return snapshot


def _train(*args: str, command: list[str] | None = None) -> dict:
    out = subprocess.run([*(command or TRAIN), *args, "--json"], capture_output=True, text=True, cwd=PROJECT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    metadata = json.loads((Path(report["path"]) / "training_metadata.json").read_text())
    return {**metadata, "folder": report["path"]}


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
def test_fsdp_shards_the_model_and_follows_the_same_loss_curve(fsdp):
    one = _train("--epochs", "2")
    assert one["hardware"]["data_parallel"] == "none"  # one process: nothing to shard over
    two = _train("--epochs", "2", "--force", "--processes", "2")
    assert two["hardware"]["data_parallel"] == "fsdp" and two["hardware"]["processes"] == 2
    assert two["hardware"]["choices"]["data_parallel"] == "fsdp: training.data_parallel, over 2 processes"
    assert _versions() == [one["version"], two["version"]]
    assert _losses(two) == pytest.approx(_losses(one), rel=LOSS_TOLERANCE)
    # Rank 0 gathered the whole adapter from the shards: every tensor, whole, and peft loads it.
    shapes = [{k: t.shape for k, t in _adapter_weights(run["folder"]).items()} for run in (one, two)]
    assert shapes[0] == shapes[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.device_count() >= 2), reason="needs two CUDA GPUs"
)
def test_fsdp_on_two_gpus_computes_in_bf16_over_nccl(fsdp):
    two = _train("--epochs", "1", "--processes", "2")
    hardware = two["hardware"]
    assert (hardware["device"], hardware["data_parallel"], hardware["precision"]) == ("cuda", "fsdp", "bf16")
    assert _losses(two)[-1] < _losses(two)[0]
    _adapter_weights(two["folder"])


def _adapter_weights(folder: str) -> dict:
    from safetensors.torch import load_file

    from pulse_pipeline.core.training.models import load_adapter

    assert load_adapter(folder).task == "chat_sft"
    return load_file(Path(folder) / "adapter_model.safetensors")


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
def test_a_killed_process_fails_the_run_with_one_line_and_the_next_run_resumes(fsdp):
    """Killed while sharded (FSDP), resumed in one process: checkpoints are whole."""
    work = fsdp / "work" / FAMILY
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
    assert resumed["resolved_config"]["data_parallel"] == "fsdp"  # the killed run's setting: it sharded
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


def test_a_checkpoint_moves_between_a_sharded_model_and_a_whole_one(tmp_path):
    """Checkpoints hold whole weights and the optimizer's state by parameter name: what a model
    sharded by FSDP2 writes resumes in a whole one and the other way round (a one-process gloo
    group, in this process)."""
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    from pulse_pipeline.core.training import checkpoints

    def model(seed):  # the same base model, an adapter started from `seed`
        torch.manual_seed(0)
        shape = LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
        base = LlamaForCausalLM(shape)
        torch.manual_seed(seed)
        return get_peft_model(
            base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian")
        )

    def optimizer(m):
        return torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)

    def schedule(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    def step(m, opt):
        ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
        m(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()

    def same(a, b):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def moments(m, opt):
        state = checkpoints.optimizer_state_by_name(m, opt)["state"]
        return {name: s["exp_avg"] for name, s in state.items()}

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        whole = model(0)
        whole_opt = optimizer(whole)
        step(whole, whole_opt)
        written = checkpoints.save(tmp_path / "whole", whole, whole_opt, schedule(whole_opt), {"step": 1})

        sharded = model(1)  # other weights, replaced from the checkpoint once sharded
        for layer in sharded.get_base_model().model.layers:
            fully_shard(layer)
        fully_shard(sharded)
        sharded_opt = optimizer(sharded)
        checkpoints.restore_weights(written, sharded)
        checkpoints.restore_training_state(written, sharded, sharded_opt, schedule(sharded_opt))
        assert any(hasattr(p, "device_mesh") for p in sharded.parameters())
        same(checkpoints.trainable_state(sharded), checkpoints.trainable_state(whole))
        same(moments(sharded, sharded_opt), moments(whole, whole_opt))

        step(sharded, sharded_opt)  # trains on, and what it writes resumes without FSDP
        step(whole, whole_opt)
        again = checkpoints.save(
            tmp_path / "sharded", sharded, sharded_opt, schedule(sharded_opt), {"step": 2}
        )
        plain = model(2)
        plain_opt = optimizer(plain)
        checkpoints.restore_weights(again, plain)
        assert checkpoints.restore_training_state(again, plain, plain_opt, schedule(plain_opt)) == {"step": 2}
        for name, value in checkpoints.trainable_state(whole).items():
            assert torch.allclose(checkpoints.trainable_state(plain)[name], value, atol=1e-6)
    finally:
        dist.destroy_process_group()
