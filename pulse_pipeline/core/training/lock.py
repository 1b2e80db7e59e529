"""One training of a family at a time, whoever starts it: a lock row in the store with a heartbeat.

Every entry point takes it before anything trains: `pulse train` before it launches its run, a
run started by a sensor, a schedule, a backfill or the UI in its adapter step, and
`python -m pulse_pipeline.core.training`. Two starts at once give one winner (the row's primary
key); the loser is told who holds it. The holder records its Dagster run, host and process, and
refreshes a heartbeat every `heartbeat` (15 s) from a thread while it trains.

A lock is stale, and the next start takes it over, when its heartbeat is older than
`stale_after` (2 min), when its Dagster run has finished (`run_status`), or when its process is
gone from this host. Whoever takes over a dead holder's lock is told (`Acquired.taken_over`), so
it can fail that run and free its concurrency slot (defs/training/locking.py does, for Dagster).
Dagster-free: run statuses come in through `run_status`, a callable.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pulse_pipeline.core.store.database import now
from pulse_pipeline.core.store.locks import LockHolder, LockRow, TrainingLocks

DEFAULT_STALE = dt.timedelta(minutes=2)
DEFAULT_HEARTBEAT = dt.timedelta(seconds=15)
FINISHED_RUNS = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
RunStatus = Callable[[str], str | None]  # Dagster run id -> its status name, None when unknown
_ATTEMPTS = 5  # insert / read rounds before giving up on a lock that keeps changing hands


class TrainingLocked(RuntimeError):
    """Another training of the family holds the lock (exit status 3)."""

    exit_code = 3


def this_process(who: str, run_id: str | None = None) -> LockHolder:
    """The holder for the calling process: who asked, the Dagster run, this host and PID."""
    return LockHolder(who[:256], run_id, socket.gethostname(), os.getpid())


@dataclass(frozen=True)
class LockState:
    """A family's lock as a reader should take it: who holds it and whether that holder is alive."""

    family: str
    row: LockRow | None
    stale_because: str | None = None  # why a held row no longer counts (None: live, or no row)

    @property
    def held(self) -> bool:
        """A live holder trains the family now."""
        return self.row is not None and self.stale_because is None

    def describe(self) -> str:
        if self.row is None:
            return f"{self.family} is not training"
        since = f"{self.row.acquired_at:%Y-%m-%d %H:%M:%S} UTC"
        who = self.row.holder.describe()
        if self.stale_because:
            return f"{self.family}: a dead training's lock ({who}, since {since}): {self.stale_because}"
        return f"training already in progress since {since} ({who})"


@dataclass(frozen=True)
class Acquired:
    family: str
    holder: LockHolder
    acquired_at: dt.datetime
    taken_over: LockState | None = None  # the dead holder whose stale lock this one replaced


