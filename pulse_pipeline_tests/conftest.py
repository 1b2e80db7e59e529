"""Shared fixtures: an isolated PULSE_HOME per test, the shipped families, and the store on
SQLite and on a real PostgreSQL server started once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_pipeline.core.families import PulseConfig, load_config
from pulse_pipeline.core.store import Store
from pulse_pipeline.settings import get_settings
from pulse_pipeline_tests.label_studio_server import LabelStudioServer
from pulse_pipeline_tests.postgres_server import PostgresServer
from pulse_pipeline_tests.s3_server import S3Server
from pulse_pipeline_tests.vllm_server import TEST_API_KEY, VllmTestServer, serve_exe

PROJECT = Path(__file__).resolve().parents[1]
CLINC150 = PROJECT.parent / "shared" / "data" / "clinc150"


@pytest.fixture(autouse=True)
def pulse_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own PULSE_HOME and the project's pulse.yaml; nothing leaks between tests."""
    home = tmp_path / "pulse-home"
    monkeypatch.setenv("PULSE_HOME", str(home))
    monkeypatch.setenv("PULSE_CONFIG", str(PROJECT / "pulse.yaml"))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test may reach for a model hub
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    for var in (
        "PULSE_DATABASE_URL",
        "PULSE_ARTIFACTS",
        "PULSE_S3_ENDPOINT",
        "PULSE_S3_ACCESS_KEY",
        "PULSE_S3_SECRET_KEY",
        "MLFLOW_TRACKING_URI",
        "PULSE_VLLM_URL",
        "PULSE_VLLM_API_KEY",
        "PULSE_JUDGE_URL",
        "PULSE_JUDGE_API_KEY",
        "PULSE_JUDGE_MODEL",
        "PULSE_ORACLE_URL",
        "PULSE_ORACLE_API_KEY",
        "PULSE_ORACLE_MODEL",
        "PULSE_ORACLE_PRICE_INPUT",
        "PULSE_ORACLE_PRICE_OUTPUT",
        "PULSE_ALERT_WEBHOOK",
        "PULSE_DAGSTER_URL",
        "PULSE_PUSHGATEWAY_URL",
        "PULSE_METRICS_TEXTFILE",
        "PULSE_STEP_EXECUTOR",
        "PULSE_TRAINING_K8S_CONFIG",
        "PULSE_TRAINING_IMAGE",
        "DAGSTER_CURRENT_IMAGE",
    ):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def config() -> PulseConfig:
    return load_config(PROJECT / "pulse.yaml")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One base-model cache for the session (the tiny model is built once, not per test)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pulse.db'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    with Store(database_url) as s:
        yield s


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def artifacts(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty artifact store: a local folder, and a bucket on a real S3-API server."""
    from pulse_pipeline.core.artifacts import open_artifact_store

    if request.param == "local":
        return open_artifact_store(str(tmp_path / "artifacts"))
    server = request.getfixturevalue("s3_server")
    bucket = f"t-{abs(hash(request.node.nodeid)) % 10**10}"
    return open_artifact_store(
        f"s3://{bucket}/pulse",
        endpoint=server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
    )


@pytest.fixture(scope="session")
def smollm2(model_cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a local checkpoint (converted once per session)."""
    from pulse_pipeline.core.training.base_models import resolve_base_model

    return resolve_base_model("smollm2-135m", model_cache).path


@pytest.fixture(scope="session")
def label_studio_server() -> Iterator[LabelStudioServer]:
    """A real Label Studio server (its own venv, SQLite), started once per session; skips when
    scripts/install-label-studio.sh has not run."""
    with LabelStudioServer() as server:
        yield server


@pytest.fixture(scope="session")
def vllm_server(request: pytest.FixtureRequest) -> Iterator[VllmTestServer]:
    """A real vLLM server (CPU build, float32, runtime LoRA loading, API key) on SmolLM2-135M,
    started once per session; skips when scripts/install-vllm.sh has not run."""
    serve_exe()  # skips before the model is converted
    with VllmTestServer(request.getfixturevalue("smollm2"), api_key=TEST_API_KEY) as server:
        yield server
