"""The loop running unattended in production form: the real `dagster-daemon`, the code location's
gRPC server and `dagster-webserver` as separate processes over deploy/dagster.yaml (loaded as is:
PostgreSQL storage, the queued run coordinator, the `training` pool, run monitoring and retries,
compute logs in S3), with a real PostgreSQL, the S3-API server and an MLflow server, on 127.0.0.1.

A person turns one family's new-annotations sensor on through GraphQL and `pulse ingest`s
judgments; the daemon does the rest: ticks, queues, launches, trains, evaluates, promotes. Then
faults, each followed by a retrain nobody starts by hand:

1. kill -9 of the run worker mid-training: the run is failed, the lock and the `training` slot are
   freed, and the family's next run resumes from the checkpoint (trained once, not twice);
2. the daemon killed and restarted while a run is queued: the run is launched once, no duplicate;
3. PostgreSQL restarted between ticks: every process survives, the next retrain succeeds.

One stack for the module: the tests run in order, each on the state the one before left.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.dagster_stack import REPOSITORY, DagsterStack, ancestors, kill_tree, wait_for
from pulse_pipeline_tests.mlflow_server import MlflowServer
from pulse_pipeline_tests.postgres_server import PostgresServer
from pulse_pipeline_tests.s3_server import S3Server
from pulse_pipeline_tests.test_faults import Pulse, _qa, _share_models

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]

FAMILY = "faq"
JOB = "retrain_faq"
SENSOR = "new_annotations_faq"
BUCKET = "pulse-artifacts"
LOGS_BUCKET = "dagster-logs"
CHAIN = ("examples", "dataset_snapshot", "adapter", "eval_report", "deployment")
RUN_TIMEOUT = 300  # one retrain under the daemon takes ~1 min on an idle 2-core machine
CONFIG = """
annotations_start_date: {start}
families:
  faq:                                  # a chat family on the tiny model: trains in seconds
    task: chat_sft
    annotation_kinds: [qa_pair]
    base_model: tiny
    min_new_annotations: 10
    prompts:
      system: Answer questions about the cluster.
      qa_pair: "{{question}}"
    training:
      epochs: 4
      checkpoint_every: 1               # a checkpoint after every step: the kill finds one early
      log_every: 1
    evaluation:
      max_new_tokens: 8
      gate:                             # a random tiny model: every version may serve
        evidence: {{min_examples: 1}}
        change: {{tolerance: 1000}}
    automation:
      new_annotations_interval_seconds: 5
      schedules: {{nightly: false, weekly: false}}
"""


@dataclass
class Proof:
    """Everything the module's tests drive and look at."""

    stack: DagsterStack
    pulse: Pulse
    postgres: PostgresServer
    s3: S3Server
    mlflow: MlflowServer
    dagster_db: str
    env: dict[str, str]

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """On failure, every process's log tail in the test's output."""
        try:
            yield
        except BaseException:
            print(self.stack.logs())
            raise

    @contextmanager
    def instance(self) -> Iterator[Any]:
        """The Dagster instance of deploy/dagster.yaml, opened in this process with the stack's env."""
        import dagster as dg

        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            with dg.DagsterInstance.from_config(str(self.stack.dagster_home)) as instance:
                yield instance
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def sql(self, query: str, *args: Any) -> list[tuple]:
        """A query on the Dagster storage database (cheap enough to poll every few ms)."""
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.postgres.port, user="postgres", dbname=self.dagster_db
        )
        try:
            with conn.cursor() as cur:
                cur.execute(query, args)
                return cur.fetchall()
        finally:
            conn.close()

    def s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.s3.endpoint, aws_access_key_id=self.s3.access_key,
            aws_secret_access_key=self.s3.secret_key, region_name="us-east-1",
        )  # fmt: skip


