"""Log model interactions and user feedback from serving code to the pulse capture service.

One line in the serving path; the request never gets slower and never fails because of it::

    from pulse_pipeline.client import PulseClient
    pulse = PulseClient("http://capture:8030", token="...", family="support-intents")
    iid = pulse.log_interaction(input=text, output=label, predicted_label=label, confidence=0.93)
    pulse.log_feedback(iid, thumbs="down", corrected_response="card_delivery_estimate", annotator="user-42")
    with pulse.trace(input=text, model_version="v7") as t: t.output = model(text)  # latency measured

``log_interaction`` and ``log_feedback`` build the record (with a client-generated uuid4 id, returned
at once), put it in a bounded in-memory buffer and return: they never touch the network and never
raise for network trouble. A background daemon thread (``PulseClient``) or asyncio task
(``AsyncPulseClient``) posts batches to ``POST {base_url}/v1/interactions`` and ``/v1/feedback``,
retries transient failures (connection errors, timeouts, 429, 5xx) with capped, fully jittered
exponential backoff for as long as the process lives (honouring ``Retry-After``), sends the records
of a batch refused as too large (413) again in halves, and drops a batch the server refuses
permanently (other 4xx, or one record too large) with a warning. Re-sending is safe: the server is
idempotent by record id. When ``max_buffer`` records are waiting, new ones are dropped and counted
in ``stats.dropped``. ``flush()`` waits for what was logged so far; ``close()`` (also run at exit)
flushes and stops the sender.

The URL and token default to the ``PULSE_CAPTURE_URL`` and ``PULSE_CAPTURE_TOKEN`` environment
variables. This module imports only the standard library and httpx, so it can be vendored alone.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as _dt
import email.utils
import functools
import inspect
import json
import logging
import math
import os
import random
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx

__all__ = ["AsyncPulseClient", "ClientStats", "PulseClient", "Trace"]

log = logging.getLogger("pulse_pipeline.client")

URL_ENV = "PULSE_CAPTURE_URL"
TOKEN_ENV = "PULSE_CAPTURE_TOKEN"

_INTERACTION = "interaction"
_FEEDBACK = "feedback"
_ENDPOINTS = {_INTERACTION: "/v1/interactions", _FEEDBACK: "/v1/feedback"}
_TRANSIENT_4XX = frozenset({408, 425, 429})
_WARN_EVERY_S = 60.0
_USER_AGENT = "pulse-pipeline-client/1"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ClientStats:
    """A snapshot of a client's counters.

    Every record logged ends up in exactly one of: ``queued`` (still buffered, including a batch in
    flight), ``sent`` (stored by the server: accepted or a duplicate of a record it already had),
    ``quarantined`` (refused individually in a 2xx answer), ``rejected`` (in a batch refused with a
    permanent 4xx) or ``dropped`` (not buffered: buffer full or client closed). ``duplicates`` is the
    part of ``sent`` the server already had; ``retries`` counts failed attempts that will be retried.
    """

    queued: int
    sent: int
    duplicates: int
    quarantined: int
    rejected: int
    dropped: int
    retries: int
    last_error: str | None


class _RateLimited:
    """Warn at most once per interval for each key (a full buffer, an unreachable service...)."""

    def __init__(self, interval: float = _WARN_EVERY_S) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}

    def due(self, key: str) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        self._last[key] = now
        return True


# --------------------------------------------------------------------------------------------------
# Records


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _dumps(record: dict[str, Any]) -> str:
    """Serialise in the caller's thread (later mutation of the caller's objects cannot leak in).

    Never fails on odd values: unknown types become JSON through ``tolist()``/``isoformat()``/``str``,
    and NaN/inf (invalid JSON, which would get the whole batch refused) become null (top-level: omitted).
    """
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False, default=_json_default)
    except ValueError:
        plain = _finite(json.loads(json.dumps(record, ensure_ascii=False, default=_json_default)))
        plain = {key: value for key, value in plain.items() if value is not None}  # optional keys go
        return json.dumps(plain, ensure_ascii=False, allow_nan=False)


def _put(record: dict[str, Any], **optional: Any) -> None:
    for key, value in optional.items():
        if value is not None:
            record[key] = value


# --------------------------------------------------------------------------------------------------
# The shared core: buffer, batching, accounting, backoff (no I/O, no threads of its own)


class _Item:
    __slots__ = ("enqueued", "json", "seq")

    def __init__(self, seq: int, enqueued: float, json_text: str) -> None:
        self.seq = seq
        self.enqueued = enqueued
        self.json = json_text


class _Batch:
    __slots__ = ("body", "items", "kind", "path")

    def __init__(self, kind: str, items: list[_Item]) -> None:
        self.kind = kind
        self.path = _ENDPOINTS[kind]
        self.items = items
        self.body = ('{"records":[' + ",".join(item.json for item in items) + "]}").encode()

    def __len__(self) -> int:
        return len(self.items)


class _Core:
    """Buffering, batching, stats and retry decisions shared by the sync and async clients.

    All state is guarded by ``lock``. The sender (a thread or a task) calls :meth:`take` to get the
    next batch or the time to wait, sends it, then reports the outcome with :meth:`on_response` or
    :meth:`on_error`, which return how long to back off (0: done, take the next batch). Records stay in
    the buffer until their batch is settled, so a batch being retried stays at the head and counts
    against ``max_buffer``. ``wake`` is called (under the lock) when the sender may have to stop
    waiting: the buffer became non-empty or reached a full batch, or a flush or close was asked for.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        flush_interval: float,
        max_buffer: int,
        backoff_base: float,
        backoff_cap: float,
    ) -> None:
        if batch_size < 1 or max_buffer < 1:
            raise ValueError("batch_size and max_buffer must be at least 1")
        if flush_interval < 0 or backoff_base < 0 or backoff_cap < 0:
            raise ValueError("flush_interval, backoff_base and backoff_cap must not be negative")
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.wake: Callable[[], None] = lambda: None
        self._warn = _RateLimited()
        self.reset()

    def reset(self) -> None:
        """Fresh lock and empty buffer (also in a forked child: the parent keeps sending its records)."""
        self.lock = threading.Lock()
        self.settled = threading.Condition(self.lock)  # notified whenever a batch is settled
        self._queues: dict[str, deque[_Item]] = {_INTERACTION: deque(), _FEEDBACK: deque()}
        self._seq = 0
        self._flush_through = 0  # records with seq <= this are due now (a flush is waiting on them)
        self._failures = 0  # consecutive failed attempts, for the backoff exponent
        self._take_limit = self.batch_size  # halved by each 413, doubled back by each success
        self.closing = False
        self.closed = False
        self.sent = self.duplicates = self.quarantined = self.rejected = self.dropped = self.retries = 0
        self.last_error: str | None = None

    # -- the caller's side ------------------------------------------------------------------------

    def add(self, kind: str, json_text: str) -> bool:
        """Buffer one serialised record; False (and counted as dropped) if full or closed."""
        with self.lock:
            queued = len(self._queues[_INTERACTION]) + len(self._queues[_FEEDBACK])
            if self.closed or queued >= self.max_buffer:
                self.dropped += 1
                reason = "closed" if self.closed else "full"
                warn = self._warn.due("drop-" + reason)
            else:
                self._seq += 1
                self._queues[kind].append(_Item(self._seq, time.monotonic(), json_text))
                if queued == 0 or queued + 1 == self.batch_size:
                    self.wake()
                return True
        if warn:
            if reason == "full":
                log.warning(
                    "pulse capture buffer is full (%d records waiting); dropping new records "
                    "(%d dropped so far). Is the capture service reachable?",
                    self.max_buffer,
                    self.dropped,
                )
            else:
                log.warning("pulse capture client is closed; dropping new records")
        return False

    def stats(self) -> ClientStats:
        with self.lock:
            return ClientStats(
                queued=len(self._queues[_INTERACTION]) + len(self._queues[_FEEDBACK]),
                sent=self.sent,
                duplicates=self.duplicates,
                quarantined=self.quarantined,
                rejected=self.rejected,
                dropped=self.dropped,
                retries=self.retries,
                last_error=self.last_error,
            )

    # -- flush / close (called with the lock held) --------------------------------------------------

    def request_flush(self) -> int:
        """Mark everything logged so far as due now; returns the sequence number to wait for."""
        target = self._seq
        if not self.settled_through(target) and target > self._flush_through:
            self._flush_through = target
            self.wake()
        return target

    def settled_through(self, target: int) -> bool:
        """True when no record with seq <= target is still buffered."""
        return all(not q or q[0].seq > target for q in self._queues.values())

    def pending(self) -> int:
        return len(self._queues[_INTERACTION]) + len(self._queues[_FEEDBACK])

    def start_closing(self) -> None:
        self.closing = True
        self.closed = True
        self.wake()

    # -- the sender's side ------------------------------------------------------------------------

    def take(self, now: float) -> tuple[_Batch | None, float | None]:
        """The next batch to send, or (None, seconds to wait; None: until woken). Lock held.

        The oldest waiting record decides the endpoint, so interactions go before feedback logged
        after them. An interaction batch takes up to ``batch_size`` interactions; a feedback batch
        only feedback older than every unsent interaction. A batch is due when ``batch_size`` records
        wait in all, when the oldest has waited ``flush_interval``, or on flush and close.
        """
        interactions, feedback = self._queues[_INTERACTION], self._queues[_FEEDBACK]
        if not interactions and not feedback:
            return None, None
        if interactions and (not feedback or interactions[0].seq < feedback[0].seq):
            kind, head = _INTERACTION, interactions[0]
        else:
            kind, head = _FEEDBACK, feedback[0]
        due = (
            self.closing
            or head.seq <= self._flush_through
            or len(interactions) + len(feedback) >= self.batch_size
            or now - head.enqueued >= self.flush_interval
        )
        if not due:
            return None, head.enqueued + self.flush_interval - now
        most = min(self.batch_size, self._take_limit)
        if kind == _INTERACTION:
            items = [interactions[i] for i in range(min(most, len(interactions)))]
        else:
            limit = interactions[0].seq if interactions else math.inf
            items = []
            for item in feedback:
                if item.seq > limit or len(items) == most:
                    break
                items.append(item)
        return _Batch(kind, items), None

    def _settle(self, batch: _Batch) -> None:
        queue = self._queues[batch.kind]
        for item in batch.items:
            if queue and queue[0] is item:
                queue.popleft()
        self._failures = 0
        self.settled.notify_all()

    def on_response(self, batch: _Batch, status: int, retry_after: str | None, text: str) -> float:
        """Account for an HTTP answer; returns the backoff before retrying (0: go on at once; a
        413 of several records leaves them at the head, to go again in smaller batches)."""
        n = len(batch)
        if 200 <= status < 300:
            accepted = duplicates = None
            quarantined: set[int] = set()
            reasons: list[str] = []
            try:
                answer = json.loads(text) if text else {}
                if isinstance(answer, dict):
                    for entry in answer.get("quarantined") or []:
                        index = entry.get("index") if isinstance(entry, dict) else None
                        if isinstance(index, int) and 0 <= index < n and index not in quarantined:
                            quarantined.add(index)
                            reasons.append(str(entry.get("reason", "")))
                    if isinstance(answer.get("duplicates"), int):
                        duplicates = answer["duplicates"]
                    if isinstance(answer.get("accepted"), int):
                        accepted = answer["accepted"]
            except ValueError:
                pass
            with self.lock:
                self._take_limit = min(self.batch_size, self._take_limit * 2)
                self.sent += n - len(quarantined)
                self.quarantined += len(quarantined)
                self.duplicates += max(0, min(duplicates or 0, n - len(quarantined)))
                self._settle(batch)
                warn = bool(quarantined) and self._warn.due("quarantined")
            if warn:
                log.warning(
                    "pulse capture service quarantined %d of %d %s records (e.g. %s); accepted %s",
                    len(quarantined),
                    n,
                    batch.kind,
                    reasons[0] if reasons else "?",
                    accepted,
                )
            return 0.0
        error = f"HTTP {status} from {batch.path}: {text[:500]}"
        if status == 413 and n > 1:  # too large for the service: send the same records in halves
            with self.lock:
                self._take_limit = max(1, n // 2)
                self.last_error = error
            return 0.0
        if status >= 500 or status in _TRANSIENT_4XX:
            return self._transient(error, _parse_retry_after(retry_after))
        with self.lock:
            self.rejected += n
            self.last_error = error
            self._settle(batch)
        log.warning(
            "pulse capture service refused a batch of %d %s records with HTTP %d (dropped): %s",
            n,
            batch.kind,
            status,
            text[:1000],
        )
        return 0.0

    def on_error(self, batch: _Batch, exc: BaseException) -> float:
        """A connection error, timeout or other failure before an answer: retry."""
        return self._transient(f"{type(exc).__name__} posting to {batch.path}: {exc}", None)

    def _transient(self, error: str, retry_after: float | None) -> float:
        with self.lock:
            self.retries += 1
            self.last_error = error
            exponent = min(self._failures, 60)
            self._failures += 1
            pending = self.pending()
            warn = self._warn.due("transient")
        delay = random.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2.0**exponent))
        if retry_after is not None:
            delay = max(delay, retry_after)
        if warn:
            log.warning(
                "pulse capture service unavailable (%s); retrying, %d records buffered", error, pending
            )
        return delay


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.UTC)
        seconds = (when - _dt.datetime.now(_dt.UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _drain_blocking(
    core: _Core, make_http: Callable[[], httpx.Client], timeout: float, per_call: float
) -> bool:
    """Send what is buffered from the calling thread, for at most ``timeout`` seconds (exit hooks)."""
    deadline = time.monotonic() + timeout
    with core.lock:
        core.start_closing()  # everything is due now, nothing new is accepted
    with make_http() as http:
        while True:
            with core.lock:
                batch, _ = core.take(time.monotonic())
            if batch is None:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            delay = _post_sync(core, http, batch, timeout=min(per_call, remaining))
            if delay:
                if time.monotonic() + delay >= deadline:
                    return False
                time.sleep(delay)


def _post_sync(core: _Core, http: httpx.Client, batch: _Batch, timeout: float | None = None) -> float:
    try:
        if timeout is None:
            response = http.post(batch.path, content=batch.body)
        else:
            response = http.post(batch.path, content=batch.body, timeout=timeout)
    except Exception as exc:  # transport errors, and anything unexpected: keep the batch, retry
        return core.on_error(batch, exc)
    return core.on_response(batch, response.status_code, response.headers.get("retry-after"), response.text)


async def _post_async(core: _Core, http: httpx.AsyncClient, batch: _Batch) -> float:
    try:
        response = await http.post(batch.path, content=batch.body)
    except Exception as exc:
        return core.on_error(batch, exc)
    return core.on_response(batch, response.status_code, response.headers.get("retry-after"), response.text)


# --------------------------------------------------------------------------------------------------
# The public surface shared by both clients: building records, trace(), instrument()


class Trace:
    """One traced interaction (from :meth:`PulseClient.trace`): set ``output`` & co. inside the block.

    ``id`` is the interaction's id, known before the block runs (for feedback links). On exit the
    interaction is logged with ``latency_ms`` measured around the block; if the block raised, with
    ``metadata["error"] = repr(exc)``, and the exception propagates.
    """

    def __init__(self, client: _ClientBase, input: Any, family: str, id: str | None, **fields: Any) -> None:
        self._client = client
        self.input = input
        self.family = family
        self.id = id or uuid.uuid4().hex
        self.output: Any = fields.get("output")
        self.predicted_label: str | None = fields.get("predicted_label")
        self.confidence: float | None = fields.get("confidence")
        self.model_version: str | None = fields.get("model_version")
        self.provider: str | None = fields.get("provider")
        self.language: str | None = fields.get("language")
        self.request_id: str | None = fields.get("request_id")
        self.metadata: dict[str, Any] = dict(fields.get("metadata") or {})
        self.latency_ms: float | None = None
        self._start = 0.0

    def __enter__(self) -> Trace:
        self._start = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        self.latency_ms = (time.perf_counter() - self._start) * 1000.0
        if exc is not None:
            self.metadata["error"] = repr(exc)
        try:
            self._client.log_interaction(
                self.input,
                self.output,
                predicted_label=self.predicted_label,
                confidence=self.confidence,
                model_version=self.model_version,
                provider=self.provider,
                language=self.language,
                latency_ms=self.latency_ms,
                request_id=self.request_id,
                metadata=self.metadata or None,
                family=self.family,
                id=self.id,
            )
        except Exception:  # never let logging turn a served request into a failed one
            log.exception("pulse capture: could not log a traced interaction")
        return False


class _ClientBase:
    _core: _Core

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        family: str | None = None,
        batch_size: int = 100,
        flush_interval: float = 0.2,
        max_buffer: int = 10_000,
        timeout: float = 5.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
        exit_timeout: float = 5.0,
    ) -> None:
        url = base_url if base_url is not None else os.environ.get(URL_ENV)
        if not url:
            raise ValueError(f"no capture service URL: pass base_url or set {URL_ENV}")
        self.base_url = url.rstrip("/")
        self.family = family
        self.timeout = timeout
        self.exit_timeout = exit_timeout
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._core = _Core(
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_buffer=max_buffer,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        self._init_sender_state()
        _LIVE.add(self)
        atexit.register(self._at_exit)

    def _init_sender_state(self) -> None:
        raise NotImplementedError

    # -- logging ----------------------------------------------------------------------------------

    def _family(self, family: str | None) -> str:
        chosen = family or self.family
        if not chosen:
            raise ValueError("no family: pass family= to the client or to this call")
        return chosen

    def log_interaction(
        self,
        input: Any,
        output: Any = None,
        *,
        predicted_label: str | None = None,
        confidence: float | None = None,
        model_version: str | None = None,
        provider: str | None = None,
        language: str | None = None,
        latency_ms: float | None = None,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        family: str | None = None,
        id: str | None = None,
    ) -> str:
        """Buffer one interaction and return its id at once (never blocks, never raises for I/O)."""
        record: dict[str, Any] = {
            "kind": _INTERACTION,
            "family": self._family(family),
            "id": id or uuid.uuid4().hex,
            "created_at": _now_iso(),
            "input": input,
        }
        _put(
            record,
            output=output,
            model_version=model_version,
            predicted_label=predicted_label,
            confidence=None if confidence is None else float(confidence),
            provider=provider,
            language=language,
            latency_ms=None if latency_ms is None else float(latency_ms),
            request_id=request_id,
            metadata=metadata,
        )
        self._enqueue(_INTERACTION, record)
        return record["id"]

    def log_feedback(
        self,
        interaction_id: str,
        *,
        thumbs: Literal["up", "down"] | None = None,
        rating: int | None = None,
        corrected_response: str | None = None,
        annotator: str | None = None,
        metadata: dict[str, Any] | None = None,
        family: str | None = None,
        id: str | None = None,
    ) -> str:
        """Buffer feedback on an interaction and return the feedback's id at once.

        Raises ValueError (a programming error) without any of thumbs, rating, corrected_response,
        or with a thumbs other than "up"/"down" or a rating outside 1..5.
        """
        if thumbs is None and rating is None and corrected_response is None:
            raise ValueError("feedback needs at least one of thumbs, rating, corrected_response")
        if thumbs is not None and thumbs not in ("up", "down"):
            raise ValueError(f"thumbs must be 'up' or 'down', not {thumbs!r}")
        if rating is not None:
            if isinstance(rating, bool) or int(rating) != rating or not 1 <= rating <= 5:
                raise ValueError(f"rating must be an integer from 1 to 5, not {rating!r}")
            rating = int(rating)
        if not interaction_id:
            raise ValueError("feedback needs the interaction_id it is about")
        record: dict[str, Any] = {
            "kind": _FEEDBACK,
            "family": self._family(family),
            "id": id or uuid.uuid4().hex,
            "created_at": _now_iso(),
            "interaction_id": interaction_id,
        }
        _put(
            record,
            thumbs=thumbs,
            rating=rating,
            corrected_response=corrected_response,
            annotator=annotator,
            metadata=metadata,
        )
        self._enqueue(_FEEDBACK, record)
        return record["id"]

    def _enqueue(self, kind: str, record: dict[str, Any]) -> None:
        try:
            text = _dumps(record)
        except Exception:
            log.exception("pulse capture: could not serialise a %s record; dropped", kind)
            with self._core.lock:
                self._core.dropped += 1
            return
        self._ensure_sender()
        self._core.add(kind, text)

    def _ensure_sender(self) -> None:
        raise NotImplementedError

    def trace(
        self,
        input: Any,
        *,
        output: Any = None,
        predicted_label: str | None = None,
        confidence: float | None = None,
        model_version: str | None = None,
        provider: str | None = None,
        language: str | None = None,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        family: str | None = None,
        id: str | None = None,
    ) -> Trace:
        """A context manager timing one model call and logging it on exit (see :class:`Trace`)."""
        return Trace(
            self,
            input,
            self._family(family),
            id,
            output=output,
            predicted_label=predicted_label,
            confidence=confidence,
            model_version=model_version,
            provider=provider,
            language=language,
            request_id=request_id,
            metadata=metadata,
        )

    def instrument(
        self,
        *,
        model_version: str | None = None,
        provider: str | None = None,
        language: str | None = None,
        metadata: dict[str, Any] | None = None,
        family: str | None = None,
        input_arg: str | None = None,
    ) -> Callable[[F], F]:
        """Decorate a sync or async function to log each call as an interaction.

        The input is the ``input_arg`` parameter when named, else an ``input`` parameter, else the
        first parameter (after ``self``/``cls``); the return value is the output. A call that raises is
        logged with ``metadata["error"]`` and the exception propagates.
        """
        chosen_family = self._family(family)
        fields = {"model_version": model_version, "provider": provider, "language": language}

        def decorate(fn: F) -> F:
            get_input = _input_getter(fn, input_arg)

            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    with self.trace(
                        get_input(args, kwargs), family=chosen_family, metadata=metadata, **fields
                    ) as t:
                        t.output = await fn(*args, **kwargs)
                    return t.output

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.trace(
                    get_input(args, kwargs), family=chosen_family, metadata=metadata, **fields
                ) as t:
                    t.output = fn(*args, **kwargs)
                return t.output

            return wrapper  # type: ignore[return-value]

        return decorate

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters (see :class:`ClientStats`)."""
        return self._core.stats()

    # -- shutdown ---------------------------------------------------------------------------------

    def _at_exit(self) -> None:
        raise NotImplementedError

    def _after_fork_in_child(self) -> None:
        self._core.reset()

    def _report_unsent(self) -> None:
        pending = self._core.stats().queued
        if pending:
            log.warning("pulse capture client closed with %d records not sent", pending)


def _input_getter(fn: Callable[..., Any], input_arg: str | None) -> Callable[[tuple, dict], Any]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in params]
    if input_arg is not None:
        if params and input_arg not in names:
            raise ValueError(f"{fn.__qualname__} has no parameter {input_arg!r}")
        name = input_arg
    elif "input" in names:
        name = "input"
    elif positional:
        name = positional[1 if positional[0].name in ("self", "cls") and len(positional) > 1 else 0].name
    else:
        name = None
    index = next((i for i, p in enumerate(positional) if p.name == name), None)
    if name is None:
        index = 0  # only *args, or no signature: the first positional argument
    default = next((p.default for p in params if p.name == name and p.default is not p.empty), None)

    def get(args: tuple, kwargs: dict) -> Any:
        if name is not None and name in kwargs:
            return kwargs[name]
        if index is not None and index < len(args):
            return args[index]
        return default

    return get


_LIVE: weakref.WeakSet[_ClientBase] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_LIVE):
        client._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------------------------------
# The clients


class PulseClient(_ClientBase):
    """Thread-safe capture client with a background daemon thread sending batches.

    Use it from any number of threads (and from async code too: logging never blocks). ``close()``
    flushes and stops the thread; it also runs at interpreter exit and as a context manager's exit.
    """

    def _init_sender_state(self) -> None:
        self._wakeup = threading.Condition(self._core.lock)
        self._core.wake = self._wakeup.notify_all
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ensure_sender(self) -> None:
        if self._thread is not None:
            return
        with self._core.lock:
            if self._thread is not None or self._core.closed:
                return
            self._thread = threading.Thread(target=self._run, name="pulse-capture-sender", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        core = self._core
        http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self.timeout)
        try:
            while not self._stop.is_set():
                with core.lock:
                    batch, wait = core.take(time.monotonic())
                    if batch is None:
                        if core.closing:
                            return
                        self._wakeup.wait(wait)
                        continue
                delay = _post_sync(core, http, batch)
                if delay and self._stop.wait(delay):
                    return
        except Exception:  # a bug here must not take the process down; records stay counted as queued
            log.exception("pulse capture sender thread failed")
        finally:
            http.close()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything logged so far is settled (True) or ``timeout`` seconds pass (False).

        Settled: stored, quarantined or refused by the server. Records logged meanwhile are not waited for.
        """
        deadline = time.monotonic() + timeout
        core = self._core
        with core.lock:
            target = core.request_flush()
            while not core.settled_through(target):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                core.settled.wait(min(remaining, 0.5))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush (up to ``timeout``), then stop the sender; records logged afterwards are dropped."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(Exception):
            atexit.unregister(self._at_exit)
        self.flush(timeout)
        with self._core.lock:
            self._core.start_closing()
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._stop.set()
                with self._core.lock:
                    self._core.wake()
                thread.join(0.2)
        self._report_unsent()

    def _at_exit(self) -> None:
        self.close(self.exit_timeout)

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._init_sender_state()

    def __enter__(self) -> PulseClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncPulseClient(_ClientBase):
    """The asyncio flavour: the same ``log_*``/``trace``/``instrument`` (plain, non-blocking calls),
    a background task with ``httpx.AsyncClient`` started on the first log call inside a running loop,
    ``await flush()``, ``await aclose()`` and ``async with``.

    ``log_*`` may also be called from other threads; their records go out with the loop's task. What
    is still buffered when the loop ends without ``aclose()`` is sent synchronously at interpreter exit.
    """

    def _init_sender_state(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._settled_event: asyncio.Event | None = None
        self._stopping = False
        self._core.wake = self._wake

    def _wake(self) -> None:  # called with the core's lock held, from any thread
        loop, event = self._loop, self._wakeup
        if loop is None or event is None:
            return
        if threading.get_ident() == self._loop_thread:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the exit hook sends
                loop.call_soon_threadsafe(event.set)

    def _ensure_sender(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not in a loop (another thread): the running task, or the next call in a loop, sends
        task = self._task
        if task is not None and not task.done() and (self._loop is loop or not self._loop.is_closed()):
            return
        with self._core.lock:
            if self._core.closed:
                return
            self._loop, self._loop_thread = loop, threading.get_ident()
            self._wakeup, self._settled_event = asyncio.Event(), asyncio.Event()
            self._stopping = False
            self._task = loop.create_task(self._run(), name="pulse-capture-sender")

    async def _run(self) -> None:
        core, wakeup, settled = self._core, self._wakeup, self._settled_event
        assert wakeup is not None and settled is not None
        http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self.timeout)
        try:
            while not self._stopping:
                with core.lock:
                    batch, wait = core.take(time.monotonic())
                    if batch is None:
                        if core.closing:
                            return
                        wakeup.clear()
                if batch is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), wait)
                    continue
                delay = await _post_async(core, http, batch)
                settled.set()
                if delay:
                    await asyncio.sleep(delay)
        except Exception:
            log.exception("pulse capture sender task failed")
        finally:
            await http.aclose()

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything logged so far is settled (True) or ``timeout`` seconds pass (False)."""
        self._ensure_sender()
        deadline = time.monotonic() + timeout
        core = self._core
        with core.lock:
            target = core.request_flush()
        same_loop = self._loop is asyncio.get_running_loop()
        while True:
            with core.lock:
                if core.settled_through(target):
                    return True
            remaining = deadline - time.monotonic()
            task = self._task
            if remaining <= 0 or task is None or task.done():
                return False
            event = self._settled_event
            if same_loop and event is not None:
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, 0.5))
            else:
                await asyncio.sleep(min(remaining, 0.02))

    async def aclose(self, timeout: float = 10.0) -> None:
        """Flush (up to ``timeout``), then stop the sender task; records logged afterwards are dropped."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(Exception):
            atexit.unregister(self._at_exit)
        await self.flush(timeout)
        with self._core.lock:
            self._core.start_closing()
        task = self._task
        if task is not None and not task.done():
            if self._loop is asyncio.get_running_loop():
                done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
                if not done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            else:
                self._stopping = True
        self._report_unsent()

    def _at_exit(self) -> None:
        """The loop is gone (its task cancelled): send what is left from this thread."""
        core = self._core
        with core.lock:
            if not core.pending():
                return
        try:
            _drain_blocking(
                core,
                lambda: httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self.timeout),
                self.exit_timeout,
                self.timeout,
            )
        except Exception:
            log.exception("pulse capture: sending at exit failed")
        self._report_unsent()

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._init_sender_state()

    async def __aenter__(self) -> AsyncPulseClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
