"""The Dagster run plumbing of `pulse`: the instance, running jobs and assets in process, and what
a failed run says.

Every command that does work runs the same jobs and assets as the UI, in this process, recorded
in the instance at DAGSTER_HOME, so the runs show in the UI. The first use of a new DAGSTER_HOME
creates its storage under a file lock, so two commands started at once on a new home do not both
create it. A failed run is one line: the step that failed and the cause from its failure event,
masked, without a class path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulse_pipeline.cli.output import UserError
from pulse_pipeline.core.families import PulseConfig
from pulse_pipeline.core.secrets import mask
from pulse_pipeline.settings import get_settings

if TYPE_CHECKING:
    import dagster as dg

# In-process runs log to the console at DEBUG by default; the CLI prints one line per failure
# instead, and the UI keeps the full event log (tracebacks included).
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
_WRAPPERS = ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError")


def prepare_dagster_home() -> Path:
    """DAGSTER_HOME with its dagster.yaml (the package's embedded default, copied when missing)."""
    settings = get_settings()
    home = settings.dagster_home
    assert home is not None
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)  # Dagster reads its home from the environment
    target = home / "dagster.yaml"
    template = Path(__file__).resolve().parents[1] / "dagster.yaml"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".dagster.yaml.")
        os.close(fd)
        shutil.copyfile(template, tmp)
        os.replace(tmp, target)  # whole, even when two commands start at once
    return home


