"""The training lock (core/training/lock.py over core/store/locks.py) on SQLite and on a real
PostgreSQL server: one holder per family, who it is, staleness (heartbeat, finished run, dead
process), races between threads and between processes, the heartbeat thread, freeing."""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa

from pulse_pipeline.core.store import Database, LockHolder, LockRow, Store, StoreError, TrainingLocks
from pulse_pipeline.core.store import training_locks as locks_table
from pulse_pipeline.core.store.database import now
from pulse_pipeline.core.training.lock import (
    FINISHED_RUNS,
    Acquired,
    TrainingLock,
    TrainingLocked,
    process_alive,
    this_process,
)

PROJECT = Path(__file__).resolve().parents[3]
FAMILY = "access-qa"
HOST = socket.gethostname()
OTHER_HOST = "not-" + HOST
RUN_A = "a1b2c3d4-0000-4000-8000-00000000000a"
RUN_B = "b1b2c3d4-0000-4000-8000-00000000000b"
STALE = dt.timedelta(minutes=2)
BEAT = dt.timedelta(seconds=0.1)
UNREACHABLE = "postgresql+psycopg2://postgres@127.0.0.1:1/pulse"  # nothing listens on port 1


def _holder(who: str, run_id: str | None = None, *, pid: int | None = None, host: str = HOST) -> LockHolder:
    """A holder in this process unless told otherwise (a live pid on this host)."""
    return LockHolder(who, run_id, host, os.getpid() if pid is None else pid)


def _assert_utc(t: dt.datetime) -> None:
    assert t.tzinfo is not None and t.utcoffset() == dt.timedelta(0), t


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert _proc_state(child.pid) is None
    return child.pid


