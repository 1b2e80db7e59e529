"""The `pulse` command: one module per command group, the Dagster run plumbing in `runs.py`.

    annotations.py  ingest, quarantine, annotations invalidate, sessions close, review export/import
    training.py     snapshot, export, status, train, evaluate
    registry.py     promote, cleanup, merge, registry reconcile, registry versions
    backfills.py    backfill (a Dagster backfill of annotation days)
    doctor.py       doctor
    demo.py         demo
    db.py           db upgrade
    capture.py      serve-capture, capture-token
    oracle.py       calibrate, label (an LLM oracle labels new data after its prompt passed calibration)

Work that has a Dagster asset or job runs through it, so its runs show in the UI. Every failure is
one line on stderr (`--debug` adds the traceback); every output line is masked (output.py).
"""

from pulse_pipeline.cli import (  # noqa: F401 - registers the commands
    annotations,
    backfills,
    capture,
    db,
    demo,
    doctor,
    oracle,
    registry,
    training,
)
from pulse_pipeline.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app()