@contextlib.contextmanager
def instance() -> Iterator[dg.DagsterInstance]:
    """The Dagster instance at DAGSTER_HOME; its storage is created under a file lock."""
    import dagster as dg

    home = prepare_dagster_home()
    with open(home / ".pulse-instance.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            opened = dg.DagsterInstance.get()
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    with opened:
        yield opened


def definitions(config: PulseConfig) -> dg.Definitions:
    from pulse_pipeline.definitions import build_definitions

    return build_definitions(config)


def run_job(
    instance: dg.DagsterInstance,
    job: Any,
    *,
    run_config: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    asset_selection: list[Any] | None = None,
    partition_key: str | None = None,
) -> Any:
    """Execute `job` in this process, recorded in `instance`; the ExecuteInProcessResult."""
    config = {**QUIET_RUN, **(run_config or {})}
    return job.execute_in_process(
        instance=instance, raise_on_error=False, run_config=config, tags=tags, run_id=run_id,
        asset_selection=asset_selection, partition_key=partition_key,
    )  # fmt: skip


def new_run_id() -> str:
    from dagster._core.utils import make_new_run_id

    return make_new_run_id()


def failure(result: Any, what: str = "run") -> str:
    """One line for a failed run: `<what> <run id> failed at <step>: <cause>`."""
    return mask(f"{what} {result.run_id[:8]} failed{failure_reason(result)}")


def failure_reason(result: Any) -> str:
    """` at <step>: <cause>` from the run's first step failure (or a resource that could not be set
    up), or the blocking checks that failed."""
    import dagster as dg

    names = _step_names(result)
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            step = names.get(event.step_key or "", event.step_key or "a step")
            return f" at {step}: {error_line(event.step_failure_data.error)}"
    for event in result.all_events:  # before any step: a resource (the store, the artifacts) failed
        error = getattr(event.event_specific_data, "error", None)
        if event.event_type_value == "RESOURCE_INIT_FAILURE" and error is not None:
            return f" setting up its resources: {error_line(error)}"
    failed = [
        f"{e.asset_key.to_user_string()} {e.check_name}"
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    if failed:
        return f": blocking checks failed: {', '.join(failed)}"
    return ": the run did not finish (see its event log in the Dagster UI)"


def error_line(error: Any) -> str:
    """The cause of a serialized step error as one line: wrappers unwrapped, class path dropped."""
    while error.cause is not None and error.cls_name in _WRAPPERS:
        error = error.cause
    text = error.message.strip()
    head, sep, rest = text.partition(": ")
    if sep and head.rsplit(".", 1)[-1] == error.cls_name:  # "pkg.module.SomeError: message"
        text = rest
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return mask(" ".join(lines)) if lines else error.cls_name


def _step_names(result: Any) -> dict[str, str]:
    """Step key -> the asset key a person knows (`intent-router/adapter`), for asset steps."""
    try:
        keys = result.job_def.asset_layer.executable_asset_keys
    except AttributeError:
        return {}
    return {key.to_python_identifier(): key.to_user_string() for key in keys}


def raise_for(result: Any, what: str = "run") -> None:
    """UserError with `failure(result)` when the run failed."""
    if not result.success:
        raise UserError(failure(result, what))


def run_assets(config: PulseConfig, keys: list[Any], *, what: str = "run") -> Any:
    """Materialize these (unpartitioned) assets in one run recorded at DAGSTER_HOME; UserError
    naming the failed step (or blocking check) and its cause when the run fails."""
    with instance() as dagster:
        job = definitions(config).resolve_implicit_global_asset_job_def()
        result = run_job(dagster, job, asset_selection=keys)
    raise_for(result, what)
    return result


def run_op_job(config: PulseConfig, job_name: str, op_name: str, op_config: dict[str, Any]) -> dict[str, Any]:
    """Run an op job in this process, recorded at DAGSTER_HOME; the op's output, or its one-line error."""
    with instance() as dagster:
        job = definitions(config).resolve_job_def(job_name)
        result = run_job(
            dagster, job, run_config={"ops": {op_name: {"config": op_config}}}, tags={"pulse/created_by": "cli"}
        )
    if not result.success:
        raise UserError(failure_reason(result).removeprefix(f" at {op_name}: ").lstrip(": "))
    return result.output_for_node(op_name)


# A backfill: recorded in the instance, run by the daemon when one is up, else by the command.
BACKFILL_TAG = "dagster/backfill"
CODE_LOCATION = "pulse_pipeline.definitions"  # the location name `make ui` (workspace.yaml) gives it
# One step per partition: run it in the run's own process (no step subprocess), quietly.
BACKFILL_RUN = {**QUIET_RUN, "execution": {"config": {"in_process": {}}}}
_TERMINAL = ("COMPLETED_SUCCESS", "COMPLETED_FAILED", "COMPLETED", "FAILED", "CANCELED")


@dataclass
class BackfillOutcome:
    """A partition backfill as the instance records it; `runs` are its runs so far, oldest first."""

    backfill_id: str
    status: str
    executed_by: str  # "this command", or "the dagster-daemon" (then it is still running)
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # why it failed: its first failed run, or what stopped it


def launch_backfill(
    config: PulseConfig, keys: list[Any], days: list[str], *, title: str, tags: dict[str, str]
) -> BackfillOutcome:
    """Record a backfill of these assets' daily partitions in the instance at DAGSTER_HOME (the UI's
    Overview > Backfills lists it); a running dagster-daemon executes it, else this process does,
    through the daemon's own backfill logic, each run recorded and executed here."""
    import time

    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    with instance() as dagster:
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=make_new_backfill_id(),
            asset_graph=definitions(config).resolve_asset_graph(),
            partition_names=days,
            asset_selection=keys,
            backfill_timestamp=time.time(),
            tags=tags,
            dynamic_partitions_store=dagster,
            all_partitions=False,
            title=title,
            description=None,
            run_config=BACKFILL_RUN,
        )
        dagster.add_backfill(backfill)
        if backfill_daemon_running(dagster):
            return _outcome(dagster, backfill.backfill_id, "the dagster-daemon")
        error = _execute_backfill_here(dagster, backfill.backfill_id, max_iterations=len(days) + 10)
        outcome = _outcome(dagster, backfill.backfill_id, "this command")
    outcome.error = outcome.error or error
    return outcome


def backfill_daemon_running(dagster: dg.DagsterInstance) -> bool:
    """Whether a dagster-daemon with a backfill loop has a recent heartbeat in this instance."""
    from dagster._daemon.controller import get_daemon_statuses

    return get_daemon_statuses(dagster, ["BACKFILL"], ignore_errors=True)["BACKFILL"].healthy


def _execute_backfill_here(dagster: dg.DagsterInstance, backfill_id: str, *, max_iterations: int) -> str | None:
    """Do what the daemon's backfill loop does, in this process, until the backfill is done: the
    same instance storage, runs launched synchronously here instead of queued. None, or why it
    stopped."""
    import logging
    import sys
    import warnings

    import dagster as dg
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.backfill import execute_backfill_jobs
    from dagster._serdes.config_class import ConfigurableClassData

    ref = dagster.get_ref()._replace(  # the same storage; runs start at once and execute here
        run_coordinator_data=ConfigurableClassData("dagster._core.run_coordinator", "DefaultRunCoordinator", "{}"),
        run_launcher_data=ConfigurableClassData(
            "dagster._core.launcher.sync_in_memory_run_launcher", "SyncInMemoryRunLauncher", "{}"
        ),
    )
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=CODE_LOCATION),
        location_name=CODE_LOCATION,
    )
    quiet = logging.getLogger("pulse.backfill")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    with (
        dg.DagsterInstance.from_ref(ref) as runner,
        WorkspaceProcessContext(runner, InProcessWorkspaceLoadTarget(origin)) as workspace,
        warnings.catch_warnings(),
    ):
        # A run executed inside the backfill loop's event loop cannot close its own one; harmless.
        warnings.filterwarnings("ignore", "coroutine 'BaseEventLoop.shutdown_asyncgens'", RuntimeWarning)
        first_error = None
        for _ in range(max_iterations):
            backfill = runner.get_backfill(backfill_id)
            assert backfill is not None
            if backfill.status.value in _TERMINAL:
                return first_error
            for error in execute_backfill_jobs(workspace, quiet, [backfill]):
                first_error = first_error or (error_line(error) if error is not None else None)
    return f"it did not finish in {max_iterations} rounds here; a dagster-daemon (`make ui`) carries it on"