@pytest.fixture
def zombie_pid() -> Iterator[int]:
    """The pid of a child that has exited but was not waited for (a zombie), reaped afterwards."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        _eventually(lambda: _proc_state(child.pid) == "Z", timeout=30)
        yield child.pid
    finally:
        child.wait()


# -- acquire, refuse, re-enter ------------------------------------------------------------------


def test_acquired_then_refused_naming_the_holder_and_its_time(store):
    lock = TrainingLock(store.locks)
    alice = _holder("cli:alice", RUN_A)
    at = now() - dt.timedelta(seconds=20)
    got = lock.acquire(FAMILY, alice, at=at)
    assert got == Acquired(FAMILY, alice, at, taken_over=None)

    row = store.locks.get(FAMILY)
    assert row == LockRow(FAMILY, LockHolder("cli:alice", RUN_A, HOST, os.getpid()), at, at)
    _assert_utc(row.acquired_at)
    _assert_utc(row.heartbeat_at)

    since = f"{at:%Y-%m-%d %H:%M:%S} UTC"
    expected = (
        f"training already in progress since {since} (cli:alice (run a1b2c3d4, pid {os.getpid()} on {HOST}))"
    )
    for other in (
        _holder("sensor:new_annotations", RUN_B),  # another run, even in this very process
        _holder("cli:bob"),  # this process outside Dagster: not the run that holds it
        _holder("cli:bob", pid=4242, host=OTHER_HOST),
    ):
        with pytest.raises(TrainingLocked) as refused:
            lock.acquire(FAMILY, other)
        assert str(refused.value) == expected
        assert refused.value.exit_code == 3
    state = lock.state(FAMILY)
    assert state.held and state.describe() == expected
    assert store.locks.get(FAMILY) == row  # the refusals changed nothing

    assert lock.acquire("intent-router", _holder("cli:bob", RUN_B)).taken_over is None  # one lock per family
    assert store.locks.get(FAMILY) == row and store.locks.get("intent-router").holder.who == "cli:bob"
    assert store.locks.get("absent") is None
    assert not lock.state("absent").held and lock.state("absent").describe() == "absent is not training"


def test_this_process_is_this_host_and_pid():
    assert this_process("cli:alice", RUN_A) == LockHolder("cli:alice", RUN_A, HOST, os.getpid())
    assert this_process("x" * 300).who == "x" * 256
    with pytest.raises(ValueError):
        LockHolder("", None, HOST, 1)


def test_only_the_holder_refreshes_or_releases(store):
    lock = TrainingLock(store.locks)
    a = _holder("run:a", RUN_A)
    not_the_run = _holder("cli:bob")  # same host and pid, but a's lock belongs to its run
    t0 = now() - dt.timedelta(seconds=30)
    lock.acquire(FAMILY, a, at=t0)

    assert not store.locks.refresh(FAMILY, not_the_run)
    assert not store.locks.release(FAMILY, not_the_run)
    assert not lock.release(FAMILY, not_the_run)
    assert not lock.owned_by(FAMILY, not_the_run)
    assert store.locks.get(FAMILY).heartbeat_at == t0

    t1 = t0 + dt.timedelta(seconds=10)
    assert store.locks.refresh(FAMILY, a, at=t1)
    row = store.locks.get(FAMILY)
    assert (row.acquired_at, row.heartbeat_at) == (t0, t1)
    assert lock.owned_by(FAMILY, a)  # and beats
    assert store.locks.get(FAMILY).heartbeat_at > t1

    assert lock.release(FAMILY, a)
    assert store.locks.get(FAMILY) is None
    assert not lock.release(FAMILY, a)
    assert not store.locks.refresh(FAMILY, a)  # a released lock is not beaten back to life
    assert store.locks.get(FAMILY) is None

    # Outside Dagster the holder is the process: another pid on the same host is someone else.
    me = _holder("cli:bob")
    assert lock.acquire(FAMILY, me).taken_over is None
    other_process = _holder("cli:bob", pid=os.getppid())
    assert not store.locks.refresh(FAMILY, other_process)
    assert not store.locks.release(FAMILY, other_process)
    with pytest.raises(TrainingLocked):
        lock.acquire(FAMILY, other_process)
    assert store.locks.release(FAMILY, me)


def test_the_same_run_re_enters_from_another_process(store):
    lock = TrainingLock(store.locks)
    step1 = _holder("run:a", RUN_A, pid=os.getpid())
    step2 = _holder("run:a", RUN_A, pid=os.getppid())  # the next step of the run: another live process
    t0 = now() - dt.timedelta(seconds=30)
    lock.acquire(FAMILY, step1, at=t0)

    t1 = t0 + dt.timedelta(seconds=5)
    again = lock.acquire(FAMILY, step2, at=t1)
    assert again == Acquired(FAMILY, step2, t0, taken_over=None)  # since the run took it, not replaced
    row = store.locks.get(FAMILY)
    assert row == LockRow(FAMILY, step2, t0, t1)
    assert row.holder.pid == os.getppid() != os.getpid()

    assert store.locks.refresh(FAMILY, step2, at=t1 + dt.timedelta(seconds=1))
    assert store.locks.get(FAMILY).holder.pid == os.getppid()
    with pytest.raises(TrainingLocked, match=rf"run a1b2c3d4, pid {os.getppid()} on "):
        lock.acquire(FAMILY, _holder("run:b", RUN_B, pid=os.getppid()))  # same process, another run

    # Outside Dagster, the same process asking again keeps its lock and its time.
    lock.release(FAMILY, step2)
    me = _holder("cli:alice")
    lock.acquire(FAMILY, me, at=t0)
    assert lock.acquire(FAMILY, _holder("cli:alice", pid=os.getpid()), at=t1) == Acquired(FAMILY, me, t0)
    assert store.locks.get(FAMILY).heartbeat_at == t1


# -- staleness, one reason at a time ------------------------------------------------------------


def test_stale_when_its_heartbeat_is_older_than_stale_after(store):
    lock = TrainingLock(store.locks, stale_after=STALE)  # no run status; a live pid: only the beat counts
    dead = _holder("run:old", RUN_A)
    new = _holder("run:new", RUN_B)
    t0 = now() - dt.timedelta(minutes=10)
    lock.acquire(FAMILY, dead, at=t0)

    fresh = lock.state(FAMILY, at=t0 + STALE)
    assert fresh.held and fresh.stale_because is None
    with pytest.raises(TrainingLocked, match="training already in progress since"):
        lock.acquire(FAMILY, new, at=t0 + STALE)  # exactly stale_after: not yet
    assert store.locks.get(FAMILY).holder == dead

    state = lock.state(FAMILY)  # now: ten minutes without a beat
    assert not state.held
    assert re.fullmatch(r"no heartbeat for 60[01] s \(stale after 120 s\)", state.stale_because)
    assert state.describe().startswith(f"{FAMILY}: a dead training's lock (run:old (run a1b2c3d4, pid ")

    later = t0 + STALE + dt.timedelta(seconds=1)
    taken = lock.acquire(FAMILY, new, at=later)
    assert (taken.holder, taken.acquired_at) == (new, later)
    assert taken.taken_over is not None
    assert taken.taken_over.row == LockRow(FAMILY, dead, t0, t0)
    assert taken.taken_over.stale_because == "no heartbeat for 121 s (stale after 120 s)"
    assert store.locks.get(FAMILY) == LockRow(FAMILY, new, later, later)
    assert not store.locks.refresh(FAMILY, dead)  # the old holder learns it lost the lock
    with pytest.raises(TrainingLocked, match=r"\(run:new \(run b1b2c3d4"):
        lock.acquire(FAMILY, dead, at=later + dt.timedelta(seconds=1))


def test_stale_when_its_dagster_run_has_finished(store):
    statuses: dict[str, str | None] = {}
    lock = TrainingLock(store.locks, stale_after=STALE, run_status=statuses.get)
    a = _holder("run:a", RUN_A)  # a live pid and a fresh beat: only the run's status can kill it
    b = _holder("run:b", RUN_B)
    lock.acquire(FAMILY, a)

    for status in (None, "QUEUED", "STARTING", "STARTED", "CANCELING"):
        statuses[RUN_A] = status
        assert lock.state(FAMILY).held, status
    statuses[RUN_A] = "STARTED"
    with pytest.raises(TrainingLocked):
        lock.acquire(FAMILY, b)
    assert lock.free_stale(FAMILY) is None

    assert {"SUCCESS", "FAILURE", "CANCELED"} == FINISHED_RUNS
    for status in sorted(FINISHED_RUNS):
        statuses[RUN_A] = status
        state = lock.state(FAMILY)
        assert not state.held and state.stale_because == f"its run a1b2c3d4 has finished ({status})"
    statuses[RUN_A] = "FAILURE"
    taken = lock.acquire(FAMILY, b)
    assert taken.taken_over is not None and taken.taken_over.row.holder == a
    assert taken.taken_over.stale_because == "its run a1b2c3d4 has finished (FAILURE)"
    assert store.locks.get(FAMILY).holder == b

    # Without a way to ask Dagster, a run's lock lives by its heartbeat and its process.
    lock.release(FAMILY, b)
    blind = TrainingLock(store.locks, stale_after=STALE)
    blind.acquire(FAMILY, a)
    assert blind.state(FAMILY).held


def test_stale_when_its_process_is_gone_from_this_host(store, dead_pid, zombie_pid):
    lock = TrainingLock(store.locks, stale_after=STALE)
    new = _holder("cli:new")
    assert process_alive(os.getpid()) and not process_alive(dead_pid) and not process_alive(zombie_pid)

    for pid in (dead_pid, zombie_pid):
        gone = _holder("cli:old", pid=pid)
        lock.acquire(FAMILY, gone)  # a fresh beat, no run: only the process can kill it
        state = lock.state(FAMILY)
        assert not state.held
        assert state.stale_because == f"its process (pid {pid} on {HOST}) is gone"
        taken = lock.acquire(FAMILY, new)
        assert taken.taken_over is not None and taken.taken_over.row.holder == gone
        assert taken.taken_over.stale_because == f"its process (pid {pid} on {HOST}) is gone"
        assert store.locks.get(FAMILY).holder == new
        assert lock.release(FAMILY, new)

    # The pid of a process of another host says nothing about this host's processes.
    elsewhere = _holder("cli:old", pid=dead_pid, host=OTHER_HOST)
    lock.acquire(FAMILY, elsewhere)
    assert lock.state(FAMILY).held
    with pytest.raises(TrainingLocked, match=rf"pid {dead_pid} on {OTHER_HOST}\)\)$"):
        lock.acquire(FAMILY, new)
    assert lock.free_stale(FAMILY) is None
    assert store.locks.get(FAMILY).holder == elsewhere

    # A Dagster run's step process that died: stale too, whatever Dagster says of the run.
    lock.release(FAMILY, elsewhere)
    step = _holder("run:a", RUN_A, pid=dead_pid)
    TrainingLock(store.locks, run_status=lambda _: "STARTED").acquire(FAMILY, step)
    assert not TrainingLock(store.locks, run_status=lambda _: "STARTED").state(FAMILY).held


def test_a_lock_row_written_before_migration_0004_is_taken_over_when_stale(store):
    t0 = now() - dt.timedelta(hours=1)
    with store.begin() as conn:  # what 0004 leaves of an old row: no run, host '' and pid 0
        conn.execute(
            sa.insert(locks_table).values(
                family=FAMILY, holder="cli pid 1 on a", acquired_at=t0, heartbeat_at=t0, host="", pid=0
            )
        )
    lock = TrainingLock(store.locks, stale_after=STALE)
    assert not lock.state(FAMILY).held
    taken = lock.acquire(FAMILY, _holder("cli:new"))
    assert taken.taken_over is not None and taken.taken_over.row.holder.who == "cli pid 1 on a"


# -- races --------------------------------------------------------------------------------------


def _race(url: str, n: int, attempt: Callable[[Store, int], object]) -> list[object]:
    """`attempt(store, i)` at once in `n` threads, each on its own Store (its own connections);
    a TrainingLocked is returned, not raised."""
    barrier = threading.Barrier(n, timeout=30)
    with ExitStack() as stack:
        stores = [stack.enter_context(Store(url)) for _ in range(n)]

        def run(i: int) -> object:
            barrier.wait()
            try:
                return attempt(stores[i], i)
            except TrainingLocked as exc:
                return exc

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(run, range(n)))


def test_eight_threads_acquire_a_free_lock_one_wins(store):
    holders = [_holder(f"sensor:s{i}", f"run-{i:02d}-{RUN_A[7:]}") for i in range(8)]
    results = _race(store.url, 8, lambda s, i: TrainingLock(s.locks).acquire(FAMILY, holders[i]))
    winners = [r for r in results if isinstance(r, Acquired)]
    losers = [r for r in results if isinstance(r, TrainingLocked)]
    assert len(winners) == 1 and len(losers) == 7, results
    winner = winners[0].holder
    assert winners[0].taken_over is None
    assert store.locks.get(FAMILY).holder == winner
    assert all(f"({winner.describe()})" in str(r) for r in losers), losers


def test_two_take_overs_of_one_stale_row_one_wins(store):
    dead = _holder("run:dead", RUN_A)
    store.locks.insert(FAMILY, dead, at=now() - dt.timedelta(hours=1))
    stale = store.locks.get(FAMILY)
    p1, p2 = _holder("run:p1", RUN_B), _holder("cli:p2", pid=os.getppid())
    assert store.locks.take_over(FAMILY, stale, p1)
    assert not store.locks.take_over(FAMILY, stale, p2)  # the row is no longer the stale one read
    assert store.locks.get(FAMILY).holder == p1
    assert not store.locks.take_over(FAMILY, stale, p1)
    assert not store.locks.take_over("intent-router", stale, p2)  # only that family's row
    assert store.locks.get("intent-router") is None


class _MeetingLocks(TrainingLocks):
    """Holds every take-over until both racers are there: both read the stale row before either
    replaces it."""

    def __init__(self, db: Database, meeting: threading.Barrier):
        super().__init__(db)
        self.meeting = meeting

    def take_over(self, *args, **kwargs) -> bool:  # type: ignore[no-untyped-def]
        self.meeting.wait()
        return super().take_over(*args, **kwargs)


def test_two_threads_taking_over_one_stale_lock_one_wins(store):
    dead = _holder("run:dead", RUN_A)
    TrainingLock(store.locks).acquire(FAMILY, dead, at=now() - dt.timedelta(hours=1))
    racers = [_holder("run:p1", RUN_B), _holder("run:p2", "c1b2c3d4-0000-4000-8000-00000000000c")]
    meeting = threading.Barrier(2, timeout=30)

    def attempt(s: Store, i: int) -> Acquired:
        return TrainingLock(_MeetingLocks(s, meeting), stale_after=STALE).acquire(FAMILY, racers[i])

    results = _race(store.url, 2, attempt)
    winners = [r for r in results if isinstance(r, Acquired)]
    losers = [r for r in results if isinstance(r, TrainingLocked)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert winners[0].taken_over is not None and winners[0].taken_over.row.holder == dead
    assert f"({winners[0].holder.describe()})" in str(losers[0])
    assert store.locks.get(FAMILY).holder == winners[0].holder


_RACER = r"""
import sys, time
from pulse_pipeline.core.store import Store
from pulse_pipeline.core.training.lock import TrainingLock, TrainingLocked, this_process

