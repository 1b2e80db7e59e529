"""`pulse doctor`'s checks: is each part of the deployment reachable and usable, in one line each.

One `Row` per part: its name, a status and a one-line detail, which says what was checked when the
part is healthy and the error when it is not. Statuses:

    ok       checked and healthy
    warn     an optional part is missing or down; nothing that must run is affected
    fail     a REQUIRED part is down: `pulse doctor` exits non-zero
    skipped  not configured here (no PULSE_VLLM_URL)

Required: the annotation store (reachable, schema at the migrations' head), the artifact store (a
probe object written, read back and deleted under `.pulse-doctor/`), MLflow's tracking URI, every
vLLM endpoint in PULSE_VLLM_URL, the Dagster instance's storage, and bitsandbytes where CUDA is
present (training's `quantization: auto` loads 4-bit NF4 there).

The Dagster daemon is required by a production instance only (storage other than SQLite, as in
deploy/dagster.yaml): there it is what ticks sensors and schedules and launches queued runs, so
without it nothing retrains. The embedded SQLite instance runs `pulse` commands' jobs in their own
process and `make ui` (`dagster dev`) starts a daemon of its own, so there a missing daemon is a
warning. CUDA is optional (training runs on the CPU without it), and so is bitsandbytes on a CPU.

`run_checks` runs the checks concurrently, each in a daemon thread with a deadline, so a server that
does not answer costs its deadline (network probes use PROBE_TIMEOUT), never the TCP timeout. The
heavy libraries (dagster, torch, bitsandbytes) are imported inside the checks that need them.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import sqlalchemy as sa

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.secrets import mask
from pulse_pipeline.core.store.database import Database, StoreError, migration_scripts, parse_url

if TYPE_CHECKING:
    from pulse_pipeline.core.artifacts import ArtifactStore

Status = Literal["ok", "warn", "fail", "skipped"]
Finding = tuple[Status, str]

PROBE_TIMEOUT = 3.0  # seconds a network request of a probe may take
NETWORK_DEADLINE = 10.0  # seconds a network check may take in all (connect, a retry, two requests)
LOCAL_DEADLINE = 60.0  # seconds a check that imports a heavy library may take (torch on a busy CPU)
PROBE_PREFIX = ".pulse-doctor"  # the artifact store's reserved prefix for the probe object
LIBRARIES = ("dagster", "torch", "transformers", "peft", "mlflow", "vllm")

# torch and bitsandbytes are imported by two checks: one at a time, not in two threads at once.
_TORCH = threading.Lock()


@dataclass(frozen=True)
class Row:
    """One part's result: `detail` is what was checked, or the one-line error. `required`: whether
    the part must be up (bitsandbytes is where CUDA is present; a failed part always was)."""

    name: str
    status: Status
    detail: str
    required: bool


@dataclass(frozen=True)
class Check:
    """A probe of one part. A probe that raises or overruns `deadline` fails the row when the part
    is `required`, and warns otherwise."""

    name: str
    probe: Callable[[], Finding]
    required: bool = True
    deadline: float = NETWORK_DEADLINE


def standard_checks(
    *,
    database_url: str,
    artifacts_location: str,
    open_artifacts: Callable[[], ArtifactStore],
    tracking_uri: str,
    vllm_urls: Sequence[str],
    vllm_api_key: str,
    dagster_home: Path,
    timeout: float = PROBE_TIMEOUT,
) -> list[Check]:
    """Every part `pulse doctor` looks at, in the order it prints them."""
    checks = [
        Check("annotation store", lambda: probe_store(database_url, timeout)),
        Check("artifact store", lambda: probe_artifacts(open_artifacts, artifacts_location)),
        Check("mlflow", lambda: probe_mlflow(tracking_uri, timeout)),
    ]
    checks += [
        Check(f"vllm {url}", lambda url=url: probe_vllm(url, vllm_api_key, timeout)) for url in vllm_urls
    ]
    if not vllm_urls:
        checks.append(
            Check("vllm", lambda: ("skipped", "PULSE_VLLM_URL is not set: serving is not configured"))
        )
    checks += [
        Check("dagster instance", lambda: probe_dagster(dagster_home, timeout), deadline=LOCAL_DEADLINE),
        Check("cuda", probe_cuda, required=False, deadline=LOCAL_DEADLINE),
        Check("bitsandbytes", probe_bitsandbytes, required=False, deadline=LOCAL_DEADLINE),
        Check("libraries", probe_libraries, required=False),
    ]
    return checks


def run_checks(checks: Sequence[Check], secrets: Iterable[str] = ()) -> list[Row]:
    """Run the checks concurrently; one row each, in order, every secret in `secrets` masked."""
    known = list(secrets)
    _import_shared_libraries()
    found: dict[int, Finding] = {}
    threads = []
    for index, check in enumerate(checks):
        thread = threading.Thread(
            target=_run_one, args=(check, index, found), name=f"doctor {check.name}", daemon=True
        )
        thread.start()
        threads.append(thread)
    start = time.monotonic()
    for check, thread in zip(checks, threads, strict=True):
        thread.join(max(0.0, start + check.deadline - time.monotonic()))
    rows = []
    for index, check in enumerate(checks):
        status, detail = found.get(index) or (_down(check), f"no answer within {check.deadline:g} s")
        required = check.required or status == "fail"
        rows.append(Row(mask(check.name, known), status, mask(detail, known), required))
    return rows


def healthy(rows: Iterable[Row]) -> bool:
    """True when no required part is down."""
    return all(row.status != "fail" for row in rows)


def _run_one(check: Check, index: int, found: dict[int, Finding]) -> None:
    try:
        found[index] = check.probe()
    except Exception as exc:  # noqa: BLE001 - every failure is the row's one line
        found[index] = (_down(check), _one_line(exc))


def _import_shared_libraries() -> None:
    """Import what several checks use here, once, rather than in two threads at once."""
    import alembic.runtime.migration  # noqa: F401
    import alembic.script  # noqa: F401
    import httpx  # noqa: F401


def _down(check: Check) -> Status:
    return "fail" if check.required else "warn"


# -- the annotation store ---------------------------------------------------------------------------


def probe_store(url: str, timeout: float = PROBE_TIMEOUT) -> Finding:
    """Connect, and compare the schema's Alembic revision with the migrations' head."""
    from alembic.runtime.migration import MigrationContext

    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    timed_url = url
    if backend == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:"):
            return "fail", f"{mask(url)} is no database file"
        if not Path(path).is_file():
            return "fail", f"no annotation store at {path} yet: run `pulse db upgrade` to create it"
        where = path
    else:
        where = _server_and_database(parsed)
        if backend == "postgresql" and "connect_timeout" not in parsed.query:
            timed_url = parsed.update_query_dict(
                {"connect_timeout": str(max(1, round(timeout)))}
            ).render_as_string(hide_password=False)
    database = Database(timed_url, upgrade=False)
    try:
        with database.connect() as conn:
            server = ".".join(str(n) for n in (conn.dialect.server_version_info or ())[:2])
            revision = MigrationContext.configure(conn).get_current_revision()
    except StoreError as exc:  # it names the URL as the user wrote it, without the added timeout
        raise StoreError(str(exc).replace(mask(timed_url), mask(url))) from None
    finally:
        database.dispose()
    what = f"{backend} {server} at {where}".replace("  ", " ")
    scripts = migration_scripts()
    head = scripts.get_current_head()
    if revision == head:
        return "ok", f"{what}, schema at head {head}"
    if revision is None:
        return "fail", f"{what}: schema empty (head is {head}): run `pulse db upgrade`"
    if revision in {script.revision for script in scripts.walk_revisions()}:
        return "fail", f"{what}: schema at {revision}, head is {head}: run `pulse db upgrade`"
    return "fail", (
        f"{what}: schema at {revision}, which this pulse_pipeline does not know (head {head}): "
        "the store was migrated by a newer version"
    )


# -- the artifact store -----------------------------------------------------------------------------


def probe_artifacts(open_store: Callable[[], ArtifactStore], location: str) -> Finding:
    """Write a small object under PROBE_PREFIX, read it back, delete it."""
    store = open_store()
    folder = f"{PROBE_PREFIX}/{uuid.uuid4().hex}"
    key = f"{folder}/probe.txt"
    payload = f"pulse doctor probe {folder}".encode()
    step = "write"
    try:
        store.write_bytes(key, payload)
        step = "read back"
        if store.read_bytes(key) != payload:
            return "fail", f"{location}: a probe object read back differs from what was written"
        step = "delete"
        store.delete_prefix(folder)
        if store.exists(key):
            return "fail", f"{location}: a probe object is still there after it was deleted"
    except Exception as exc:  # noqa: BLE001 - the step that failed, in one line
        return "fail", f"{location}: cannot {step} a probe object: {_one_line(exc)}"
    finally:
        if isinstance(store, LocalArtifactStore):  # the reserved folder, when no other probe uses it
            with contextlib.suppress(OSError):
                store.local_path(PROBE_PREFIX).rmdir()
    return "ok", f"{location}: wrote, read back and deleted a probe object under {PROBE_PREFIX}/"


# -- MLflow -----------------------------------------------------------------------------------------


def probe_mlflow(uri: str, timeout: float = PROBE_TIMEOUT) -> Finding:
    """http(s): GET /health and /version; sqlite: the file opens read-only and has a schema;
    a local folder (file store): it exists or can be made."""
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        return _probe_mlflow_server(uri, timeout)
    if scheme == "sqlite":
        return _probe_mlflow_sqlite(sa.engine.make_url(uri).database or "", timeout)
    if scheme in ("", "file"):
        folder = Path(urlsplit(uri).path if scheme else uri)
        if folder.is_dir():
            return "ok", f"file store at {folder}"
        if folder.exists():
            return "fail", f"file store {folder} is not a folder"
        return "ok", f"file store at {folder}: not created yet (the first tracked training creates it)"
    return "warn", f"{mask(uri)}: doctor checks http(s), sqlite and folder tracking URIs, not {scheme}"


def _probe_mlflow_server(uri: str, timeout: float) -> Finding:
    import httpx

    base = uri.rstrip("/")
    shown = mask(base)
    with httpx.Client(timeout=timeout) as client:
        try:
            health = client.get(f"{base}/health")
        except httpx.TimeoutException:
            return "fail", f"MLflow at {shown} did not answer GET /health within {timeout:g} s"
        except httpx.TransportError as exc:
            return "fail", f"MLflow at {shown} unreachable: {type(exc).__name__}: {_one_line(exc)}"
        if health.status_code != 200:
            return "fail", f"MLflow at {shown}: GET /health answered HTTP {health.status_code}"
        try:
            answer = client.get(f"{base}/version")
            server = f"MLflow {answer.text.strip()}" if answer.status_code == 200 else "MLflow"
        except httpx.HTTPError:
            server = "MLflow"
    return "ok", f"{server} at {shown}: /health OK"


def _probe_mlflow_sqlite(path: str, timeout: float) -> Finding:
    file = Path(path)
    if not file.exists():
        if not file.parent.is_dir():
            return "fail", f"sqlite at {file}: its folder {file.parent} does not exist"
        return "ok", f"sqlite at {file}: not created yet (the first tracked training creates it)"
    try:
        conn = sqlite3.connect(f"{file.as_uri()}?mode=ro", uri=True, timeout=timeout)
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return "fail", f"sqlite at {file} is not an MLflow store: {_one_line(exc)}"
    if row is None:
        return "fail", f"sqlite at {file} is not an MLflow store: its schema has no revision"
    return "ok", f"sqlite at {file}, schema {row[0]}"


# -- vLLM -------------------------------------------------------------------------------------------


def probe_vllm(url: str, api_key: str = "", timeout: float = PROBE_TIMEOUT) -> Finding:
    """GET /health and /v1/models (with the API key) on one endpoint."""
    from pulse_pipeline.core.serving import VllmServer

    with VllmServer(url, api_key=api_key or None, timeout=timeout) as server:
        engine_up = server.health()
        models = server.models()  # ServingError: unreachable, refused, wrong key: the row's one line
    shown = mask(url.rstrip("/"))
    if not engine_up:
        return "fail", f"vLLM at {shown}: GET /health did not answer 200 (the engine is not up)"
    base = next((str(m.get("id")) for m in models if m.get("parent") is None), None)
    adapters = sum(1 for m in models if m.get("parent") is not None)
    if base is None:
        return "fail", f"vLLM at {shown}: GET /v1/models lists no base model"
    return "ok", f"vLLM at {shown}: /health OK, base model {base}, {adapters} adapter(s) loaded"


# -- Dagster ----------------------------------------------------------------------------------------


def probe_dagster(home: Path, timeout: float = PROBE_TIMEOUT) -> Finding:
    """The instance at DAGSTER_HOME: its storage answers, and its daemon's heartbeats are recent.

    The embedded dagster.yaml names its folder through the DAGSTER_HOME environment variable: the
    caller sets it. PostgreSQL storage is tried once first (dagster-postgres retries a refused
    connection for about 6 s per storage)."""
    if not (home / "dagster.yaml").is_file():
        return "warn", (
            f"no instance at {home} yet (no dagster.yaml): the first `pulse` command that runs a job "
            "creates the embedded one"
        )
    import dagster as dg
    from dagster._core.storage.runs import SqliteRunStorage
    from dagster._daemon.controller import get_daemon_statuses

    try:
        postgres = _postgres_storage_url(home)
    except Exception as exc:  # noqa: BLE001 - an invalid dagster.yaml
        return "fail", f"{home / 'dagster.yaml'}: {_first_line(exc)}"
    where = str(home)
    if postgres is not None:
        where = _server_and_database(parse_url(postgres))
        unreachable = _postgres_unreachable(postgres, timeout)
        if unreachable:
            return "fail", f"postgres storage at {where} unreachable: {unreachable}"
    try:
        instance = dg.DagsterInstance.from_config(str(home))
    except Exception as exc:  # noqa: BLE001 - storage unreachable or dagster.yaml invalid
        return "fail", f"instance at {home} cannot be opened: {_first_line(exc)}"
    try:
        embedded = isinstance(instance.run_storage, SqliteRunStorage)
        kind = type(instance.run_storage).__name__.removesuffix("RunStorage").lower() or "custom"
        try:
            runs = instance.get_runs_count()
            daemons = get_daemon_statuses(instance, instance.get_required_daemon_types(), ignore_errors=True)
        except Exception as exc:  # noqa: BLE001
            return "fail", f"{kind} storage at {where} unreachable: {_first_line(exc)}"
    finally:
        instance.dispose()
    storage = f"{kind} storage at {where}, {runs} run(s)"
    beats = [s.last_heartbeat.timestamp for s in daemons.values() if s.last_heartbeat is not None]
    silent = sorted(s.daemon_type for s in daemons.values() if not s.healthy)
    if not silent:
        age = time.time() - min(beats) if beats else 0.0
        return "ok", f"{storage}; daemon running (oldest heartbeat {age:.0f} s ago)"
    state = (
        f"daemon not running: no recent heartbeat from {', '.join(silent)}"
        if beats
        else "daemon not running (no heartbeat)"
    )
    if embedded:
        return "warn", (
            f"{storage}; {state}: sensors, schedules and runs launched from the UI wait for one "
            "(`make ui` starts one; `pulse` commands run without it)"
        )
    return "fail", f"{storage}; {state}: sensors, schedules and queued runs do not run"


def _postgres_storage_url(home: Path) -> str | None:
    """The URL of the instance's `storage: postgres:` (environment variables resolved), if it has one."""
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(home))
    section = (config.get("storage") or {}).get("postgres")
    if section is None:
        return None
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config

    resolved = process_config(DagsterPostgresStorage.config_type(), section)
    if not resolved.success:
        raise ValueError(f"storage.postgres is invalid: {resolved.errors[0].message}")
    return pg_url_from_config(resolved.value)


