"""Unattended retraining that cannot go wrong, shown by doing it: `pulse` in its own processes
against one PULSE_HOME and a real database (SQLite, and a real PostgreSQL server).

- Two trainings started together: one trains, the other exits 3 naming the holder; a sensor tick
  while `pulse train` trains names it too, and `pulse train` while a sensor's run trains exits 3.
- `kill -9` of a training after a checkpoint: the family is free at once, the next `pulse train`
  resumes from the checkpoint with no manual step, and no concurrency slot stays held.
- PostgreSQL stopped mid-training: one line; nothing visible without a record; the lock free once
  it is back; nothing unevaluated promoted without --force.
- Secrets in every form never reach a terminal, a file under PULSE_HOME, the Dagster storage or MLflow.
- A 30-record family: the gate asks for REVIEW (too little evidence) and nothing is promoted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest

from pulse_pipeline_tests.conftest import PROJECT

FAMILY = "faq"
CONFIG = """
families:
  faq:                              # a chat family on the tiny model: trains in seconds
    task: chat_sft
    annotation_kinds: [qa_pair]
    base_model: tiny
    min_new_annotations: 10
    prompts:
      system: Answer questions about the cluster.
      qa_pair: "{question}"
    training:
      checkpoint_every: 2
      log_every: 1
  support-router:                   # a new intent family with only 30 judged records
    task: classification
    annotation_kinds: [intent_label]
    base_model: minilm-l6
    labels: [billing, shipping, returns]
    min_new_annotations: 10
"""
HOLDER = re.compile(
    r"training already in progress since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \((?P<who>[^ ]+) "
)


def _qa(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"kind": "qa_pair", "family": FAMILY, "question": f"How many cores does node {i} have?",
         "answer": f"Node {i} has {8 + i % 56} cores and {i % 7 + 1} GPUs.", "annotator": "reviewer"}
        for i in range(start, start + n)
    ]  # fmt: skip


class Pulse:
    """`pulse` as a person runs it: its own processes, one PULSE_HOME, one database."""

    def __init__(self, home: Path, database_url: str, env: dict[str, str] | None = None):
        self.home = home
        self.database_url = database_url
        home.mkdir(parents=True, exist_ok=True)
        (home / "pulse.yaml").write_text(CONFIG)
        self.env = {
            **os.environ,
            "PULSE_HOME": str(home),
            "PULSE_CONFIG": str(home / "pulse.yaml"),
            "PULSE_DATABASE_URL": database_url,
            "DAGSTER_HOME": str(home / "dagster"),
            "PULSE_TRAINING_HEARTBEAT_SECONDS": "1",
            **(env or {}),
        }
        self.outputs: list[str] = []  # every stdout and stderr seen, for the secrets check

    def command(self) -> list[str]:
        exe = PROJECT / ".venv" / "bin" / "pulse"
        return [str(exe)] if exe.exists() else [sys.executable, "-m", "pulse_pipeline.cli"]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.command(), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )
        self.outputs += [done.stdout, done.stderr]
        return done

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.command(), *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=self.home,
        )  # fmt: skip

    def finish(self, proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str, str]:
        out, err = proc.communicate(timeout=timeout)
        self.outputs += [out, err]
        return proc.returncode, out, err

    def ingest(self, records: list[dict[str, Any]], name: str) -> None:
        path = self.home / name
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        done = self.run("ingest", str(path))
        assert done.returncode == 0, done.stderr

    def status(self, family: str = FAMILY) -> dict[str, Any]:
        done = self.run("status", "--family", family, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def versions(self, family: str = FAMILY) -> list[dict[str, Any]]:
        done = self.run("registry", "versions", "--family", family, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["versions"]

    @contextmanager
    def in_process(self) -> Iterator[None]:
        """This process's settings pointed at the same home and database (for sensor ticks)."""
        from pulse_pipeline.settings import get_settings

        saved = dict(os.environ)
        os.environ.update({k: v for k, v in self.env.items() if k.startswith(("PULSE_", "DAGSTER_"))})
        get_settings.cache_clear()
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            get_settings.cache_clear()

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        """The Dagster instance at this home (its dagster.yaml reads DAGSTER_HOME)."""
        with self.in_process(), dg.DagsterInstance.from_config(str(self.home / "dagster")) as instance:
            yield instance

    def lock_row(self, family: str = FAMILY) -> Any:
        from pulse_pipeline.core.store import Store

        with Store(self.database_url) as store:
            return store.locks.get(family)


