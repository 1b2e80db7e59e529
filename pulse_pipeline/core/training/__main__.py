"""Train one family without Dagster: `python -m pulse_pipeline.core.training --family F`.

Reads pulse.yaml and the environment like `pulse` does, trains on the family's newest
dataset snapshot (or `--dataset-version`), publishes the adapter version and prints where it
is. `pulse train` does the same through the family's Dagster retrain job, so the run shows
in the UI; this entry point is for debugging the recipe and for machines without Dagster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys


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
    args = parser.parse_args(argv)

    from pulse_pipeline.core.families import ConfigError, load_config
    from pulse_pipeline.core.registry import Registry, RegistryError
    from pulse_pipeline.core.secrets import mask
    from pulse_pipeline.core.store import Store, StoreError
    from pulse_pipeline.core.training.base_models import BaseModelError
    from pulse_pipeline.core.training.config import TrainingConfigError
    from pulse_pipeline.core.training.lock import TrainingLock, TrainingLocked, this_process
    from pulse_pipeline.core.training.progress import ProgressBar
    from pulse_pipeline.core.training.recipe import TrainingError
    from pulse_pipeline.core.training.runner import train_family
    from pulse_pipeline.logs import quiet_libraries
    from pulse_pipeline.settings import get_settings

    settings = get_settings()
    quiet_libraries(settings.secret_values())
    progress = ProgressBar()

    def say(message: str) -> None:
        print(mask(f"pulse training: {message}", settings.secret_values()), file=sys.stderr)

    try:
        family = load_config(settings.pulse_config).family(args.family)
        with Store(settings.database_url) as store:  # the family's lock and version records live there
            lock = TrainingLock(
                store.locks,
                stale_after=dt.timedelta(seconds=settings.pulse_training_lock_stale_seconds),
                heartbeat=dt.timedelta(seconds=settings.pulse_training_heartbeat_seconds),
            )
            took_over = lambda dead: say(f"warning: took over {dead.describe()}")  # noqa: E731
            with lock.hold(family.name, this_process("cli"), on_taken_over=took_over) as lease:
                trained = train_family(
                    family,
                    Registry(store, settings.artifact_store()),
                    home=settings.pulse_home,
                    tracking_uri=None if args.no_tracking else settings.mlflow_tracking_uri,
                    overrides={"epochs": args.epochs, "max_samples": args.max_samples},
                    dataset_version=args.dataset_version,
                    force=args.force,
                    on_progress=progress,
                    created_by="cli",
                    lease=lease,
                )
    except TrainingLocked as exc:
        say(f"{args.family}: {exc}")
        return TrainingLocked.exit_code
    except (ConfigError, TrainingConfigError, TrainingError, BaseModelError, StoreError, RegistryError) as exc:
        say(str(exc))
        return 1
    finally:
        progress.close()
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


if __name__ == "__main__":
    sys.exit(main())
