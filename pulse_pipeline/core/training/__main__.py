"""Train one family without Dagster: `python -m pulse_pipeline.core.training --family F`.

Reads pulse.yaml and the environment like `pulse` does, trains on the family's newest
dataset snapshot (or `--dataset-version`), publishes the adapter version and prints where it
is. `pulse train` does the same through the family's Dagster retrain job, so the run shows
in the UI; this entry point is for debugging the recipe and for machines without Dagster.

`--processes N` trains in N processes (DDP; distributed.py): this process takes the family's
training lock and runs `torchrun --nproc-per-node N` on the same command (launch.py); rank 0
records and publishes, the others follow. Under torchrun or `accelerate launch` started by
hand, rank 0 takes the lock itself.

The `<family>/adapter` asset runs this command through Dagster Pipes for a family whose
`resources.launcher` is `subprocess` or `kubernetes`: the step holds the lock and passes its
holder (`--lock-holder`), which the training watches instead of taking the lock; progress lines
go to the run's log and the published version comes back as a Pipes message.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

RESULT_MESSAGE = "pulse.trained"  # the Pipes custom message that carries the published version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pulse_pipeline.core.training", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--family", "-f", required=True, help="a family declared in pulse.yaml")
    parser.add_argument("--epochs", type=int, help="override training.epochs")
    parser.add_argument("--max-samples", type=int, help="train on at most this many examples")
    parser.add_argument("--dataset-version", help="train on this snapshot (default: the newest)")
    parser.add_argument(
        "--force", action="store_true", help="train even if this snapshot and config were trained"
    )
    parser.add_argument("--no-tracking", action="store_true", help="do not record an MLflow run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--processes", type=int, default=1, help="train in this many processes on this machine (torchrun)"
    )
    # Set by whoever holds the family's lock and starts this command (the adapter step, the launcher).
    parser.add_argument("--lock-holder", help=argparse.SUPPRESS)
    parser.add_argument("--created-by", default="cli", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--failure-file", type=Path, help=argparse.SUPPRESS)  # gets the one-line reason
    args = parser.parse_args(argv)

    from pulse_pipeline.core.secrets import mask
    from pulse_pipeline.core.training.distributed import world
    from pulse_pipeline.logs import quiet_libraries
    from pulse_pipeline.settings import get_settings

    settings = get_settings()
    quiet_libraries(settings.secret_values())

    def say(message: str) -> None:
        line = mask(message, settings.secret_values())
        print(f"pulse training: {line}", file=sys.stderr, flush=True)
        if args.failure_file and not message.startswith("warning:"):
            args.failure_file.write_text(line + "\n")

    here = world()
    if here.distributed:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # torchrun stopping us: record the failure first
    elif args.processes > 1:
        return _launch(args, argv if argv is not None else sys.argv[1:], say)
    if not here.is_main:
        return _follow(args)
    with _pipes() as pipes:
        trained, code = _train(args, say, pipes)
        if trained is None:
            return code
        if pipes is not None:
            pipes.report_custom_message({RESULT_MESSAGE: _as_message(trained)})
    m = trained.metadata
    report = {
        "family": trained.family,
        "version": trained.version,
        "reused": trained.reused,
        "dataset_version": m["dataset_version"],
        "samples_used": m["samples_used"],
        "training_loss": m["training_loss"],
        "training_time_seconds": m["training_time_seconds"],
        "path": trained.uri,
        "mlflow_run_id": trained.mlflow_run_id,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:<22} {value}")
    return 0


def _train(args: argparse.Namespace, say: Callable[[str], None], pipes: Any) -> tuple[Any, int]:
    """Hold (or watch) the family's lock and train: (the TrainedAdapter, 0), or (None, exit code)
    after one line on stderr saying why."""
    from pulse_pipeline.core.families import ConfigError, load_config
    from pulse_pipeline.core.registry import Registry, RegistryError
    from pulse_pipeline.core.store import Store, StoreError
    from pulse_pipeline.core.training.base_models import BaseModelError
    from pulse_pipeline.core.training.config import TrainingConfigError
    from pulse_pipeline.core.training.lock import TrainingLocked
    from pulse_pipeline.core.training.progress import ProgressBar, progress_line
    from pulse_pipeline.core.training.recipe import TrainingError
    from pulse_pipeline.core.training.runner import train_family
    from pulse_pipeline.settings import get_settings

    settings = get_settings()
    bar = ProgressBar()
    progress = bar if pipes is None else (lambda p: pipes.log.info(progress_line(p)))
    try:
        family = load_config(settings.pulse_config).family(args.family)
        # the family's lock and version records live in the store
        with Store(settings.database_url) as store, _lease(args, store, say) as lease:
            return train_family(
                family,
                Registry(store, settings.artifact_store()),
                home=settings.pulse_home,
                tracking_uri=None if args.no_tracking else settings.mlflow_tracking_uri,
                overrides={"epochs": args.epochs, "max_samples": args.max_samples},
                dataset_version=args.dataset_version,
                force=args.force,
                on_progress=progress,
                created_by=args.created_by,
                run_id=args.run_id,
                lease=lease,
            ), 0
    except TrainingLocked as exc:
        say(f"{args.family}: {exc}")
        return None, TrainingLocked.exit_code
    except (
        ConfigError,
        TrainingConfigError,
        TrainingError,
        BaseModelError,
        StoreError,
        RegistryError,
    ) as exc:
        say(str(exc))
        return None, 1
    finally:
        bar.close()


@contextlib.contextmanager
def _lease(args: argparse.Namespace, store: Any, say: Callable[[str], None]) -> Iterator[Any]:
    """The family's lock for the training: taken here, or (`--lock-holder`) watched while the
    process that started this one holds it."""
    from pulse_pipeline.core.store import LockHolder
    from pulse_pipeline.core.training.lock import TrainingLock, WatchedLease, this_process
    from pulse_pipeline.settings import get_settings

    settings = get_settings()
    heartbeat = dt.timedelta(seconds=settings.pulse_training_heartbeat_seconds)
    if args.lock_holder:
        holder = LockHolder(**json.loads(args.lock_holder))
        with WatchedLease(store.locks, args.family, holder, heartbeat) as watched:
            yield watched
        return
    lock = TrainingLock(
        store.locks,
        stale_after=dt.timedelta(seconds=settings.pulse_training_lock_stale_seconds),
        heartbeat=heartbeat,
    )
    took_over = lambda dead: say(f"warning: took over {dead.describe()}")  # noqa: E731
    with lock.hold(args.family, this_process(args.created_by, args.run_id), on_taken_over=took_over) as lease:
        yield lease


def _follow(args: argparse.Namespace) -> int:
    """A process other than rank 0: train its share of what rank 0 decided."""
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.registry import Registry
    from pulse_pipeline.core.store import Store
    from pulse_pipeline.core.training.distributed import world
    from pulse_pipeline.core.training.runner import follow_training
    from pulse_pipeline.settings import get_settings

    settings = get_settings()
    family = load_config(settings.pulse_config).family(args.family)
    with Store(settings.database_url) as store:
        follow_training(
            family, Registry(store, settings.artifact_store()), home=settings.pulse_home, here=world()
        )
    return 0


@contextlib.contextmanager
def _pipes() -> Iterator[Any]:
    """Dagster Pipes when the adapter step started this process (None otherwise)."""
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        yield None
        return
    with open_dagster_pipes() as pipes:
        yield pipes


def _as_message(trained: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(trained), default=str))


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _launch(args: argparse.Namespace, argv: list[str], say: Callable[[str], None]) -> int:
    """Hold the family's lock (or watch the holder's, `--lock-holder`) and run this command under
    torchrun in `--processes` processes; a failure is explained in one line (launch.py)."""
    from pulse_pipeline.core.families import ConfigError
    from pulse_pipeline.core.store import Store, StoreError
    from pulse_pipeline.core.training import launch
    from pulse_pipeline.core.training.lock import TrainingLocked
    from pulse_pipeline.settings import get_settings

    settings = get_settings()
    try:
        with Store(settings.database_url) as store, _lease(args, store, say) as lease:
            holder = json.dumps(dataclasses.asdict(lease.holder))
            forwarded = [*_without(argv, "--processes", "--lock-holder"), "--lock-holder", holder]
            launched = launch.run(launch.torchrun_command(forwarded, args.processes), stop=lease.lost)
    except TrainingLocked as exc:
        say(f"{args.family}: {exc}")
        return TrainingLocked.exit_code
    except (ConfigError, StoreError) as exc:
        say(str(exc))
        return 1
    if launched.returncode == 0:
        return 0
    line = launch.explain_failure(
        args.family, args.processes, launched, settings.pulse_home / "work" / args.family
    )
    if not launched.output_tail.rstrip().endswith(f"pulse training: {line}"):
        say(line)
    elif args.failure_file:
        args.failure_file.write_text(line + "\n")
    return 1


def _without(argv: list[str], *options: str) -> list[str]:
    """`argv` without `options` and their values (`--opt V` or `--opt=V`)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in options:
            skip = True
        elif not item.startswith(tuple(f"{o}=" for o in options)):
            out.append(item)
    return out


if __name__ == "__main__":
    sys.exit(main())