class TrainingLock:
    """The policy over the store's lock rows: when a lock is live, acquiring, holding, freeing."""

    def __init__(
        self,
        locks: TrainingLocks,
        *,
        stale_after: dt.timedelta = DEFAULT_STALE,
        heartbeat: dt.timedelta = DEFAULT_HEARTBEAT,
        run_status: RunStatus | None = None,
    ):
        self.locks = locks
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.run_status = run_status

    def state(self, family: str, at: dt.datetime | None = None) -> LockState:
        row = self.locks.get(family)
        return LockState(family, row, None if row is None else self._staleness(row, at or now()))

    def acquire(self, family: str, holder: LockHolder, at: dt.datetime | None = None) -> Acquired:
        """Take the family's lock, take over a dead holder's, or re-enter one this holder (its run,
        or its process) already holds; TrainingLocked names a live holder."""
        at = at or now()
        for _ in range(_ATTEMPTS):
            if self.locks.insert(family, holder, at):
                return Acquired(family, holder, at)
            row = self.locks.get(family)
            if row is None:
                continue  # released between our insert and our read
            if row.holder.same_as(holder):
                if self.locks.refresh(family, holder, at):
                    return Acquired(family, holder, row.acquired_at)
                continue
            why = self._staleness(row, at)
            if why is None:
                raise TrainingLocked(LockState(family, row).describe())
            if self.locks.take_over(family, row, holder, at):
                return Acquired(family, holder, at, taken_over=LockState(family, row, why))
        raise TrainingLocked(f"the training lock of {family} kept changing hands; try again")

    def owned_by(self, family: str, holder: LockHolder) -> bool:
        """Whether `holder` (its run) holds the family's lock now; refreshes its heartbeat if so."""
        return self.locks.refresh(family, holder)

    def release(self, family: str, holder: LockHolder) -> bool:
        return self.locks.release(family, holder)

    def free_stale(self, family: str) -> LockState | None:
        """Delete the family's lock when its holder is dead; the stale state it removed, or None."""
        state = self.state(family)
        if state.row is None or state.stale_because is None:
            return None
        return state if self.locks.remove_stale(state.row) else None

    @contextmanager
    def hold(
        self,
        family: str,
        holder: LockHolder,
        *,
        on_taken_over: Callable[[LockState], None] = lambda _: None,
        release: bool = True,
    ) -> Iterator[Lease]:
        """Acquire (or re-enter) the lock for the block, with its heartbeat running in a thread;
        released at the end unless `release` is False (a step that hands it to the next step)."""
        acquired = self.acquire(family, holder)
        if acquired.taken_over is not None:
            on_taken_over(acquired.taken_over)
        lease = Lease(self, family, holder, acquired)
        lease.start()
        try:
            yield lease
        finally:
            lease.stop()
            if release:  # best effort: with the database away, the row is free once its holder is gone
                with contextlib.suppress(Exception):
                    self.release(family, holder)

    def _staleness(self, row: LockRow, at: dt.datetime) -> str | None:
        """Why a held lock no longer counts, or None while its holder lives."""
        silent = at - row.heartbeat_at
        if silent > self.stale_after:
            return f"no heartbeat for {silent.total_seconds():.0f} s (stale after {self.stale_after.total_seconds():g} s)"
        holder = row.holder
        if holder.run_id and self.run_status is not None:
            status = self.run_status(holder.run_id)
            if status in FINISHED_RUNS:
                return f"its run {holder.run_id[:8]} has finished ({status})"
        if holder.host == socket.gethostname() and holder.pid > 0 and not process_alive(holder.pid):
            return f"its process (pid {holder.pid} on {holder.host}) is gone"
        return None


class Lease:
    """A held lock whose heartbeat a thread refreshes; `check()` raises once it was taken over."""

    def __init__(self, lock: TrainingLock, family: str, holder: LockHolder, acquired: Acquired):
        self.lock = lock
        self.family = family
        self.holder = holder
        self.acquired = acquired
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {family}", daemon=True)
        self.last_error: str | None = None  # the latest heartbeat that could not be written

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def release(self) -> None:
        """Stop the heartbeat and give the lock back (nothing when it is no longer ours)."""
        self.stop()
        self.lock.release(self.family, self.holder)

    def check(self) -> None:
        """Raise TrainingLocked when another training took the lock over (this one was presumed dead)."""
        if self.lost.is_set():
            raise TrainingLocked(
                f"the training lock of {self.family} was taken over by another training (this one's "
                "heartbeat was presumed dead); stopping so that two do not train at once"
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.lock.heartbeat.total_seconds()):
            try:
                if not self.lock.locks.refresh(self.family, self.holder):
                    self.lost.set()
                    return
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - the database is away: try again next beat
                self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class WatchedLease:
    """The lease of a training that its lock's holder started in another process (the adapter
    step's Pipes subprocess, torchrun's launcher): it does not hold the lock but watches, every
    `every`, that its holder still does; `lost` is set, and `check()` raises, once another
    training has taken the lock over. The holder's own heartbeat keeps the lock alive."""

    def __init__(self, locks: TrainingLocks, family: str, holder: LockHolder, every: dt.timedelta):
        self.locks, self.family, self.holder, self.every = locks, family, holder, every
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"lock watch {family}", daemon=True)

    def __enter__(self) -> WatchedLease:
        self._look()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def check(self) -> None:
        if self.lost.is_set():
            raise TrainingLocked(
                f"the training lock of {self.family} is no longer held by {self.holder.describe()}, "
                "which started this training; stopping so that two do not train at once"
            )

    def _look(self) -> None:
        row = self.locks.get(self.family)
        if row is None or not row.holder.same_as(self.holder):
            self.lost.set()

    def _watch(self) -> None:
        while not self.lost.is_set() and not self._stop.wait(self.every.total_seconds()):
            with contextlib.suppress(Exception):  # the database away for a moment: look again next time
                self._look()


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