def _postgres_unreachable(url: str, timeout: float) -> str | None:
    """Why the PostgreSQL server at `url` cannot be reached (one connection, `timeout` seconds); None
    when it answers."""
    parsed = parse_url(url)
    if parsed.drivername == "postgresql":  # SQLAlchemy 2.1 reads it as psycopg 3; the project ships psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(parsed, connect_args={"connect_timeout": max(1, round(timeout))})
    try:
        with engine.connect():
            return None
    except sa.exc.DBAPIError as exc:
        return _first_line(exc)
    finally:
        engine.dispose()


def _server_and_database(url: sa.URL) -> str:
    """host:port/database, without user or password."""
    return f"{url.host}:{url.port or 5432}/{url.database}"


# -- CUDA, bitsandbytes, versions -------------------------------------------------------------------


def probe_cuda() -> Finding:
    """torch sees a CUDA device: its name and memory."""
    with _TORCH:
        import torch

        if not torch.cuda.is_available():
            return "warn", f"no CUDA device (torch {torch.__version__}): training runs on the CPU"
        free, total = torch.cuda.mem_get_info(0)
        return "ok", (
            f"{torch.cuda.get_device_name(0)} (cuda:0 of {torch.cuda.device_count()}), CUDA "
            f"{torch.version.cuda}, {free / 2**30:.0f} of {total / 2**30:.0f} GiB free"
        )


