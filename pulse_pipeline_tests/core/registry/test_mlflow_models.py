"""The MLflow Model Registry mirror: registration, champion/challenger aliases through promotion,
rollback and cleanup, on the embedded sqlite store (fast) and on a REAL MLflow server started by
the tests (slow)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_pipeline.core.registry import mlflow_models
from pulse_pipeline.core.registry.errors import ModelRegistryError
from pulse_pipeline.core.registry.mlflow_models import (
    CHALLENGER,
    CHAMPION,
    aliases,
    forget_version,
    register_version,
    registered_model_name,
    registered_versions,
    sync_aliases,
)
from pulse_pipeline_tests.mlflow_server import MlflowServer

FAMILY = "intent-router"


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _sources(root: str) -> dict[str, str]:
    return {v: f"{root}/adapters/{FAMILY}/{v}" for v in ("v1", "v2", "v3")}


def _register_three(uri: str, sources: dict[str, str], run_id: str | None = None) -> dict[str, str]:
    numbers = {}
    for version, source in sources.items():
        tags = {"dataset_version": f"ds-{version}", "decision": "DEPLOY"}
        numbers[version] = register_version(uri, FAMILY, version, source=source, run_id=run_id, tags=tags)
    return numbers


def _check_lifecycle(uri: str, sources: dict[str, str], run_id: str | None = None) -> None:
    """Register, re-register, promote, canary, roll back and clean up; aliases follow each step."""
    numbers = _register_three(uri, sources, run_id)
    assert sorted(numbers.values(), key=int) == list(numbers.values())  # 1, 2, 3 in order
    assert _register_three(uri, sources, run_id) == numbers  # idempotent: nothing registered twice
    assert registered_versions(uri, FAMILY) == numbers
    assert aliases(uri, FAMILY) == {}

    model = _client(uri).get_registered_model(registered_model_name(FAMILY))
    assert "intent-router" in model.description and CHAMPION in model.description

    sync_aliases(uri, FAMILY, champion="v1", challenger="v2")  # v1 in production, v2 a candidate
    assert aliases(uri, FAMILY) == {CHAMPION: "v1", CHALLENGER: "v2"}
    sync_aliases(uri, FAMILY, champion="v2", challenger="v3")  # promote v2; v3 is the newest candidate
    assert aliases(uri, FAMILY) == {CHAMPION: "v2", CHALLENGER: "v3"}
    sync_aliases(uri, FAMILY, champion="v2", challenger="v3")  # re-sync: no change
    assert aliases(uri, FAMILY) == {CHAMPION: "v2", CHALLENGER: "v3"}
    sync_aliases(uri, FAMILY, champion="v1", challenger="v3")  # rollback to v1
    assert aliases(uri, FAMILY) == {CHAMPION: "v1", CHALLENGER: "v3"}

    by_alias = _client(uri).get_model_version_by_alias(registered_model_name(FAMILY), CHAMPION)
    assert str(by_alias.version) == numbers["v1"]
    assert by_alias.source == sources["v1"]
    assert by_alias.tags["pulse.version"] == "v1"
    assert by_alias.tags["pulse.family"] == FAMILY
    assert by_alias.tags["dataset_version"] == "ds-v1"
    assert (by_alias.run_id or None) == run_id

    assert forget_version(uri, FAMILY, "v3") is True  # cleanup of the challenger
    assert aliases(uri, FAMILY) == {CHAMPION: "v1"}
    assert _client(uri).get_registered_model(registered_model_name(FAMILY)).aliases.keys() == {CHAMPION}
    assert registered_versions(uri, FAMILY) == {"v1": numbers["v1"], "v2": numbers["v2"]}
    assert forget_version(uri, FAMILY, "v3") is False  # absent: no error
    assert forget_version(uri, "never-registered", "v1") is False

    with pytest.raises(ModelRegistryError, match="version v3 is not registered"):
        sync_aliases(uri, FAMILY, champion="v1", challenger="v3")
    sync_aliases(uri, FAMILY, champion="v1", challenger=None)  # no candidate left
    assert aliases(uri, FAMILY) == {CHAMPION: "v1"}

    # A version registered again after cleanup gets a new MLflow number, never a reused one.
    again = register_version(uri, FAMILY, "v3", source=sources["v3"], run_id=run_id, tags={})
    assert int(again) > int(numbers["v3"])
    sync_aliases(uri, FAMILY, champion=None, challenger=None)
    assert aliases(uri, FAMILY) == {}


# -- embedded sqlite store (default run) ---------------------------------------------------------


def test_registered_model_name() -> None:
    assert registered_model_name("call-analysis") == "pulse-call-analysis"


def test_lifecycle_on_sqlite_store(mlflow_uri: str, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    sources = _sources(str(root))
    sources["v2"] = (root / "adapters" / FAMILY / "v2").as_uri()  # file:// URIs are accepted too
    _check_lifecycle(mlflow_uri, sources)


def test_s3_sources_and_run_link_on_sqlite_store(mlflow_uri: str) -> None:
    client = _client(mlflow_uri)
    run_id = client.create_run(client.create_experiment("training-intent-router")).info.run_id
    _check_lifecycle(mlflow_uri, _sources("s3://pulse-bucket/pulse"), run_id=run_id)


def test_families_are_separate_models(mlflow_uri: str) -> None:
    register_version(mlflow_uri, "a", "v1", source="s3://b/a/v1", run_id=None, tags={})
    register_version(mlflow_uri, "b", "v1", source="s3://b/b/v1", run_id=None, tags={})
    sync_aliases(mlflow_uri, "a", champion="v1", challenger=None)
    assert aliases(mlflow_uri, "a") == {CHAMPION: "v1"}
    assert aliases(mlflow_uri, "b") == {}
    assert forget_version(mlflow_uri, "b", "v1") is True
    assert registered_versions(mlflow_uri, "a") == {"v1": "1"}


def test_sync_aliases_on_unknown_family(mlflow_uri: str) -> None:
    sync_aliases(mlflow_uri, "nobody", champion=None, challenger=None)  # nothing to clear
    with pytest.raises(ModelRegistryError) as err:
        sync_aliases(mlflow_uri, "nobody", champion="v1", challenger=None)
    message = str(err.value)
    assert "\n" not in message and mlflow_uri in message and "pulse-nobody" in message


def test_concurrent_duplicate_is_settled(mlflow_uri: str) -> None:
    """Another process registered the same version between our look-up and our create."""
    name = registered_model_name(FAMILY)
    register_version(mlflow_uri, FAMILY, "v1", source="s3://b/v1", run_id=None, tags={})
    client = _client(mlflow_uri)
    duplicate = client.create_model_version(name, "s3://b/v1", tags={"pulse.version": "v1"})
    assert mlflow_models._settle_duplicates(client, name, "v1", str(duplicate.version)) == "1"
    assert registered_versions(mlflow_uri, FAMILY) == {"v1": "1"}
    assert len(client.search_model_versions(f"name = '{name}'")) == 1


@pytest.mark.parametrize("bad", ["", "v1'--", 'v"1', "v`1"])
def test_bad_version_names_refused(mlflow_uri: str, bad: str) -> None:
    with pytest.raises(ModelRegistryError, match="bad version name"):
        register_version(mlflow_uri, FAMILY, bad, source="s3://b/x", run_id=None, tags={})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast() -> None:
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ModelRegistryError) as err:
        register_version(uri, FAMILY, "v1", source="s3://b/v1", run_id=None, tags={})
    assert time.monotonic() - started < 15
    message = str(err.value)
    assert "\n" not in message and uri in message and "registering pulse-intent-router version v1" in message


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(listener.accept()[0])
                except OSError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        stop.set()
        thread.join(timeout=2)
        for conn in accepted:
            conn.close()


def test_silent_server_times_out_and_operator_settings_win(
    silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # the operator's value beats the module's 10 s
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    started = time.monotonic()
    with pytest.raises(ModelRegistryError, match=silent_server):
        aliases(silent_server, FAMILY)
    assert time.monotonic() - started < 8
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR" not in os.environ  # scoped: set only during the call


# -- a real MLflow server (slow) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server() -> Iterator[MlflowServer]:
    with MlflowServer() as server:
        yield server


@pytest.mark.slow
def test_lifecycle_on_mlflow_server(mlflow_server: MlflowServer) -> None:
    uri = mlflow_server.tracking_uri
    client = _client(uri)
    run_id = client.create_run(client.create_experiment("training-intent-router")).info.run_id
    _check_lifecycle(uri, _sources("s3://pulse-bucket/pulse"), run_id=run_id)


@pytest.mark.slow
def test_server_refuses_local_sources(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    uri = mlflow_server.tracking_uri
    with pytest.raises(ModelRegistryError) as err:
        register_version(uri, "local-family", "v1", source=str(tmp_path / "v1"), run_id=None, tags={})
    message = str(err.value)
    assert "\n" not in message and uri in message and "refuses a local path" in message
    assert registered_versions(uri, "local-family") == {}


@pytest.mark.slow
def test_server_stopped_mid_session_fails_fast() -> None:
    with MlflowServer() as server:
        uri = server.tracking_uri
        register_version(uri, FAMILY, "v1", source="s3://b/v1", run_id=None, tags={})
        sync_aliases(uri, FAMILY, champion="v1", challenger=None)
    started = time.monotonic()
    with pytest.raises(ModelRegistryError, match=uri):
        aliases(uri, FAMILY)
    assert time.monotonic() - started < 15
