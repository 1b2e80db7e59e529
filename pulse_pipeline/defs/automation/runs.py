"""What every trigger of a retrain checks first: is a training of the family under way (its
training lock, or a queued or running retrain), and did this data's retrain fail before.

A trigger that finds a dead training's lock (its heartbeat stopped, its run finished, its process
gone) frees it, fails that run if it still looks alive and frees its concurrency slots, so a
killed training never blocks its family or the `training` pool for longer than a sensor tick.

Sensors dedupe on their run keys, but two triggers (new annotations and a closed review session,
or drift, or a schedule) have different keys for the same data, so each also skips a family whose
retrain is queued or running, or failed and is about to be retried by Dagster (`run_retries`:
its worker crashed). A run key whose run failed would block that data for good (Dagster never
launches a key twice), so a retrain that failed is tried again under `<key>:attempt-N`, up to
`MAX_ATTEMPTS`; after that the trigger says so and waits for a person (the failure sensor has
posted each failure).
"""

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.core.store import Store
from pulse_pipeline.defs.resources import TrainingEnvironment
from pulse_pipeline.defs.training.locking import free_dead_trainings

RETRAIN_KEY_TAG = "pulse/retrain_key"  # the data a retrain is for, whatever its attempt
MAX_ATTEMPTS = 3
BUSY = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def running_retrain(instance: dg.DagsterInstance, family: FamilyConfig, jobs: set[str]) -> str | None:
    """The id of a queued or running run of `family` in one of the retrain `jobs`, or of a failed one
    whose automatic retry (`run_retries` in dagster.yaml: its worker crashed) is not launched yet."""
    runs = instance.get_runs(dg.RunsFilter(tags={"pulse/family": family.name}, statuses=BUSY), limit=50)
    busy = next((run.run_id for run in runs if run.job_name in jobs), None)
    if busy is None:
        failed = instance.get_runs(
            dg.RunsFilter(tags={"pulse/family": family.name}, statuses=[dg.DagsterRunStatus.FAILURE]), limit=5
        )
        busy = next((r.run_id for r in failed if r.job_name in jobs and r.is_complete_and_waiting_to_retry), None)
    return busy


def training_under_way(
    instance: dg.DagsterInstance, store: Store, training: TrainingEnvironment, family: FamilyConfig
) -> str | None:
    """Who trains `family` now, from its training lock (a dead holder's lock is freed first)."""
    lock = training.lock(store, instance)
    free_dead_trainings(store, instance, [family.name], lock, lambda line: None)
    state = lock.state(family.name)
    return f"{family.name}: {state.describe()}" if state.held else None


def retrain_request(
    instance: dg.DagsterInstance,
    family: FamilyConfig,
    key: str,
    tags: dict[str, str],
    *,
    job_name: str,
    store: Store,
    training: TrainingEnvironment,
) -> dg.RunRequest | dg.SkipReason:
    """A run request for the retrain of `family` identified by `key`, or the reason there is none."""
    holder = training_under_way(instance, store, training, family)
    if holder:
        return dg.SkipReason(holder)
    busy = running_retrain(instance, family, {job_name, "retrain", f"retrain_{family.snake}"})
    if busy:
        return dg.SkipReason(f"a retrain of {family.name} is already queued or running (run {busy[:8]})")
    earlier = instance.get_runs(dg.RunsFilter(tags={RETRAIN_KEY_TAG: key}), limit=MAX_ATTEMPTS + 1)
    failed = [run for run in earlier if run.status in _FAILED]
    if len(failed) == len(earlier) and len(failed) >= MAX_ATTEMPTS:
        return dg.SkipReason(
            f"the retrain of {family.name} for this data ({key}) failed {len(failed)} times (last run "
            f"{failed[0].run_id[:8]}); fix the cause and launch retrain_{family.snake} by hand"
        )
    attempt = len(failed) + 1 if len(failed) == len(earlier) else 1  # a success keeps its own key
    return dg.RunRequest(
        run_key=key if attempt == 1 else f"{key}:attempt-{attempt}",
        tags={**tags, "pulse/family": family.name, RETRAIN_KEY_TAG: key},
    )