def probe_bitsandbytes() -> Finding:
    """bitsandbytes imports; on CUDA a 4-bit NF4 round trip works (required there: `quantization:
    auto` is 4-bit on CUDA). Without CUDA it is not needed."""
    with _TORCH:
        import torch

        cuda = torch.cuda.is_available()
        # Its import asks for `kernels` from the hub on a CPU (not installed on purpose): not news.
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
        try:
            import bitsandbytes
        except Exception as exc:  # noqa: BLE001 - a broken install is the row's one line
            return ("fail" if cuda else "warn"), f"cannot be imported: {_one_line(exc)}"
        release = getattr(bitsandbytes, "__version__", "?")
        if not cuda:
            return "ok", f"bitsandbytes {release} imports; not used on the CPU (quantization auto is none)"
        try:
            from bitsandbytes.functional import dequantize_4bit, quantize_4bit

            weights = torch.randn(256, 256, device="cuda", dtype=torch.float16)
            packed, state = quantize_4bit(weights, quant_type="nf4")
            error = (dequantize_4bit(packed, state) - weights).abs().mean().item()
        except Exception as exc:  # noqa: BLE001
            return "fail", f"bitsandbytes {release} cannot quantize on CUDA: {_one_line(exc)}"
        if not error < 0.2:
            return (
                "fail",
                f"bitsandbytes {release}: a 4-bit NF4 round trip on CUDA is off by {error:.3f} on average",
            )
        return "ok", f"bitsandbytes {release}: 4-bit NF4 round trip on cuda:0 (mean error {error:.3f})"


def probe_libraries() -> Finding:
    """The versions of the libraries that matter, from their installed metadata (nothing imported)."""
    parts = [f"python {platform.python_version()}"]
    for name in LIBRARIES:
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed here")
    return "ok", ", ".join(parts)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    """A database error's first line: the driver's message, without the SQL and the help link."""
    cause = getattr(exc, "orig", None) or exc
    while isinstance(cause, Exception) and cause.__cause__ is not None and not str(cause).strip():
        cause = cause.__cause__
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
