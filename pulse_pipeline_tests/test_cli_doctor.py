"""`pulse doctor` as a user runs it: the installed entry point against a real PostgreSQL and a real
MLflow server of this module's own (so stopping them breaks no other test), all healthy, then each
stopped in turn; and in process on the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from pulse_pipeline.cli import app
from pulse_pipeline.core.store import Store
from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.mlflow_server import MlflowServer
from pulse_pipeline_tests.postgres_server import PostgresServer
from pulse_pipeline_tests.vllm_server import _free_port

PASSWORD = "doctor-pw-7f3a"  # the test cluster trusts every connection: the password only has to stay hidden
STATUSES = {"ok", "warn", "fail", "skipped"}


def _pulse(*args: str) -> subprocess.CompletedProcess[str]:
    exe = PROJECT / ".venv" / "bin" / "pulse"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pulse_pipeline.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)


def _rows(stdout: str) -> dict[str, str]:
    """Text rows by part: `name  status  detail` (names may hold one space: "annotation store")."""
    rows = {}
    for line in stdout.splitlines():
        name, _, rest = line.partition("  ")
        rows[name.strip()] = rest.strip()
    return rows


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[PostgresServer, MlflowServer]]:
    with PostgresServer() as postgres, MlflowServer() as mlflow:
        yield postgres, mlflow


@pytest.fixture
def deployment(services, monkeypatch) -> tuple[PostgresServer, MlflowServer]:
    """PULSE_DATABASE_URL (migrated, a password in it) and MLFLOW_TRACKING_URI on this module's servers."""
    postgres, mlflow = services
    url = postgres.create_database("doctor").replace("postgres@", f"postgres:{PASSWORD}@")
    Store(url).dispose()
    monkeypatch.setenv("PULSE_DATABASE_URL", url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.tracking_uri)
    return postgres, mlflow


# The tests below run in this order: the last one stops the module's MLflow server for good.


@pytest.mark.slow
def test_all_healthy_exits_0_and_json_is_one_object(deployment):
    postgres, mlflow = deployment
    out = _pulse("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = _rows(out.stdout)
    assert rows["annotation store"].startswith("ok")
    assert f"at 127.0.0.1:{postgres.port}/doctor_" in rows["annotation store"]
    assert rows["annotation store"].endswith("schema at head 0007")
    assert rows["mlflow"].startswith("ok") and f"at {mlflow.tracking_uri}: /health OK" in rows["mlflow"]
    assert rows["artifact store"].startswith("ok") and rows["vllm"].startswith("skipped")

    out = _pulse("doctor", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"healthy", "checks"} and report["healthy"] is True
    assert all(set(c) == {"name", "status", "detail", "required"} for c in report["checks"])
    assert all(c["status"] in STATUSES and "\n" not in c["detail"] for c in report["checks"])
    assert [c["name"] for c in report["checks"]][:3] == ["annotation store", "artifact store", "mlflow"]


@pytest.mark.slow
def test_a_stopped_postgresql_is_one_line_and_exit_1(deployment):
    postgres, _ = deployment
    postgres.halt()
    try:
        out = _pulse("doctor")
    finally:
        postgres.resume()
    assert out.returncode == 1
    store = _rows(out.stdout)["annotation store"]
    assert store.startswith("fail") and "cannot connect to the annotation store at postgresql" in store
    assert "Connection refused" in store
    assert _rows(out.stdout)["mlflow"].startswith("ok")
    assert out.stderr.strip().splitlines()[-1] == "pulse: required part(s) down: annotation store"
    assert PASSWORD not in out.stdout + out.stderr and "connect_timeout" not in store


@pytest.mark.slow
def test_a_stopped_mlflow_is_one_line_and_exit_1(deployment):
    _, mlflow = deployment
    uri = mlflow.tracking_uri
    mlflow.stop()
    out = _pulse("doctor", "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["healthy"] is False and checks["annotation store"]["status"] == "ok"
    assert checks["mlflow"]["status"] == "fail"
    assert (
        checks["mlflow"]["detail"]
        == f"MLflow at {uri} unreachable: ConnectError: [Errno 111] Connection refused"
    )
    assert out.stderr.strip().splitlines()[-1] == "pulse: required part(s) down: mlflow"


def test_embedded_default_passes_and_a_refused_vllm_endpoint_fails(pulse_env, monkeypatch):
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert rows["mlflow"].startswith("ok") and rows["dagster instance"].startswith("warn")
    assert rows["cuda"].split()[0] in {"ok", "warn"}  # optional: never a failure

    port = _free_port()  # nothing listens there
    monkeypatch.setenv("PULSE_VLLM_URL", f"http://127.0.0.1:{port}/, http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("PULSE_VLLM_API_KEY", "sk-doctor-secret")
    from pulse_pipeline.settings import get_settings

    get_settings.cache_clear()
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 1
    checks = json.loads(result.stdout)["checks"]
    vllm = [c for c in checks if c["name"].startswith("vllm ")]
    assert [c["status"] for c in vllm] == ["fail", "fail"]
    assert all("unreachable" in c["detail"] for c in vllm)
    assert "sk-doctor-secret" not in result.stdout + result.stderr
