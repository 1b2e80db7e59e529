"""The MLflow Model Registry mirror of the adapter registry: one registered model per family.

Every adapter version is registered as an MLflow model version whose `source` is the version's
artifact location and whose tag `pulse.version` carries the Pulse version name; Pulse names map
to MLflow's version numbers only through that tag. Two aliases follow the artifact registry:
`champion` (the production version) and `challenger` (the newest candidate). The artifact store's
`current.json` stays the source of truth; this module mirrors it and can be re-run at any time
(every call is idempotent).

Works with the embedded store (`sqlite:///...`) and with an MLflow server (`http://...`).
Behaviour seen with MLflow 3.17 and relied on here:

- The sqlite store accepts any `source`. A server accepts remote URIs (`s3://bucket/...`) but
  refuses local paths and `file://` URIs (unless inside the artifact folder of the given run):
  a local-folder artifact store can be mirrored into the embedded store, not into a server. That
  refusal is reported as a `ModelRegistryError` naming the cause.
- Deleting a model version deletes the aliases that pointed at it (both stores);
  `forget_version` removes them explicitly first anyway, so no store leaves a dangling alias.
- Deleting an alias that is not set is not an error; the sqlite store reports alias versions as
  ints and the server as strings (normalised to strings here), and its `search_model_versions`
  results carry no aliases (read from the registered model instead).

A server that cannot be reached fails fast, not after MLflow's default of minutes of retries: a
refused connection in ~2 s, a server that accepts but never answers in ~35 s. Each call runs with `MLFLOW_HTTP_REQUEST_MAX_RETRIES=2`, `..._BACKOFF_FACTOR=1`, `..._BACKOFF_JITTER=0.5`
and `MLFLOW_HTTP_REQUEST_TIMEOUT=10` unless the environment already sets them. MLflow reads them
from the process environment on every request, so they are set for the duration of a call only,
under a lock (process-wide; other threads talking to MLflow meanwhile see the same values).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pulse_pipeline.core.registry.errors import ModelRegistryError
from pulse_pipeline.core.secrets import mask
from pulse_pipeline.core.training.tracking import disable_telemetry

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

MODEL_PREFIX = "pulse-"
VERSION_TAG = "pulse.version"
FAMILY_TAG = "pulse.family"
CHAMPION = "champion"
CHALLENGER = "challenger"

# Fail fast when the server is unreachable; values an operator sets in the environment win.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
_ENV_LOCK = threading.RLock()
_FORBIDDEN_IN_VERSION = ("'", '"', "`", "\\", "\n", "\r")


def registered_model_name(family: str) -> str:
    """`pulse-<family>`: the prefix keeps the pipeline's models apart from others on a shared
    server and makes them easy to find (`name LIKE 'pulse-%'`); family names are already valid
    MLflow model names (no `/` or `:`)."""
    return f"{MODEL_PREFIX}{family}"


def register_version(
    tracking_uri: str,
    family: str,
    version: str,
    *,
    source: str,
    run_id: str | None,
    tags: dict[str, str],
) -> str:
    """Registers adapter `version` of `family` (artifacts at `source`, trained in MLflow run
    `run_id`) and returns its MLflow version number. A version already registered (same
    `pulse.version` tag) is returned as it is, not registered twice. The registered model is
    created on first use."""
    _check_version(tracking_uri, version)
    name = registered_model_name(family)
    with _client(tracking_uri, f"registering {name} version {version}") as client:
        existing = _find_versions(client, name, version)
        if existing:
            return str(existing[0].version)
        _ensure_registered_model(client, name, family)
        all_tags = {**tags, VERSION_TAG: version, FAMILY_TAG: family}
        created = client.create_model_version(
            name, source=source, run_id=run_id or None, tags=all_tags, await_creation_for=0
        )
        return _settle_duplicates(client, name, version, str(created.version))


def sync_aliases(tracking_uri: str, family: str, *, champion: str | None, challenger: str | None) -> None:
    """Points `champion` at the production version and `challenger` at the newest candidate
    (Pulse version names); None removes the alias. Both versions must be registered."""
    name = registered_model_name(family)
    wanted = {CHAMPION: champion, CHALLENGER: challenger}
    with _client(tracking_uri, f"setting the aliases of {name}") as client:
        if not _registered_model_exists(client, name):
            if champion is None and challenger is None:
                return
            raise ModelRegistryError(_line(tracking_uri, f"setting the aliases of {name}", "no such model"))
        for alias, version in wanted.items():
            if version is None:
                client.delete_registered_model_alias(name, alias)
                continue
            _check_version(tracking_uri, version)
            found = _find_versions(client, name, version)
            if not found:
                raise ModelRegistryError(
                    _line(
                        tracking_uri,
                        f"setting alias {alias} of {name}",
                        f"version {version} is not registered",
                    )
                )
            client.set_registered_model_alias(name, alias, found[0].version)


def forget_version(tracking_uri: str, family: str, version: str) -> bool:
    """Deletes the MLflow model version of a cleaned-up adapter version and the aliases that
    pointed at it; True if something was deleted, False if it was not registered."""
    _check_version(tracking_uri, version)
    name = registered_model_name(family)
    with _client(tracking_uri, f"forgetting {name} version {version}") as client:
        if not _registered_model_exists(client, name):
            return False
        found = {str(mv.version) for mv in _find_versions(client, name, version)}
        # search results carry no aliases on the sqlite store: read them from the model
        for alias, number in client.get_registered_model(name).aliases.items():
            if str(number) in found:
                client.delete_registered_model_alias(name, alias)
        for number in sorted(found, key=int):
            _delete_version(client, name, number)
        return bool(found)


def aliases(tracking_uri: str, family: str) -> dict[str, str]:
    """Alias -> Pulse version for the family's registered model ({} when it is not registered).
    Aliases on versions without a `pulse.version` tag (set by hand) are left out."""
    name = registered_model_name(family)
    with _client(tracking_uri, f"reading the aliases of {name}") as client:
        if not _registered_model_exists(client, name):
            return {}
        out: dict[str, str] = {}
        for alias in sorted(client.get_registered_model(name).aliases):
            model_version = client.get_model_version_by_alias(name, alias)
            if VERSION_TAG in model_version.tags:
                out[alias] = model_version.tags[VERSION_TAG]
        return out


def registered_versions(tracking_uri: str, family: str) -> dict[str, str]:
    """Pulse version -> MLflow version number for everything registered for the family."""
    name = registered_model_name(family)
    with _client(tracking_uri, f"listing the versions of {name}") as client:
        if not _registered_model_exists(client, name):
            return {}
        found = _search(client, f"name = '{name}'")
        return {mv.tags[VERSION_TAG]: str(mv.version) for mv in found if VERSION_TAG in mv.tags}


# -- helpers -------------------------------------------------------------------------------------


@contextmanager
def _client(tracking_uri: str, action: str) -> Iterator[MlflowClient]:
    """An MlflowClient for the registry at `tracking_uri`, with fast-failing HTTP settings;
    anything MLflow raises comes out as a one-line ModelRegistryError naming `action`."""
    disable_telemetry()
    with _ENV_LOCK, _scoped_env(HTTP_SETTINGS):
        try:
            from mlflow import MlflowClient

            yield MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        except ModelRegistryError:
            raise
        except Exception as exc:  # MlflowException, connection errors, sqlite errors
            raise ModelRegistryError(_line(tracking_uri, action, _describe(exc))) from exc


@contextmanager
def _scoped_env(values: dict[str, str]) -> Iterator[None]:
    added = [name for name in values if name not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _line(tracking_uri: str, action: str, why: str) -> str:
    return mask(f"MLflow registry at {tracking_uri}: {action} failed: {why}")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "local path as a model version source" in text:
        text = (
            "the MLflow server refuses a local path as the source (it accepts remote URIs such as "
            "s3://...; use the S3 artifact store with a server, or the embedded sqlite store). " + text
        )
    return text if len(text) <= 400 else text[:397] + "..."


def _check_version(tracking_uri: str, version: str) -> None:
    if not version or any(c in version for c in _FORBIDDEN_IN_VERSION):
        raise ModelRegistryError(_line(tracking_uri, "looking up a version", f"bad version name {version!r}"))


def _registered_model_exists(client: MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _ensure_registered_model(client: MlflowClient, name: str, family: str) -> None:
    from mlflow.exceptions import MlflowException

    if _registered_model_exists(client, name):
        return
    description = (
        f"LoRA adapters of the Pulse family '{family}'. One model version per adapter version "
        f"(tag {VERSION_TAG}; source = the version's folder in the artifact store). "
        f"Alias {CHAMPION} = the production version, {CHALLENGER} = the newest candidate."
    )
    try:
        client.create_registered_model(name, tags={FAMILY_TAG: family}, description=description)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # created meanwhile by another process
            raise


def _search(client: MlflowClient, filter_string: str) -> list[ModelVersion]:
    found: list[ModelVersion] = []
    token: str | None = None
    while True:
        page = client.search_model_versions(filter_string, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _find_versions(client: MlflowClient, name: str, version: str) -> list[ModelVersion]:
    """The model versions tagged with Pulse `version`, oldest first (normally one)."""
    found = _search(client, f"name = '{name}' and tags.`{VERSION_TAG}` = '{version}'")
    return sorted(found, key=lambda mv: int(mv.version))


def _settle_duplicates(client: MlflowClient, name: str, version: str, created: str) -> str:
    """Two processes registering the same version at once both create one: the oldest stays,
    the newer one is deleted by whoever created it."""
    found = _find_versions(client, name, version)
    keep = found[0].version if found else created
    if str(keep) != created:
        _delete_version(client, name, created)
    return str(keep)


def _delete_version(client: MlflowClient, name: str, mlflow_version: Any) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_model_version(name, str(mlflow_version))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # deleted meanwhile
            raise
