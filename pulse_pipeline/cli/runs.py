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