def _base_env() -> dict[str, str]:
    """This process's environment without anything that would point the stack elsewhere."""
    prefixes = ("PULSE_", "DAGSTER_", "MLFLOW_", "AWS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Proof]:
    root = tmp_path_factory.mktemp("daemon")
    with PostgresServer() as postgres, S3Server() as s3, MlflowServer() as mlflow:
        dagster_db = postgres.create_database("dagster").rsplit("/", 1)[1]
        pulse_db = postgres.create_database("pulse")
        home, dagster_home = root / "pulse-home", root / "dagster-home"
        dagster_home.mkdir(parents=True)
        shutil.copy(PROJECT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")  # never edited
        env = {
            **_base_env(),
            "PULSE_HOME": str(home),
            "PULSE_CONFIG": str(home / "pulse.yaml"),
            "PULSE_DATABASE_URL": pulse_db,
            "PULSE_ARTIFACTS": f"s3://{BUCKET}/pulse",
            "PULSE_S3_ENDPOINT": s3.endpoint,
            "PULSE_S3_ACCESS_KEY": s3.access_key,
            "PULSE_S3_SECRET_KEY": s3.secret_key,
            "PULSE_TRAINING_HEARTBEAT_SECONDS": "2",
            "MLFLOW_TRACKING_URI": mlflow.tracking_uri,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "HF_HUB_OFFLINE": "1",
            "DAGSTER_HOME": str(dagster_home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(postgres.port),
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "unused-the-test-server-trusts",
            "DAGSTER_PG_DB": dagster_db,
            "DAGSTER_COMPUTE_LOGS_BUCKET": LOGS_BUCKET,
            "DAGSTER_COMPUTE_LOGS_PREFIX": "dagster/compute-logs",
            "DAGSTER_S3_ENDPOINT_URL": s3.endpoint,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        pulse = Pulse(home, pulse_db, env)
        start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        (home / "pulse.yaml").write_text(CONFIG.format(start=start.isoformat()))
        _share_models(home, model_cache)
        stack = DagsterStack(root, dagster_home, env)
        p = Proof(stack, pulse, postgres, s3, mlflow, dagster_db, env)
        for bucket in (BUCKET, LOGS_BUCKET):
            p.s3_client().create_bucket(Bucket=bucket)
        try:
            with p.reporting():
                stack.start()
            yield p
        finally:
            stack.stop()


# GraphQL, as the UI and scripts use it.

_RUNS = """query Runs($filter: RunsFilter) { runsOrError(filter: $filter, limit: 50) {
  __typename ... on Runs { results { runId status creationTime tags { key value } } } } }"""
_MATERIALIZATIONS = """query Mat($key: AssetKeyInput!) { assetOrError(assetKey: $key) {
  __typename ... on Asset { assetMaterializations(limit: 20) { runId metadataEntries { label
    ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text } } } } } }"""
_CHECKS = """query Checks($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks { name } } } } } }"""
_CHECK_EXECUTIONS = """query Exec($key: AssetKeyInput!, $name: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $name, limit: 20) { runId status } }"""
_START_SENSOR = """mutation Start($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
  __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }"""
_TICKS = """query Ticks($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
  ... on Sensor { sensorState { ticks(limit: 10) { status timestamp runIds skipReason } } } } }"""


def _selector(proof: Proof) -> dict[str, str]:
    return {
        "repositoryLocationName": proof.stack.location,
        "repositoryName": REPOSITORY,
        "sensorName": SENSOR,
    }


def family_runs(proof: Proof) -> list[dict[str, Any]]:
    """The family's retrain runs, newest first, each with its tags as a dict."""
    data = proof.stack.graphql(_RUNS, {"filter": {"pipelineName": JOB}})["runsOrError"]
    assert data["__typename"] == "Runs", data
    return [{**run, "tags": {t["key"]: t["value"] for t in run["tags"]}} for run in data["results"]]


def wait_for_success(proof: Proof, known: set[str], timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    """The first run not in `known` to finish; it must have succeeded."""

    def finished() -> dict[str, Any] | None:
        done = [
            r
            for r in family_runs(proof)
            if r["runId"] not in known and r["status"] in ("SUCCESS", "FAILURE", "CANCELED")
        ]
        return done[-1] if done else None

    run = wait_for(finished, "a new retrain run to finish", timeout, interval=1)
    assert run["status"] == "SUCCESS", run
    return run


def materializations(proof: Proof, step: str, run_id: str) -> list[dict[str, Any]]:
    """The metadata of each materialization of `<family>/<step>` in run `run_id`."""
    key = {"path": [FAMILY, step]}
    asset = proof.stack.graphql(_MATERIALIZATIONS, {"key": key})["assetOrError"]
    if asset["__typename"] != "Asset":
        return []
    return [
        {e["label"]: e.get("intValue", e.get("text")) for e in m["metadataEntries"]}
        for m in asset["assetMaterializations"]
        if m["runId"] == run_id
    ]


def check_results(proof: Proof, run_id: str) -> dict[str, str]:
    """`<step>:<check>` -> status of each asset check the run executed on the family's chain."""
    found = {}
    for step in CHAIN:
        key = {"path": [FAMILY, step]}
        node = proof.stack.graphql(_CHECKS, {"key": key})["assetNodeOrError"]
        for check in node["assetChecksOrError"]["checks"]:
            executions = proof.stack.graphql(_CHECK_EXECUTIONS, {"key": key, "name": check["name"]})
            for execution in executions["assetCheckExecutions"]:
                if execution["runId"] == run_id:
                    found[f"{step}:{check['name']}"] = execution["status"]
    return found


def adapter_version(proof: Proof, run_id: str) -> dict[str, Any]:
    (adapter,) = materializations(proof, "adapter", run_id)
    return adapter


def current_version(proof: Proof) -> str:
    body = proof.s3_client().get_object(Bucket=BUCKET, Key=f"pulse/adapters/{FAMILY}/current.json")["Body"]
    return json.loads(body.read())["version"]


def champion(proof: Proof) -> str:
    from mlflow import MlflowClient

    from pulse_pipeline.core.registry.mlflow_models import CHAMPION, VERSION_TAG, registered_model_name

    model = MlflowClient(proof.mlflow.tracking_uri).get_model_version_by_alias(
        registered_model_name(FAMILY), CHAMPION
    )
    return model.tags[VERSION_TAG]


def training_slots(proof: Proof) -> Any:
    with proof.instance() as instance:
        return instance.event_log_storage.get_concurrency_info("training")


def checkpoints(proof: Proof) -> set[Path]:
    return set((proof.pulse.home / "work" / FAMILY).glob("*/step-*/loop.json"))


def ingest(proof: Proof, n: int, start: int) -> None:
    proof.pulse.ingest(_qa(n, start=start), f"qa-{start}.jsonl")


def assert_promoted(proof: Proof, run_id: str, steps: tuple[str, ...] = CHAIN) -> str:
    """The run trained, judged and promoted a version: materializations, checks, S3, MLflow."""
    for step in steps:
        assert materializations(proof, step, run_id), f"{FAMILY}/{step} was not materialized by run {run_id}"
    checks = check_results(proof, run_id)
    assert checks.get("eval_report:promotion_gate") == "SUCCEEDED", checks
    assert all(status in ("SUCCEEDED", "SKIPPED") for status in checks.values()), checks
    version = adapter_version(proof, run_id)["version"]
    assert current_version(proof) == version
    assert wait_for(lambda: champion(proof) == version, "MLflow's champion alias", 30)
    return version


def test_the_daemon_ticks_the_sensor_and_the_run_trains_evaluates_and_promotes(proof):
    with proof.reporting():
        started = proof.stack.graphql(_START_SENSOR, {"selector": _selector(proof)})["startSensor"]
        assert started["__typename"] == "Sensor" and started["sensorState"]["status"] == "RUNNING", started
        ingest(proof, 60, start=0)

        run = wait_for_success(proof, set())
        assert run["tags"]["dagster/sensor_name"] == SENSOR and run["tags"]["pulse/family"] == FAMILY
        assert_promoted(proof, run["runId"])
        info = training_slots(proof)
        assert info.slot_count == 1 and not info.claimed_slots  # the pool's limit, and it is free
        logs = proof.s3_client().list_objects_v2(Bucket=LOGS_BUCKET, Prefix="dagster/compute-logs/")
        assert logs.get("KeyCount", 0) > 0  # the steps' stdout and stderr, in the bucket


def test_kill_9_of_the_run_worker_mid_training_then_the_next_run_resumes(proof):
    with proof.reporting():
        known = {r["runId"] for r in family_runs(proof)}
        before = checkpoints(proof)
        ingest(proof, 20, start=100)
        new = wait_for(
            lambda: checkpoints(proof) - before, "a checkpoint of the new training", RUN_TIMEOUT, 0.05
        )
        lock = proof.pulse.lock_row()
        assert lock is not None and lock.holder.who == f"sensor:{SENSOR}", lock
        killed_run = lock.holder.run_id
        chain = [lock.holder.pid, *ancestors(lock.holder.pid)]
        assert proof.stack.code_server.pid in chain, chain
        # code server -> its gRPC server -> the run worker -> ... -> the training step
        worker = chain[chain.index(proof.stack.code_server.pid) - 2]
        kill_tree(worker)

        def status(run_id: str) -> str:
            return next(r["status"] for r in family_runs(proof) if r["runId"] == run_id)

        wait_for(lambda: status(killed_run) == "FAILURE", "the killed run to be marked failed", 120)
        resumed = wait_for_success(proof, known | {killed_run})
        # run_retries: the daemon re-executed the crashed run from its failed step (the sensor skipped
        # meanwhile), and the training resumed from the killed one's checkpoint.
        assert resumed["tags"].get("dagster/parent_run_id") == killed_run, resumed
        adapter = adapter_version(proof, resumed["runId"])
        assert adapter["resumed_from_step"] > 0, adapter  # no step redone from scratch
        assert new  # that checkpoint came from the killed training
        assert_promoted(proof, resumed["runId"], steps=("adapter", "eval_report", "deployment"))

        after = [r for r in family_runs(proof) if r["runId"] not in known]
        trained = [r["runId"] for r in after if materializations(proof, "adapter", r["runId"])]
        assert trained == [resumed["runId"]], after  # trained once after the kill, not twice
        assert proof.pulse.lock_row() is None
        info = training_slots(proof)
        assert not info.claimed_slots and info.active_slot_count == 0, info


def test_the_daemon_killed_while_a_run_is_queued_launches_it_once_after_restart(proof):
    with proof.reporting():
        queued = None
        for attempt in range(3):  # the daemon dequeues within 5 s: catch the run before it does
            known = {r["runId"] for r in family_runs(proof)}
            ingest(proof, 20, start=200 + 100 * attempt)
            row = wait_for(lambda known=known: _new_run(proof, known), "the sensor's run", RUN_TIMEOUT, 0.02)
            if row[1] == "QUEUED":
                proof.stack.daemon.kill9()
                if _status(proof, row[0]) == "QUEUED":
                    queued = row[0]
                    break
                proof.stack.daemon.start()
            wait_for_success(proof, known)  # dequeued before we could catch it: let it finish, try again
        assert queued, "the daemon launched every run before the test could stop it"

        time.sleep(6)  # more than a dequeue interval: nothing launches it while the daemon is down
        assert _status(proof, queued) == "QUEUED"
        proof.stack.restart_daemon_after_kill9()
        run = wait_for_success(proof, known)
        assert run["runId"] == queued
        assert_promoted(proof, queued)

        # The restarted daemon's sensor ticks on: they skip (nothing new), none asks for the run again.
        since = time.time()
        wait_for(lambda: _skipped_tick_since(proof, since), "a sensor tick after the run", 60, 1)
        after = [r for r in family_runs(proof) if r["runId"] not in known]
        assert [r["runId"] for r in after] == [queued], after


def _new_run(proof: Proof, known: set[str]) -> tuple[str, str] | None:
    """A run not in `known` once it is submitted (a sensor creates it NOT_STARTED, then queues it)."""
    rows = proof.sql("SELECT run_id, status FROM runs WHERE pipeline_name = %s", JOB)
    return next(((r, status) for r, status in rows if r not in known and status != "NOT_STARTED"), None)


def _status(proof: Proof, run_id: str) -> str:
    ((status,),) = proof.sql("SELECT status FROM runs WHERE run_id = %s", run_id)
    return status


def _skipped_tick_since(proof: Proof, since: float) -> bool:
    state = proof.stack.graphql(_TICKS, {"selector": _selector(proof)})["sensorOrError"]["sensorState"]
    return any(t["status"] == "SKIPPED" and t["timestamp"] > since for t in state["ticks"])


def test_postgresql_restarted_between_ticks_then_the_next_retrain_succeeds(proof):
    with proof.reporting():
        known = {r["runId"] for r in family_runs(proof)}
        proof.postgres.halt()
        time.sleep(8)  # a sensor tick or two, and the daemon's heartbeats, meet a database that is down
        proof.postgres.resume()
        for process in proof.stack.processes:
            assert process.alive(), f"{process.name} did not survive the database restart: {process.tail()}"
        proof.stack.wait_ready(120)
        # The webserver keeps a pooled connection per storage, not pinged before use: the first query
        # on each after the restart fails (HTTP 500) and drops it, the next one connects again.
        wait_for(lambda: check_results(proof, "none") == {}, "the webserver's asset queries to answer", 60)

        ingest(proof, 20, start=600)
        run = wait_for_success(proof, known)
        assert run["tags"]["dagster/sensor_name"] == SENSOR
        assert_promoted(proof, run["runId"])


def _start(proof: Proof, sensor: str) -> None:
    """Turn a sensor on through GraphQL. After the PostgreSQL restart above, the webserver's first
    query on each pooled storage connection fails (HTTP 500) and drops it: ask again."""
    import urllib.error

    selector = {**_selector(proof), "sensorName": sensor}

    def start() -> dict[str, Any] | None:
        try:
            return proof.stack.graphql(_START_SENSOR, {"selector": selector})["startSensor"]
        except urllib.error.HTTPError as exc:
            if exc.code != 500:
                raise
            return None

    started = wait_for(start, f"the webserver to start {sensor}", 60, interval=1)
    assert started["__typename"] == "Sensor" and started["sensorState"]["status"] == "RUNNING", started


def _run_triggered_by(proof: Proof, known: set[str], trigger: str) -> dict[str, Any]:
    run = wait_for_success(proof, known)
    assert run["tags"].get("pulse/trigger") == trigger, run["tags"]
    return run


def test_users_negative_feedback_and_a_request_each_start_a_retrain_on_a_real_tick(proof):
    """Feedback through the product's own path (pulse ingest; the capture service writes the same
    records), the daemon's own ticks: 10 thumbs down on production retrain; so does a request."""
    with proof.reporting():
        version = current_version(proof)
        known = {r["runId"] for r in family_runs(proof)}
        now = dt.datetime.now(dt.UTC)
        unhappy = [
            {"kind": "feedback", "family": FAMILY, "query": f"How many cores does node {i} have?",
             "response": "No idea.", "thumbs": "down", "model_version": version,
             "created_at": (now - dt.timedelta(minutes=i)).isoformat()}
            for i in range(10)
        ]  # fmt: skip
        proof.pulse.ingest(unhappy, "unhappy.jsonl")
        _start(proof, f"negative_feedback_{FAMILY}")
        run = _run_triggered_by(proof, known, "negative_feedback")
        assert run["tags"]["pulse/reason"].startswith(f"10 of 10 feedback on {version}")
        assert run["tags"]["dagster/sensor_name"] == f"negative_feedback_{FAMILY}"

        known.add(run["runId"])
        _start(proof, f"retrain_requests_{FAMILY}")
        done = proof.pulse.run("request-retrain", "--family", FAMILY, "--reason", "new resources published")
        assert done.returncode == 0, done.stderr
        run = _run_triggered_by(proof, known, "request")
        assert run["tags"]["pulse/reason"] == "new resources published"
        assert run["tags"]["pulse/requested_by"].startswith("cli:")
