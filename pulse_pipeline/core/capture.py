"""What the capture service stores, and who may write it.

Production logs every model call (`interaction` records) and its users' verdicts (`feedback`)
through the capture service (`pulse serve-capture`); this module is its core, free of HTTP:

- **Grants**: bearer tokens, configured as their SHA-256 hashes (PULSE_CAPTURE_TOKENS, a JSON
  list of `{"name", "sha256", "families"}`), each allowed to write some families (`["*"]`: all).
  `pulse capture-token` makes a token and prints its grant.
- **CaptureWriter**: one thread stores every request waiting in one transaction (group commit:
  one COPY on PostgreSQL however many requests arrived together), so that many small requests
  cost few commits. A request's future resolves only once its records are committed, so an
  acknowledged record is stored. Records are checked as `pulse ingest` checks a file's lines:
  a bad one goes to quarantine with its reason and is reported by its index in the request;
  ids make a re-sent request a no-op. A bounded number of records may wait (`max_pending`);
  past it `submit` raises `QueueFull`, for the service to answer 429.
- Feedback that names only its `interaction_id` gets the interaction's input, output and model
  version filled in (`query`, `response`, `model_version`) before it is checked, so that it is a
  complete judgment in the store; feedback on an interaction that is not stored is quarantined.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import orjson

from pulse_pipeline.core.families import PulseConfig
from pulse_pipeline.core.ingestion import MAX_LINE_BYTES, IngestResult, _Batch, _Writer, start_ingestion
from pulse_pipeline.core.store import Store

TOKEN_PREFIX = "pulse_"


def new_token() -> str:
    """A fresh bearer token (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class GrantError(ValueError):
    """PULSE_CAPTURE_TOKENS cannot be read; the message names the entry and the field."""


@dataclass(frozen=True)
class Grant:
    name: str  # who holds the token, for logs and the quarantine's source
    sha256: str
    families: frozenset[str]  # "*": every family

    def allows(self, family: str) -> bool:
        return "*" in self.families or family in self.families


def parse_grants(text: str | None) -> list[Grant]:
    """The grants of PULSE_CAPTURE_TOKENS (a JSON list); none when unset."""
    if not text or not text.strip():
        return []
    try:
        entries = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise GrantError(f"PULSE_CAPTURE_TOKENS is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise GrantError("PULSE_CAPTURE_TOKENS must be a JSON list of {name, sha256, families}")
    grants: list[Grant] = []
    for i, entry in enumerate(entries):
        where = f"PULSE_CAPTURE_TOKENS[{i}]"
        if not isinstance(entry, dict):
            raise GrantError(f"{where} must be an object with name, sha256 and families")
        name, digest, families = entry.get("name"), entry.get("sha256"), entry.get("families")
        if not isinstance(name, str) or not name:
            raise GrantError(f"{where}.name is missing")
        if (
            not isinstance(digest, str)
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise GrantError(
                f"{where}.sha256 must be the token's SHA-256 in hex (pulse capture-token prints it)"
            )
        if not isinstance(families, list) or not families or not all(isinstance(f, str) for f in families):
            raise GrantError(f'{where}.families must list family names, or ["*"] for all')
        grants.append(Grant(name, digest, frozenset(families)))
    if len({g.name for g in grants}) != len(grants):
        raise GrantError("PULSE_CAPTURE_TOKENS: two grants have the same name")
    return grants


def find_grant(grants: list[Grant], token: str) -> Grant | None:
    """The grant of a presented token, compared in constant time with every grant."""
    digest = hash_token(token)
    found = None
    for grant in grants:
        if hmac.compare_digest(grant.sha256, digest):
            found = grant
    return found


class QueueFull(RuntimeError):
    """More records wait for the store than the writer takes: try again shortly."""


class WriterClosed(RuntimeError):
    """The writer is stopping: the service is shutting down."""


@dataclass(frozen=True)
class Rejected:
    index: int  # the record's position in its request, from 0
    reason: str


@dataclass(frozen=True)
class Outcome:
    """What became of one request's records, once committed."""

    accepted: int
    duplicates: int
    quarantined: list[Rejected]


@dataclass
class WriterStats:
    """Running totals, for /metrics."""

    commits: int = 0
    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failures: int = 0  # groups whose transaction failed (their requests got an error)


@dataclass
class _Request:
    records: list[Any]
    label: str  # names the request in quarantine reasons, e.g. "web-frontend request 7f3a"
    future: Future[Outcome]


class _Group(_Batch):
    """A batch of several requests' records, whose quarantine reasons name request and index."""

    def __init__(self, *args: Any, where: dict[int, str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.where = where  # record number -> "label record i"
        self.plain: dict[int, str] = {}  # record number -> reason, for the response

    def _reject(self, number: int, raw: bytes, reason: str, **kwargs: Any) -> None:
        super()._reject(number, raw, reason, **kwargs)
        self.plain[number] = reason
        self.rejected[-1].reason = f"{self.where[number]}: {reason}"

    def reject(self, number: int, raw: bytes, reason: str, family: str | None) -> None:
        """A record refused before its check (feedback on an interaction not stored)."""
        self.size += 1
        self._reject(number, raw, reason, family=family)


class CaptureWriter:
    """Stores requests' records with group commit on one thread; see the module docstring."""

    def __init__(
        self,
        store: Store,
        config: PulseConfig,
        *,
        max_pending: int = 50_000,
        max_group: int = 5_000,
        source: str | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_commit: Callable[[float, int], None] | None = None,
    ):
        """`on_commit(seconds, records)` is called after each committed group (for metrics)."""
        self.store = store
        self.config = config
        self.max_pending = max_pending
        self.max_group = max_group
        self.source = source or f"capture-service {socket.gethostname()}:{os.getpid()}"
        self.now = now
        self.on_commit = on_commit
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        self._ingestion: IngestResult | None = None
        self._numbers = 0  # records numbered so far (their `source_line`)
        self._batches = 0
        self._thread = threading.Thread(target=self._run, name="pulse-capture-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Records submitted and not yet committed (or failed)."""
        return self._pending

    def submit(self, records: list[Any], *, label: str) -> Future[Outcome]:
        """Queue one request's decoded records; the future resolves once they are committed."""
        with self._lock:
            if self._closed:
                raise WriterClosed("the capture writer is stopping")
            if self._pending and self._pending + len(records) > self.max_pending:
                raise QueueFull(f"{self._pending:,} records wait for the store (limit {self.max_pending:,})")
            self._pending += len(records)
        future: Future[Outcome] = Future()
        self._queue.put(_Request(records, label, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Store what was submitted, mark the ingestion finished, stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)
        if self._ingestion is not None:
            try:
                empty = _Batch(
                    self._ingestion.ingestion_id, self._batches + 1, self.source, self.now().date()
                )
                empty.close(self._ingestion, self.now(), self.store.dialect)
                empty.lines_so_far = self._ingestion.lines
                _Writer(self.store, self._ingestion).write(empty, final=True)
            except Exception:  # the store is gone: the ingestion stays unfinished, as after a crash
                pass

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, size, stop = [first], len(first.records), False
            while size < self.max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
                size += len(more.records)
            self._commit(group, size)
            if stop:
                return

    def _commit(self, group: list[_Request], size: int) -> None:
        started = time.perf_counter()
        try:
            outcomes = self._store(group)
            if len(outcomes) != len(group):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(group)} requests")
        except BaseException as exc:  # every request of the group hears of it; the thread goes on
            self.stats.failures += 1
            for request in group:
                request.future.set_exception(exc)
        else:
            self.stats.commits += 1
            self.stats.records += size
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started, size)
            for request, outcome in zip(group, outcomes, strict=True):
                self.stats.accepted += outcome.accepted
                self.stats.duplicates += outcome.duplicates
                self.stats.quarantined += len(outcome.quarantined)
                request.future.set_result(outcome)
        finally:
            with self._lock:
                self._pending -= size

    def _start_ingestion(self) -> IngestResult:
        if self._ingestion is None:
            self._ingestion = start_ingestion(self.store, self.source, self.now())
        return self._ingestion

    def _store(self, group: list[_Request]) -> list[Outcome]:
        result = self._start_ingestion()
        records = [obj for request in group for obj in request.records]
        missing = _complete_feedback(self.store, records)
        where: dict[int, str] = {}
        spans: list[range] = []
        number = self._numbers
        for request in group:
            spans.append(range(number + 1, number + 1 + len(request.records)))
            for i in range(len(request.records)):
                where[number + 1 + i] = f"{request.label} record {i}"
            number += len(request.records)
        batch = _Group(result.ingestion_id, self._batches + 1, self.source, self.now().date(), where=where)
        for n, obj in enumerate(records, start=self._numbers + 1):
            raw = orjson.dumps(obj)
            if n - self._numbers - 1 in missing:
                family = obj.get("family") if isinstance(obj.get("family"), str) else None
                batch.reject(n, raw, missing[n - self._numbers - 1], family)
            else:
                batch.add(n, raw, len(raw), self.config, MAX_LINE_BYTES)
        batch.close(result, self.now(), self.store.dialect)
        batch.lines_so_far = result.lines + batch.size
        _Writer(self.store, result).write(batch)
        # committed: only now do the numbers and the running line count move on
        result.lines += batch.size
        self._numbers = number
        self._batches += 1
        stored = {row[10] for row in batch.rows if row[0] in batch.inserted}  # row[10]: its number
        outcomes = []
        for span in spans:
            quarantined = [Rejected(n - span.start, batch.plain[n]) for n in span if n in batch.plain]
            accepted = sum(1 for n in span if n in stored)
            outcomes.append(Outcome(accepted, len(span) - accepted - len(quarantined), quarantined))
        return outcomes


def _complete_feedback(store: Store, records: list[Any]) -> dict[int, str]:
    """Fill in feedback that names only its interaction (in place); return position -> reason of
    the feedback whose interaction cannot be found."""
    wanted: dict[int, str] = {}
    for i, obj in enumerate(records):
        if (
            isinstance(obj, dict)
            and obj.get("kind") == "feedback"
            and isinstance(obj.get("interaction_id"), str)
            and ("query" not in obj or "response" not in obj)
        ):
            wanted[i] = obj["interaction_id"]
    if not wanted:
        return {}
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for obj in records:  # logged in the same group, not stored yet
        if isinstance(obj, dict) and obj.get("kind") == "interaction" and isinstance(obj.get("id"), str):
            found[obj["id"]] = (obj.get("family"), obj)  # type: ignore[assignment]
    found = store.annotations.payloads(set(wanted.values()) - set(found), kind="interaction") | found
    missing: dict[int, str] = {}
    for i, interaction_id in wanted.items():
        obj = records[i]
        family, interaction = found.get(interaction_id, (None, None))
        if interaction is None:
            missing[i] = (
                f"feedback.interaction_id {interaction_id!r}: no interaction with this id is stored "
                "(log the interaction first, or give query and response)"
            )
        elif family != obj.get("family"):
            missing[i] = (
                f"feedback.interaction_id {interaction_id!r} is an interaction of family {family!r}, "
                f"not {obj.get('family')!r}"
            )
        elif interaction.get("output") is None and "response" not in obj:
            missing[i] = f"feedback.interaction_id {interaction_id!r}: the interaction has no output to judge"
        else:
            filled = {
                "query": _as_text(interaction["input"]),
                "response": _as_text(interaction.get("output")),
            }
            if interaction.get("model_version"):
                filled["model_version"] = interaction["model_version"]
            records[i] = filled | obj
    return missing


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