def _outcome(dagster: dg.DagsterInstance, backfill_id: str, executed_by: str) -> BackfillOutcome:
    import dagster as dg

    backfill = dagster.get_backfill(backfill_id)
    assert backfill is not None
    records = dagster.get_run_records(dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
    found = [
        {
            "run_id": r.dagster_run.run_id,
            "partition": r.dagster_run.tags.get("dagster/partition"),
            "status": r.dagster_run.status.value,
        }
        for r in sorted(records, key=lambda r: r.storage_id)
    ]
    failed = next((run for run in found if run["status"] == "FAILURE"), None)
    error = None
    if failed is not None:
        error = mask(f"run {failed['run_id'][:8]} ({failed['partition']}) failed{run_failure_reason(dagster, failed['run_id'])}")
    elif backfill.error is not None:
        error = error_line(backfill.error)
    return BackfillOutcome(backfill_id, backfill.status.value, executed_by, found, error)


def run_failure_reason(dagster: dg.DagsterInstance, run_id: str) -> str:
    """` at <step>: <cause>` for a recorded run, as `failure_reason` says it for a run of this
    process: its first step failure, else a resource that could not be set up."""
    run = dagster.get_run_by_id(run_id)
    names = {key.to_python_identifier(): key.to_user_string() for key in (run and run.asset_selection) or ()}
    events = [entry.dagster_event for entry in dagster.all_logs(run_id) if entry.dagster_event is not None]
    for event in events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            step = names.get(event.step_key or "", event.step_key or "a step")
            return f" at {step}: {error_line(event.step_failure_data.error)}"
    for event in events:
        error = getattr(event.event_specific_data, "error", None)
        if event.event_type_value == "RESOURCE_INIT_FAILURE" and error is not None:
            return f" setting up its resources: {error_line(error)}"
    return ": the run did not finish (see its event log in the Dagster UI)"