url, family, who = sys.argv[1:4]
with Store(url) as store:
    lock = TrainingLock(store.locks)
    store.locks.get(family)  # connected before the start: the race is the acquire
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    time.sleep(max(0.0, start - time.time()))
    try:
        lock.acquire(family, this_process(who))
        print("won", flush=True)
    except TrainingLocked as exc:
        print("lost", exc, flush=True)
"""


def test_processes_acquiring_at_once_one_wins(store):
    n = 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, store.url, FAMILY, f"cli:racer{i}"],
            cwd=PROJECT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    try:
        for p in procs:
            assert p.stdout.readline() == "ready\n", p.stderr.read()
        start = time.time() + 0.5  # every racer is connected and waits for this instant
        for p in procs:
            p.stdin.write(f"{start!r}\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), outputs
    said = [out.strip() for out, _ in outputs]
    winners = [i for i, s in enumerate(said) if s == "won"]
    assert len(winners) == 1, said
    won = procs[winners[0]]
    row = store.locks.get(FAMILY)
    assert row.holder == LockHolder(f"cli:racer{winners[0]}", None, HOST, won.pid)
    expected = f"lost training already in progress since {row.acquired_at:%Y-%m-%d %H:%M:%S} UTC ({row.holder.describe()})"
    assert sorted(s for i, s in enumerate(said) if i != winners[0]) == [expected] * (n - 1)
    # The winner has exited: its lock is a dead process's, taken over at once.
    taken = TrainingLock(store.locks).acquire(FAMILY, _holder("cli:next"))
    assert taken.taken_over is not None and taken.taken_over.row == row


# -- the heartbeat thread -----------------------------------------------------------------------


def test_hold_beats_while_the_block_runs_and_releases_at_its_end(store):
    lock = TrainingLock(store.locks, heartbeat=BEAT)
    me = _holder("run:a", RUN_A)
    with lock.hold(FAMILY, me) as lease:
        first = store.locks.get(FAMILY)
        assert first.holder == me and lease.acquired.holder == me
        _eventually(lambda: store.locks.get(FAMILY).heartbeat_at > first.heartbeat_at)
        second = store.locks.get(FAMILY).heartbeat_at
        _eventually(lambda: store.locks.get(FAMILY).heartbeat_at > second)  # and again
        assert store.locks.get(FAMILY).acquired_at == first.acquired_at
        assert not lease.lost.is_set() and lease.last_error is None
        lease.check()
    assert store.locks.get(FAMILY) is None

    with lock.hold(FAMILY, me, release=False):
        pass
    kept = store.locks.get(FAMILY)
    assert kept is not None and kept.holder == me
    time.sleep(3 * BEAT.total_seconds())
    assert store.locks.get(FAMILY).heartbeat_at == kept.heartbeat_at  # the beating stopped with the block
    with lock.hold(FAMILY, _holder("run:a", RUN_A, pid=os.getppid())) as lease:  # the run's next step
        assert lease.acquired.acquired_at == kept.acquired_at
    assert store.locks.get(FAMILY) is None


def test_hold_refused_while_another_holds_and_told_of_a_dead_one(store, dead_pid):
    lock = TrainingLock(store.locks, heartbeat=BEAT)
    lock.acquire(FAMILY, _holder("run:a", RUN_A))
    with pytest.raises(TrainingLocked), lock.hold(FAMILY, _holder("run:b", RUN_B)):
        pytest.fail("the block ran without the lock")
    assert store.locks.get(FAMILY).holder.run_id == RUN_A

    lock.release(FAMILY, _holder("run:a", RUN_A))
    gone = _holder("cli:old", pid=dead_pid)
    lock.acquire(FAMILY, gone)
    told = []
    with lock.hold(FAMILY, _holder("run:b", RUN_B), on_taken_over=told.append) as lease:
        assert lease.acquired.taken_over == told[0]
    assert [s.row.holder for s in told] == [gone]


def test_a_lease_taken_over_learns_it_lost_the_lock(store):
    lock = TrainingLock(store.locks, heartbeat=BEAT)
    me, thief = _holder("run:a", RUN_A), _holder("run:b", RUN_B)
    with lock.hold(FAMILY, me) as lease:
        # Another training presumed this one dead and replaced the very row it read.
        for _ in range(100):
            row = store.locks.get(FAMILY)
            if store.locks.take_over(FAMILY, row, thief, at=row.heartbeat_at + 2 * STALE):
                break
        else:
            pytest.fail("could not take the row over between two beats")
        assert lease.lost.wait(5)
        with pytest.raises(TrainingLocked, match=f"the training lock of {FAMILY} was taken over"):
            lease.check()
    assert store.locks.get(FAMILY).holder == thief  # its end releases nothing of the thief's


def test_a_heartbeat_that_cannot_reach_the_database_keeps_beating(store):
    locks = TrainingLocks(store)  # its own repository: pointing it elsewhere touches nothing else
    lock = TrainingLock(locks, heartbeat=BEAT)
    me = _holder("run:a", RUN_A)
    unreachable = Database(UNREACHABLE, upgrade=False)
    with pytest.raises(StoreError):
        TrainingLocks(unreachable).refresh(FAMILY, me)
    try:
        with lock.hold(FAMILY, me) as lease:
            locks.db = unreachable  # the database goes away
            _eventually(lambda: lease.last_error is not None)
            assert lease.last_error.startswith("cannot connect to the annotation store at postgresql")
            before = store.locks.get(FAMILY).heartbeat_at
            time.sleep(3 * BEAT.total_seconds())  # several failed beats
            assert not lease.lost.is_set()
            assert store.locks.get(FAMILY).heartbeat_at == before
            locks.db = store  # and comes back: the same thread beats again
            _eventually(lambda: lease.last_error is None)
            _eventually(lambda: store.locks.get(FAMILY).heartbeat_at > before)
            assert not lease.lost.is_set()
            lease.check()
        assert store.locks.get(FAMILY) is None
    finally:
        locks.db = store
        unreachable.dispose()


# -- freeing a dead holder's lock ---------------------------------------------------------------


def test_free_stale_frees_only_a_stale_lock(store):
    lock = TrainingLock(store.locks, stale_after=STALE)
    a = _holder("run:a", RUN_A)
    assert lock.free_stale(FAMILY) is None  # nothing to free

    lock.acquire(FAMILY, a)
    assert lock.free_stale(FAMILY) is None
    assert store.locks.get(FAMILY).holder == a

    lock.release(FAMILY, a)
    t0 = now() - dt.timedelta(minutes=5)
    lock.acquire(FAMILY, a, at=t0)
    freed = lock.free_stale(FAMILY)
    assert freed is not None and not freed.held
    assert freed.row == LockRow(FAMILY, a, t0, t0)
    assert re.fullmatch(r"no heartbeat for 30[01] s \(stale after 120 s\)", freed.stale_because)
    assert store.locks.get(FAMILY) is None
    assert lock.free_stale(FAMILY) is None


def test_remove_stale_deletes_only_the_row_that_was_read(store):
    a = _holder("run:a", RUN_A)
    t0 = now() - dt.timedelta(hours=1)
    store.locks.insert(FAMILY, a, at=t0)
    stale = store.locks.get(FAMILY)
    assert store.locks.refresh(FAMILY, a, at=t0 + dt.timedelta(seconds=1))  # it beat after all
    assert not store.locks.remove_stale(stale)
    assert store.locks.get(FAMILY).heartbeat_at == t0 + dt.timedelta(seconds=1)

    current = store.locks.get(FAMILY)
    assert store.locks.take_over(FAMILY, current, _holder("run:b", RUN_B))
    assert not store.locks.remove_stale(current)  # taken over meanwhile: not the row read
    assert store.locks.get(FAMILY).holder.run_id == RUN_B
    assert store.locks.remove_stale(store.locks.get(FAMILY))
    assert store.locks.get(FAMILY) is None
    assert store.locks.insert(FAMILY, a)  # free again


def test_insert_takes_only_a_free_lock(store):
    a, b = _holder("run:a", RUN_A), _holder("run:b", RUN_B)
    assert store.locks.insert(FAMILY, a)
    assert not store.locks.insert(FAMILY, b)
    assert not store.locks.insert(FAMILY, a)  # even for its holder: re-entry is acquire's
    assert store.locks.get(FAMILY).holder == a


# -- process_alive ------------------------------------------------------------------------------


def test_process_alive(dead_pid, zombie_pid):
    assert process_alive(os.getpid())
    assert process_alive(os.getppid())
    assert not process_alive(dead_pid)
    assert _proc_state(zombie_pid) == "Z"  # it still exists, and kill(pid, 0) reaches it
    os.kill(zombie_pid, 0)
    assert not process_alive(zombie_pid)


def test_a_lock_parked_between_two_steps_of_a_live_run_is_not_taken_for_dead(store, dead_pid):
    """In a multiprocess run each step is its own process: the step that ended parks the lock (pid 0)
    for the next one, so its gone process does not make the live run's lock look dead."""
    ended_step = LockHolder("sensor:s", RUN_A, socket.gethostname(), dead_pid)
    lock = TrainingLock(store.locks, run_status=lambda _: "STARTED")
    lock.acquire(FAMILY, ended_step)
    assert lock.state(FAMILY).stale_because.startswith("its process")  # without parking: taken for dead
    assert store.locks.park(FAMILY, ended_step)
    assert lock.state(FAMILY).held and lock.free_stale(FAMILY) is None
    next_step = LockHolder("sensor:s", RUN_A, socket.gethostname(), os.getpid())
    assert lock.acquire(FAMILY, next_step).taken_over is None  # the run's next step takes it back
    assert store.locks.get(FAMILY).holder.pid == os.getpid()
    finished = TrainingLock(store.locks, run_status=lambda _: "FAILURE")
    assert store.locks.park(FAMILY, next_step) and finished.state(FAMILY).stale_because.startswith("its run")
