"""`pulse doctor`'s checks, each healthy and unhealthy on real parts: SQLite and PostgreSQL stores,
a local folder and the S3 API server, MLflow's sqlite store, refused ports, a Dagster instance."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.doctor import (
    PROBE_PREFIX,
    Check,
    healthy,
    probe_artifacts,
    probe_bitsandbytes,
    probe_cuda,
    probe_dagster,
    probe_libraries,
    probe_mlflow,
    probe_store,
    probe_vllm,
    run_checks,
    standard_checks,
)
from pulse_pipeline.core.store import Database, Store

PACKAGE_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "pulse_pipeline" / "dagster.yaml"


def _refused_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the annotation store ---------------------------------------------------------------------------


def test_store_at_head_is_ok_and_an_unmigrated_one_fails(database_url):
    status, detail = probe_store(database_url)
    assert status == "fail" and "pulse db upgrade" in detail  # no file yet (SQLite) or an empty schema
    Database(database_url, upgrade=False).upgrade("0003")
    status, detail = probe_store(database_url)
    assert (status, detail.split(": ", 1)[1]) == (
        "fail",
        "schema at 0003, head is 0007: run `pulse db upgrade`",
    )
    Store(database_url).dispose()  # migrates to head
    status, detail = probe_store(database_url)
    assert status == "ok" and detail.endswith(", schema at head 0007")
    assert detail.startswith("sqlite 3." if database_url.startswith("sqlite") else "postgresql 1")


def test_store_migrated_by_a_newer_version_fails(tmp_path):
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    with Store(url) as store, store.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    status, detail = probe_store(url)
    assert status == "fail" and "schema at 0099, which this pulse_pipeline does not know" in detail


def test_a_missing_sqlite_store_is_not_created_by_the_check(tmp_path):
    status, detail = probe_store(f"sqlite:///{tmp_path / 'nested' / 'pulse.db'}")
    assert status == "fail" and detail.startswith("no annotation store at ")
    assert not (tmp_path / "nested").exists()


def test_an_unreachable_store_is_one_line_with_its_password_masked():
    url = f"postgresql+psycopg2://pulse:s3cret-pw@127.0.0.1:{_refused_port()}/pulse"
    started = time.monotonic()
    [row] = run_checks([Check("annotation store", lambda: probe_store(url))], secrets=["s3cret-pw"])
    assert time.monotonic() - started < 5
    assert row.status == "fail" and "cannot connect to the annotation store" in row.detail
    assert "s3cret-pw" not in row.detail and "\n" not in row.detail


# -- the artifact store -----------------------------------------------------------------------------


def test_artifact_probe_leaves_nothing_behind(artifacts):
    status, detail = probe_artifacts(lambda: artifacts, "the store")
    assert status == "ok" and "wrote, read back and deleted" in detail
    assert artifacts.list(PROBE_PREFIX) == []
    if hasattr(artifacts, "local_path"):
        assert not artifacts.local_path(PROBE_PREFIX).exists()


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """`folder` made unwritable: chmod for a normal user; root ignores modes, so chattr +i."""
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)]).returncode:
            pytest.skip("running as root without chattr +i: no way to make a folder read-only")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        with pytest.raises(OSError):  # the folder really is read-only, or the test proves nothing
            (folder / "x").write_text("x")
        yield
    finally:
        subprocess.run(undo, check=True)


def test_a_read_only_artifact_folder_fails_naming_the_step(tmp_path):
    root = tmp_path / "artifacts"
    root.mkdir()
    with _read_only(root):
        status, detail = probe_artifacts(lambda: open_artifact_store(str(root)), str(root))
    assert status == "fail" and detail.startswith(f"{root}: cannot write a probe object: ")


def test_an_unreachable_s3_endpoint_fails(tmp_path):
    def opener():
        return open_artifact_store(
            "s3://bucket/pulse",
            endpoint=f"http://127.0.0.1:{_refused_port()}",
            access_key="k",
            secret_key="s",
        )

    [row] = run_checks([Check("artifact store", lambda: probe_artifacts(opener, "s3://bucket/pulse"))])
    assert row.status == "fail" and "cannot use the artifact store s3://bucket/pulse" in row.detail


# -- MLflow -----------------------------------------------------------------------------------------


def test_mlflow_sqlite_store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    status, detail = probe_mlflow(uri)
    assert status == "ok" and "not created yet" in detail
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # MLflow creates its schema
    status, detail = probe_mlflow(uri)
    assert status == "ok" and detail.startswith(f"sqlite at {tmp_path / 'mlflow.db'}, schema ")


def test_mlflow_sqlite_file_that_is_no_store_fails(tmp_path):
    (tmp_path / "mlflow.db").write_text("not a database")
    status, detail = probe_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert status == "fail" and "is not an MLflow store" in detail
    (tmp_path / "empty.db").touch()
    assert probe_mlflow(f"sqlite:///{tmp_path / 'empty.db'}")[0] == "fail"
    status, detail = probe_mlflow(f"sqlite:///{tmp_path / 'missing-folder' / 'mlflow.db'}")
    assert status == "fail" and "does not exist" in detail


def test_an_mlflow_server_that_refuses_fails_quickly():
    started = time.monotonic()
    status, detail = probe_mlflow(f"http://127.0.0.1:{_refused_port()}")
    assert time.monotonic() - started < 5
    assert status == "fail" and "unreachable" in detail and "Connection refused" in detail


# -- vLLM -------------------------------------------------------------------------------------------


def test_a_vllm_url_that_refuses_fails_with_one_line():
    url = f"http://127.0.0.1:{_refused_port()}"
    [row] = run_checks([Check(f"vllm {url}", lambda: probe_vllm(url, "sk-key", 1.0))], secrets=["sk-key"])
    assert row.status == "fail" and row.detail.startswith(f"vLLM server at {url} unreachable")


def test_a_vllm_url_that_is_no_http_url_fails():
    [row] = run_checks([Check("vllm", lambda: probe_vllm("ftp://host", "", 1.0))])
    assert row.status == "fail" and "must be http(s)://host[:port]" in row.detail


@pytest.mark.slow
def test_a_real_vllm_server_with_and_without_its_api_key(vllm_server):
    status, detail = probe_vllm(vllm_server.url, vllm_server.api_key)
    assert status == "ok" and "/health OK, base model " in detail
    [row] = run_checks([Check("vllm", lambda: probe_vllm(vllm_server.url, "sk-wrong-key"))], ["sk-wrong-key"])
    assert row.status == "fail" and row.detail.endswith("GET /v1/models failed with HTTP 401: Unauthorized")


# -- Dagster ----------------------------------------------------------------------------------------


def _embedded_instance(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PACKAGE_DAGSTER_YAML, home / "dagster.yaml")
    return home


def _beat(home: Path) -> None:
    """Heartbeats from every daemon the instance needs, written as dagster-daemon writes them."""
    import dagster as dg
    from dagster._daemon.types import DaemonHeartbeat

    with dg.DagsterInstance.from_config(str(home)) as instance:
        for daemon in instance.get_required_daemon_types():
            instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), daemon, None, None))


def test_dagster_without_an_instance_warns(tmp_path):
    status, detail = probe_dagster(tmp_path / "dagster")
    assert status == "warn" and "no instance at" in detail


def test_embedded_dagster_without_a_daemon_warns_and_with_one_is_ok(pulse_env):
    home = _embedded_instance(pulse_env / "dagster")  # DAGSTER_HOME (conftest), as dagster.yaml reads it
    status, detail = probe_dagster(home)
    assert status == "warn" and detail.startswith(f"sqlite storage at {home}, 0 run(s); daemon not running")
    _beat(home)
    status, detail = probe_dagster(home)
    assert status == "ok" and "daemon running" in detail


# As deploy/dagster.yaml does: dagster-postgres storage from environment variables.
PRODUCTION_DAGSTER_YAML = """
storage:
  postgres:
    postgres_db:
      username: postgres
      hostname: 127.0.0.1
      port: {env: DOCTOR_PG_PORT}
      db_name: {env: DOCTOR_PG_DB}
      scheme: postgresql+psycopg2  # a bare postgresql:// is psycopg 3 under SQLAlchemy 2.1
