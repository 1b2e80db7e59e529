"""A registry on real parts (SQLite or PostgreSQL, a local folder or the S3-API server) and small,
complete versions trained into it through the registry's own verbs."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_pipeline.core.registry import Registry

FAMILY = "intent-router"
T0 = dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC)


@pytest.fixture(
    params=[
        ("sqlite", "local"),
        ("sqlite", "s3"),
        pytest.param(("postgresql", "local"), marks=pytest.mark.postgres),
    ],
    ids=["sqlite-local", "sqlite-s3", "postgresql-local"],
)
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    """A Registry over a fresh database and an empty artifact store."""
    from pulse_pipeline.core.artifacts import open_artifact_store
    from pulse_pipeline.core.store import Store

    database, artifacts = request.param
    url = (
        f"sqlite:///{tmp_path / 'pulse.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres").create_database()
    )
    if artifacts == "local":
        store_root = open_artifact_store(str(tmp_path / "artifacts"))
    else:
        server = request.getfixturevalue("s3_server")
        bucket = f"r-{abs(hash(request.node.nodeid)) % 10**10}"
        store_root = open_artifact_store(
            f"s3://{bucket}/pulse",
            endpoint=server.endpoint,
            access_key=server.access_key,
            secret_key=server.secret_key,
        )
    db = Store(url)
    request.addfinalizer(db.dispose)
    return Registry(db, store_root)


@pytest.fixture(scope="session")
def mlflow_scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the MLflow sqlite stores live: /dev/shm when there is one. MLflow commits every statement
    of its schema migrations: ~8 s on this disk, ~2 s in memory."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path_factory.mktemp("mlflow")
        return
    folder = Path(tempfile.mkdtemp(prefix="pulse-mlflow-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated_mlflow(mlflow_scratch: Path) -> Path:
    """An empty MLflow sqlite store, migrated once per session; each test works on a copy."""
    from mlflow import MlflowClient

    path = mlflow_scratch / "template.db"
    MlflowClient(f"sqlite:///{path}").search_registered_models()
    return path


@pytest.fixture
def mlflow_uri(migrated_mlflow: Path, mlflow_scratch: Path) -> Iterator[str]:
    """A fresh, migrated MLflow sqlite store of its own (tracking and model registry)."""
    path = mlflow_scratch / f"{uuid.uuid4().hex}.db"
    shutil.copy(migrated_mlflow, path)
    yield f"sqlite:///{path}"
    path.unlink(missing_ok=True)


def adapter_folder(tmp_path: Path, minute: int) -> Path:
    """A small folder shaped like an adapter (weights differ per minute)."""
    folder = tmp_path / f"src-{minute}"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(bytes([minute % 256]) * 256)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def results(decision: str, baseline: str | None = None, reasons: tuple[str, ...] = ()) -> dict:
    """An evaluation's results as the runner writes them (what record_evaluation reads)."""
    return {
        "gate": {"decision": decision, "reasons": list(reasons) or [f"{decision.lower()} for the test"]},
        "metrics": {"test": {"candidate": {"accuracy": 0.9}, "baseline": {"accuracy": 0.8}}},
        "baseline": {"kind": "production" if baseline else "base_model", "version": baseline},
    }


def trained(
    registry: Registry,
    tmp_path: Path,
    minute: int,
    decision: str | None = None,
    *,
    family: str = FAMILY,
    base_model: str = "minilm-l6",
    watermark: int | None = None,
) -> str:
    """A version trained `minute` minutes after T0 through begin -> publish, and judged when
    `decision` is given (against the production version of the moment)."""
    record = registry.begin(
        family,
        dataset_version=f"d{minute}",
        base_model=base_model,
        training_config={"epochs": 1, "minute": minute},
        created_by="test",
        run_id=f"run-{minute}",
        watermark=minute * 10 if watermark is None else watermark,
        when=T0 + dt.timedelta(minutes=minute),
    )
    meta = {
        "trained_at": (T0 + dt.timedelta(minutes=minute)).isoformat(),
        "samples_used": 100 + minute,
        "training_loss": 0.5,
        "dataset_version": f"d{minute}",
        "base_model": base_model,
        "created_by": "test",
    }
    registry.publish(record, adapter_folder(tmp_path, minute), meta)
    if decision is not None:
        production = (registry.current(family) or {}).get("version")
        judged = results(decision, production)
        registry.artifacts.write_text(f"adapters/{family}/{record.version}/eval/results.json", _json(judged))
        registry.record_evaluation(family, record.version, judged)
    return record.version


def _json(obj: dict) -> str:
    import json

    return json.dumps(obj)
