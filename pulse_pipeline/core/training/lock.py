"""One training of a family at a time, whoever starts it: a lock row in the annotation store.

Dagster's `training` pool already serializes runs it launches; this lock also covers trainings
started outside it (`pulse train` runs in-process, `python -m pulse_pipeline.core.training`, a
second Dagster deployment). The holder refreshes a heartbeat while it trains; a lock whose
heartbeat is older than the stale timeout (default 4 h, `PULSE_TRAINING_LOCK_STALE_HOURS`) was
left by a crashed process and is taken over, with a warning.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class TrainingLocked(RuntimeError):
    """Another training of the family holds the lock."""

    exit_code = 3


def holder_name(created_by: str) -> str:
    """Who holds a lock, for the person who finds it: who asked, which process on which host."""
    return f"{created_by} (pid {os.getpid()} on {socket.gethostname()})"[:256]


@contextmanager
def training_lock(
    store: Any,
    family: str,
    holder: str,
    *,
    stale_after: dt.timedelta,
    warn: Callable[[str], None] = lambda _: None,
) -> Iterator[Callable[[], None]]:
    """Hold the family's training lock for the block; yields `beat()`, which refreshes the
    heartbeat (at most once a minute, so it can be called on every progress report)."""
    attempt = store.acquire_training_lock(family, holder, stale_after=stale_after)
    if not attempt.acquired:
        raise TrainingLocked(
            f"training already in progress since {attempt.acquired_at:%Y-%m-%d %H:%M:%S} UTC "
            f"({attempt.holder}); the lock is taken over after {_hours(stale_after)} without a heartbeat"
        )
    if attempt.stale_replaced:
        warn(
            f"{family}: took over a stale training lock held by {attempt.stale_replaced} "
            f"(no heartbeat for over {_hours(stale_after)})"
        )
    last = time.monotonic()

    def beat() -> None:
        nonlocal last
        if time.monotonic() - last >= 60:
            if not store.heartbeat_training_lock(family, holder):
                raise TrainingLocked(
                    f"the training lock of {family} was taken over by another training (this one went "
                    f"{_hours(stale_after)} without a heartbeat); stopping so that two do not run at once"
                )
            last = time.monotonic()

    try:
        yield beat
    finally:
        store.release_training_lock(family, holder)


def _hours(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} h"