telemetry:
  enabled: false
"""


@pytest.mark.postgres
def test_production_dagster_requires_its_daemon_and_its_storage(tmp_path, postgres, monkeypatch):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(PRODUCTION_DAGSTER_YAML)
    monkeypatch.setenv("DOCTOR_PG_PORT", str(postgres.port))
    monkeypatch.setenv("DOCTOR_PG_DB", postgres.create_database("dagster").rsplit("/", 1)[1])
    status, detail = probe_dagster(home)
    assert status == "fail" and f"postgres storage at 127.0.0.1:{postgres.port}/dagster_" in detail
    assert "0 run(s); daemon not running (no heartbeat): sensors, schedules and queued runs" in detail
    _beat(home)
    assert probe_dagster(home)[0] == "ok"
    monkeypatch.setenv("DOCTOR_PG_PORT", str(_refused_port()))
    started = time.monotonic()
    [row] = run_checks([Check("dagster instance", lambda: probe_dagster(home))])
    assert time.monotonic() - started < 5  # not dagster-postgres's retries, ~6 s per storage
    assert row.status == "fail" and row.detail.startswith("postgres storage at 127.0.0.1:")
    assert "unreachable: connection to server at" in row.detail and "\n" not in row.detail


# -- CUDA, bitsandbytes, versions -------------------------------------------------------------------


def test_cuda_and_bitsandbytes_never_fail_without_cuda():
    import torch

    cuda, bnb = probe_cuda(), probe_bitsandbytes()
    if torch.cuda.is_available():
        assert cuda[0] == "ok" and torch.cuda.get_device_name(0) in cuda[1]
        assert bnb[0] == "ok" and "4-bit NF4 round trip" in bnb[1]
    else:
        assert cuda == ("warn", f"no CUDA device (torch {torch.__version__}): training runs on the CPU")
        assert bnb[0] == "ok" and "not used on the CPU" in bnb[1]


def test_library_versions_row():
    from importlib.metadata import version

    status, detail = probe_libraries()
    assert status == "ok" and f"dagster {version('dagster')}" in detail and "mlflow " in detail


# -- running the checks -----------------------------------------------------------------------------


def test_checks_run_concurrently_with_deadlines_and_masked_one_line_errors():
    def slow():
        time.sleep(5)
        return "ok", "never seen"

    def broken():
        raise RuntimeError("token=abc123 went\nwrong")

    started = time.monotonic()
    rows = run_checks(
        [
            Check("slow required", slow, deadline=0.5),
            Check("slow optional", slow, required=False, deadline=0.5),
            Check("broken", broken),
            Check("fine", lambda: ("ok", "checked")),
        ]
    )
    assert time.monotonic() - started < 2  # the deadlines run side by side
    assert [(r.name, r.status) for r in rows] == [
        ("slow required", "fail"),
        ("slow optional", "warn"),
        ("broken", "fail"),
        ("fine", "ok"),
    ]
    assert rows[0].detail == "no answer within 0.5 s"
    assert rows[2].detail == "token=*** went wrong"
    assert not healthy(rows) and healthy(rows[1:2] + rows[3:])


def test_standard_checks_on_the_embedded_default(pulse_env):
    url = f"sqlite:///{pulse_env / 'pulse.db'}"
    Store(url).dispose()
    checks = standard_checks(
        database_url=url,
        artifacts_location=str(pulse_env / "artifacts"),
        open_artifacts=lambda: open_artifact_store(str(pulse_env / "artifacts")),
        tracking_uri=f"sqlite:///{pulse_env / 'mlflow.db'}",
        vllm_urls=[],
        vllm_api_key="",
        dagster_home=pulse_env / "dagster",
    )
    rows = {row.name: row for row in run_checks(checks)}
    assert list(rows) == [
        "annotation store", "artifact store", "mlflow", "vllm", "dagster instance", "cuda", "bitsandbytes",
        "libraries",
    ]  # fmt: skip
    assert rows["vllm"].status == "skipped"
    assert healthy(rows.values())
