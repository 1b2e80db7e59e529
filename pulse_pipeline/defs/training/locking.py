"""The training lock in Dagster: runs as holders, run statuses for staleness, dead runs cleaned up.

A retrain run holds its family's lock (`core/training/lock.py`) from its adapter step to the end
of its deployment step; `pulse train` takes it for its run before launching it. A lock whose run
has finished is free. Taking over a dead holder's lock (its heartbeat stopped, its process is
gone) also fails that holder's run if it is still marked as running and frees the concurrency
slots it held, so the `training` pool is never left blocked by a run that no longer exists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

from pulse_pipeline.core.store import LockHolder, Store
from pulse_pipeline.core.training.lock import Lease, LockState, TrainingLock, this_process
from pulse_pipeline.core.transient import transient_cause

_RUNNING = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}


def run_status(instance: dg.DagsterInstance) -> Callable[[str], str | None]:
    """Run id -> its status's name (SUCCESS, FAILURE, STARTED ...), None for a run not in this instance."""

    def status(run_id: str) -> str | None:
        run = instance.get_run_by_id(run_id)
        return None if run is None else run.status.value

    return status


def training_lock(
    store: Store, instance: dg.DagsterInstance | None, *, stale_seconds: float, heartbeat_seconds: float
) -> TrainingLock:
    return TrainingLock(
        store.locks,
        stale_after=dt.timedelta(seconds=stale_seconds),
        heartbeat=dt.timedelta(seconds=heartbeat_seconds),
        run_status=run_status(instance) if instance is not None else None,
    )


def free_dead_run(instance: dg.DagsterInstance, dead: LockState, log: Callable[[str], None]) -> None:
    """After a dead holder's lock was taken over or freed: fail its run if it still looks alive,
    and free every concurrency slot it held."""
    if dead.row is None:
        return
    log(f"warning: {dead.describe()}; its lock is taken over")
    run_id = dead.row.holder.run_id
    if not run_id:
        return
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status in _RUNNING:
        instance.report_run_failed(run, f"its training lock was taken over: {dead.stale_because}")
        log(f"marked run {run_id[:8]} failed: {dead.stale_because}")
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def free_dead_trainings(
    store: Store, instance: dg.DagsterInstance, families: list[str], lock: TrainingLock, log: Callable[[str], None]
) -> list[str]:
    """Free every listed family's lock whose holder is dead (and its run's slots); the families freed."""
    freed = []
    for family in families:
        dead = lock.free_stale(family)
        if dead is not None:
            free_dead_run(instance, dead, log)
            freed.append(family)
    return freed


@contextmanager
def step_lease(
    context: dg.AssetExecutionContext,
    family: str,
    lock: TrainingLock,
    *,
    who: str,
    acquire: bool,
    release: bool,
) -> Iterator[Lease | None]:
    """The family's lock for one step of a run, its heartbeat running while the step does.

    `acquire`: take it (the adapter step), else only re-enter it when this run holds it (evaluation
    and deployment of a run that trained; None otherwise). `release`: give it back when the step
    ends (the run's last locked step); otherwise it is parked for the next step (no process holds
    it: pid 0, so the ended step's process is not taken for a dead holder). A step failing for good
    gives it back at once; a transient failure (a dropped connection: the step is retried) parks it
    for the retry."""
    holder = this_process(who, context.run.run_id)
    if not acquire and not lock.owned_by(family, holder):
        yield None
        return

    def took_over(dead: LockState) -> None:
        free_dead_run(context.instance, dead, context.log.warning)

    with lock.hold(family, holder, on_taken_over=took_over, release=False) as lease:
        try:
            yield lease
        except Exception as exc:
            _best_effort(lock.release if transient_cause(exc) is None else lock.locks.park, family, holder)
            raise
    # Released, or handed to the run's next step (its own process, in a multiprocess executor).
    _best_effort(lock.release if release else lock.locks.park, family, holder)


def _best_effort(action: Callable[[str, LockHolder], bool], family: str, holder: LockHolder) -> None:
    """With the database away the row stays as it is, and it is free once this run has finished."""
    with contextlib.suppress(Exception):
        action(family, holder)


def run_holds_later_steps(context: dg.AssetExecutionContext, family: str, *steps: str) -> bool:
    """Whether this run also materializes any of `steps` (e.g. eval_report, deployment) of the family."""
    keys = context.job_def.asset_layer.executable_asset_keys
    return any(dg.AssetKey([family, step]) in keys for step in steps)