def _wait(
    check: Callable[[], Any], what: str, proc: subprocess.Popen[str] | None = None, timeout: float = 300
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _checkpoint(home: Path) -> Path | None:
    found = sorted((home / "work" / FAMILY).glob("*/step-*/loop.json"))
    return found[0] if found else None


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def pulse(request: pytest.FixtureRequest, tmp_path: Path, model_cache: Path) -> Pulse:
    """A new PULSE_HOME (no Dagster instance yet) with 60 judged answers of `faq` in its store."""
    url = (
        f"sqlite:///{tmp_path / 'home' / 'pulse.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres").create_database()
    )
    p = Pulse(tmp_path / "home", url)
    _share_models(p.home, model_cache)
    p.ingest(_qa(60), "faq.jsonl")
    return p


def _share_models(home: Path, model_cache: Path) -> None:
    """The session's built tiny model, so each home does not build its own."""
    from pulse_pipeline.core.training.base_models import resolve_base_model

    tiny = resolve_base_model("tiny", model_cache).path
    (home / "models").mkdir(parents=True, exist_ok=True)
    if not (home / "models" / tiny.name).exists():
        (home / "models" / tiny.name).symlink_to(tiny)


def _every_version_judged(p: Pulse) -> list[dict[str, Any]]:
    """The family's versions: each one that trained has a gate decision."""
    versions = p.versions()
    for row in versions:
        if row["state"] not in ("training", "failed"):
            assert row["decision"] in ("DEPLOY", "REVIEW", "FAIL"), row
    return versions


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_trainings_started_together_one_trains_the_other_exits_3(pulse):
    train = ("train", "--family", FAMILY, "--force", "--epochs", "2", "--json")
    procs = [pulse.start(*train) for _ in range(2)]  # a new home: both also create the Dagster storage
    results = [pulse.finish(p) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 3], [err[-2000:] for _, _, err in results]
    (_, out, _), (_, _, refused) = sorted(results, key=lambda r: r[0])
    trained = json.loads(out)
    line = refused.strip()
    assert refused.count("\n") == 1 and line.startswith(
        f"pulse: {FAMILY}: training already in progress since "
    )
    assert HOLDER.search(line).group("who").startswith("cli:")  # the winner, named
    assert re.search(r"\(run [0-9a-f]{8}, pid \d+ on \S+\)", line)
    versions = _every_version_judged(pulse)
    assert [v["version"] for v in versions] == [trained["version"]]  # exactly one trained
    assert pulse.status()["is_training"] is False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sensor_and_a_person_starting_together_one_trains_the_other_is_told_who(pulse):
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.definitions import build_definitions
    from pulse_pipeline.defs.resources import default_resources

    # A person trains; the sensor's tick meanwhile names them.
    proc = pulse.start("train", "--family", FAMILY, "--force", "--epochs", "6", "--json")
    _wait(lambda: pulse.lock_row(), "the person's training to hold the lock", proc)
    with pulse.instance() as instance:
        defs = build_definitions(load_config(pulse.home / "pulse.yaml"))
        sensor = defs.resolve_sensor_def(f"new_annotations_{FAMILY}")
        with dg.build_sensor_context(instance=instance, resources=default_resources()) as context:
            tick = sensor(context)
        assert isinstance(tick, dg.SkipReason), tick
        assert tick.skip_message.startswith(f"{FAMILY}: training already in progress since ")
        assert HOLDER.search(tick.skip_message).group("who").startswith("cli:")
    code, _, err = pulse.finish(proc)
    assert code == 0, err[-2000:]

    # More judgments: the sensor asks for a retrain; while its run trains, a person is refused.
    pulse.ingest(_qa(20, start=100), "more.jsonl")
    with (
        pulse.instance() as instance,
        dg.build_sensor_context(instance=instance, resources=default_resources()) as context,
    ):
        (request,) = sensor(context).run_requests
    tags = {**request.tags, "dagster/sensor_name": sensor.name}
    run = subprocess.Popen(
        [sys.executable, "-c", RUN_REQUEST, json.dumps(tags)], env=pulse.env, cwd=pulse.home,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    row = _wait(lambda: pulse.lock_row(), "the sensor's run to hold the lock", run)
    assert row.holder.who == f"sensor:{sensor.name}" and row.holder.run_id
    refused = pulse.run("train", "--family", FAMILY, "--force")
    assert refused.returncode == 3, refused.stderr
    assert f"(sensor:{sensor.name} (run {row.holder.run_id[:8]}, pid " in refused.stderr
    out, err = run.communicate(timeout=600)
    assert "status SUCCESS" in out or "status FAILURE (the gate)" in out, err[-3000:]
    versions = _every_version_judged(pulse)
    assert len([v for v in versions if v["state"] != "failed"]) == 2  # one each: the person's, the sensor's


# The run a sensor requested, executed as the daemon's run worker would (its own process).
RUN_REQUEST = """
import json, sys
import dagster as dg
from pulse_pipeline.cli.training import _only_gate_failed
from pulse_pipeline.core.families import load_config
from pulse_pipeline.definitions import build_definitions
from pulse_pipeline.settings import get_settings
tags = json.loads(sys.argv[1])
job = build_definitions(load_config(get_settings().pulse_config)).resolve_job_def("retrain_faq")
config = {"ops": {"faq__adapter": {"config": {"epochs": 6}}}}
with dg.DagsterInstance.get() as instance:
    result = job.execute_in_process(instance=instance, tags=tags, run_config=config, raise_on_error=False)
print("status", "SUCCESS" if result.success else "FAILURE (the gate)" if _only_gate_failed(result) else "FAILURE")
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_after_a_checkpoint_frees_the_family_and_the_next_training_resumes(pulse):
    train = ("train", "--family", FAMILY, "--force", "--epochs", "20", "--json")
    proc = pulse.start(*train)
    _wait(lambda: _checkpoint(pulse.home), "a checkpoint", proc)
    held = pulse.lock_row()
    assert held is not None and held.holder.pid == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    status = pulse.status()  # at once, well within the 2-minute stale limit: its process is gone
    assert status["is_training"] is False and status["lock_acquired_at"] is None

    again = pulse.run(*train)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    assert report["resumed_from_step"] > 0  # no step redone from scratch, no manual step
    meta = json.loads(Path(report["path"], "training_metadata.json").read_text())
    assert meta["resumed_from_step"] == report["resumed_from_step"]
    assert "its lock is taken over" in again.stderr and f"pid {proc.pid} " in again.stderr
    with pulse.instance() as instance:
        killed = instance.get_run_by_id(held.holder.run_id)
        assert killed.status == dg.DagsterRunStatus.FAILURE  # no longer "started" forever
        for pool in instance.event_log_storage.get_concurrency_keys():
            info = instance.event_log_storage.get_concurrency_info(pool)
            assert info.active_slot_count == 0 and not info.claimed_slots, (pool, info)
    states = {v["version"]: v["state"] for v in _every_version_judged(pulse)}
    assert sorted(states.values()) == sorted(["failed", states[report["version"]]])  # the killed one: failed
    assert pulse.lock_row() is None


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_postgresql_stopped_mid_training(tmp_path, model_cache):
    from pulse_pipeline_tests.postgres_server import PostgresServer

    with PostgresServer() as server:
        p = Pulse(tmp_path / "home", server.create_database(), {"PULSE_RETRY_BASE_SECONDS": "0.2"})
        _share_models(p.home, model_cache)
        p.ingest(_qa(60), "faq.jsonl")
        proc = p.start("train", "--family", FAMILY, "--force", "--epochs", "12")
        _wait(lambda: _checkpoint(p.home), "a checkpoint", proc)
        server.halt()
        code, out, err = p.finish(proc)
        assert code == 1 and err.count("\n") == 1, err[-3000:]
        assert re.fullmatch(
            rf"pulse: retrain run [0-9a-f]{{8}} failed at {FAMILY}/adapter: cannot connect to the annotation "
            r"store at postgresql\+psycopg2://postgres@127\.0\.0\.1:\d+/t_\w+: .*\(still after 3 retries\)\n",
            err,
        ), err
        assert not list((p.home / "artifacts" / "adapters" / FAMILY).glob("faq-*"))  # nothing visible

        server.resume()
        status = p.status()
        assert status["is_training"] is False  # its run has finished: the lock is free
        assert status["available_versions"] == [] and status["unrecorded_versions"] == []
        (left,) = p.versions()  # recorded before any file: the version exists, still "training"
        assert left["state"] == "training"
        refused = p.run(
            "promote", "--family", FAMILY, "--version", left["version"], "--force", "--reason", "x"
        )
        assert refused.returncode == 1 and "is training: it has no files to use" in refused.stderr

        repaired = p.run("registry", "reconcile", "--family", FAMILY)
        assert repaired.returncode == 0, repaired.stderr
        assert "training finished but its record was not moved: published" in repaired.stdout
        unjudged = p.run("promote", "--family", FAMILY, "--version", left["version"])
        assert unjudged.returncode == 1 and "was never evaluated; --force with --reason" in unjudged.stderr
        stray = p.home / "artifacts" / "adapters" / FAMILY / "faq-20260101-0000"
        (stray / "adapter_config.json").parent.mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors", "training_metadata.json"):
            (stray / name).write_bytes(
                (p.home / "artifacts" / "adapters" / FAMILY / left["version"] / name).read_bytes()
            )
        unrecorded = p.run("promote", "--family", FAMILY, "--version", stray.name, "--force", "--reason", "x")
        assert unrecorded.returncode == 1 and "has files but no record" in unrecorded.stderr
        assert p.lock_row() is None  # the dead run's row, freed by the reconcile


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.postgres
# The gate decides the same on either store; one training is enough to show it (the store's own
# part, a version row with its gate decision, is checked on both stores by the tests above).
@pytest.mark.parametrize("pulse", ["postgresql"], indirect=True)
def test_a_30_record_family_asks_for_review_and_nothing_is_promoted(pulse):
    labels = ["billing", "shipping", "returns"]
    asks = {
        "billing": "why was I charged twice",
        "shipping": "where is my parcel",
        "returns": "send this back",
    }
    pulse.ingest(
        [{"kind": "intent_label", "family": "support-router", "text": f"{asks[labels[i % 3]]} (order {1000 + i})",
          "label": labels[i % 3], "annotator": "agent-7"} for i in range(30)],
        "support.jsonl",
    )  # fmt: skip
    done = pulse.run("train", "--family", "support-router", "--epochs", "1", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["decision"] == "REVIEW"
    assert re.search(
        r"^not enough evidence: [1-5] test examples?, fewer than 100$", "\n".join(report["reasons"]), re.M
    )
    assert pulse.status("support-router")["current_version"] is None  # nothing promoted
    (row,) = pulse.versions("support-router")
    assert (row["state"], row["decision"]) == ("evaluated", "REVIEW")


SECRETS = {
    "userinfo": "pw-userinfo-7Qx2",
    "query": "pw-query-9Lk4",
    "libpq": "pw-libpq-3Hd8",
    "at-sign": "pw-at@sign-5Vz1",
    "s3": "s3-secret-8Nq6",
    "webhook": "hook-token-2Wp9",
    "vllm": "vllm-key-6Ty3",
    "judge": "judge-key-4Rm7",
}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_secrets_in_every_form_stay_out_of_output_files_dagster_and_mlflow(
    tmp_path, postgres, s3_server, model_cache
):
    from urllib.parse import quote

    database = postgres.create_database()
    port, db = postgres.port, database.rsplit("/", 1)[1]
    urls = {  # the server trusts any password: each form connects for real
        "userinfo": f"postgresql+psycopg2://postgres:{SECRETS['userinfo']}@127.0.0.1:{port}/{db}",
        "query": f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{db}?password={SECRETS['query']}",
        "libpq": f"host=127.0.0.1 port={port} dbname={db} user=postgres password={SECRETS['libpq']}",
        "at-sign": f"postgresql+psycopg2://postgres:{SECRETS['at-sign']}@127.0.0.1:{port}/{db}",
    }
    env = {
        "PULSE_ARTIFACTS": "s3://secrets/pulse",
        "PULSE_S3_ENDPOINT": s3_server.endpoint,
        "PULSE_S3_ACCESS_KEY": "pulse-test",
        "PULSE_S3_SECRET_KEY": SECRETS["s3"],
        "PULSE_ALERT_WEBHOOK": f"https://hooks.slack.com/services/T0/B0/{SECRETS['webhook']}",
        "PULSE_VLLM_URL": "http://127.0.0.1:9",  # nothing listens: evaluation says so and uses peft
        "PULSE_VLLM_API_KEY": SECRETS["vllm"],
        "PULSE_JUDGE_URL": "http://127.0.0.1:9/v1",
        "PULSE_JUDGE_API_KEY": SECRETS["judge"],
    }
    seen: list[str] = []
    for n, (form, url) in enumerate(urls.items()):
        p = Pulse(tmp_path / "home", url, env)
        _share_models(p.home, model_cache)
        p.ingest(_qa(30, start=100 * n), f"{form}.jsonl")
        assert p.run("snapshot", "--family", FAMILY).returncode == 0, p.outputs[-1]
        if form == "userinfo":  # a training, its evaluation (vLLM and judge unreachable), MLflow, S3
            done = p.run("train", "--family", FAMILY, "--force", "--epochs", "1", "--max-samples", "8")
            assert done.returncode == 0, done.stderr[-3000:]
        down = Pulse(p.home, url.replace(str(port), "1"), env)  # the same secret, a server that is down
        for args in (("status",), ("snapshot", "--family", FAMILY), ("train", "--family", FAMILY, "--force")):
            failed = down.run(*args)
            assert failed.returncode == 1 and failed.stderr.count("\n") == 1, (form, args, failed.stderr)
            assert "cannot connect to the annotation store" in failed.stderr, failed.stderr
        seen += p.outputs + down.outputs

    def leaked(blob: bytes) -> list[str]:
        found = []
        for name, secret in SECRETS.items():
            variants = {secret, quote(secret, safe=""), secret.split("@")[-1]}
            found += [f"{name} ({v})" for v in variants if v.encode() in blob]
        return found

    assert leaked("\n".join(seen).encode()) == []  # stdout and stderr of every command
    for path in sorted((tmp_path / "home").rglob("*")):  # PULSE_HOME: the Dagster storage, MLflow, ...
        if path.is_file() and not path.is_symlink():
            assert leaked(path.read_bytes()) == [], path
    from minio import Minio

    client = Minio(
        s3_server.endpoint.removeprefix("http://"), access_key="pulse-test", secret_key="x", secure=False
    )
    objects = list(client.list_objects("secrets", recursive=True))
    assert objects  # the training published there
    for obj in objects:
        assert leaked(client.get_object("secrets", obj.object_name).read()) == [], obj.object_name
