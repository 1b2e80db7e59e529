"""pulse_pipeline.client against a real HTTP capture server (a ThreadingHTTPServer on 127.0.0.1) that
records every request and can be scripted to answer 429/503/500/401, to answer slowly, to quarantine
records, or to be down (stopped, then restarted on the same port)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import logging
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pulse_pipeline.client import AsyncPulseClient, PulseClient

TOKEN = "test-token"
FAMILY = "support-intents"


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # None: the normal 200 answer (records stored)
    delay: float = 0.0


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    records: list[dict[str, Any]]
    at: float
    status: int
    client_port: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real service
    disable_nagle_algorithm = True  # headers and body go in two writes

    def setup(self) -> None:
        super().setup()
        self.server.capture.connections.add(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.server.capture.connections.discard(self.connection)  # type: ignore[attr-defined]
        super().finish()

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        capture: CaptureServer = self.server.capture  # type: ignore[attr-defined]
        records = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["records"]
        with capture.lock:
            reply = capture.script.popleft() if capture.script else Reply()
            capture.requests.append(
                Request(
                    self.path,
                    dict(self.headers),
                    records,
                    time.monotonic(),
                    reply.status,
                    self.client_address[1],
                )
            )
        if reply.delay:
            time.sleep(reply.delay)
        if reply.body is None and reply.status == 200:
            reply.body = capture.store(records)
        body = (reply.body or "").encode()
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # SO_REUSEADDR: restart on the same port

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout) before a slow answer


class CaptureServer:
    """The capture service's HTTP API, idempotent by record id like the real one."""

    def __init__(self) -> None:
        self.port = 0
        self.lock = threading.Lock()
        self.script: deque[Reply] = deque()
        self.requests: list[Request] = []
        self.stored: dict[str, dict[str, Any]] = {}  # id -> record, first write wins
        self.order: list[str] = []  # ids in the order first stored
        self.quarantine: Callable[[dict[str, Any]], str | None] = lambda record: None
        self.connections: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._httpd = _Server(("127.0.0.1", self.port), _Handler)
        self._httpd.capture = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        """Down: refuse new connections and cut the kept-alive ones."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def store(self, records: list[dict[str, Any]]) -> str:
        accepted = duplicates = 0
        quarantined = []
        with self.lock:
            for index, record in enumerate(records):
                reason = self.quarantine(record)
                if reason:
                    quarantined.append({"index": index, "reason": reason})
                elif record["id"] in self.stored:
                    duplicates += 1
                else:
                    self.stored[record["id"]] = record
                    self.order.append(record["id"])
                    accepted += 1
        return json.dumps({"accepted": accepted, "duplicates": duplicates, "quarantined": quarantined})

    def records(self, path: str) -> list[dict[str, Any]]:
        """Every record received on the path, in arrival order (resends included)."""
        with self.lock:
            return [r for req in self.requests if req.path == path for r in req.records]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@pytest.fixture
def server() -> Iterator[CaptureServer]:
    capture = CaptureServer()
    yield capture
    capture.stop()


@pytest.fixture
def make_client(server: CaptureServer) -> Iterator[Callable[..., PulseClient]]:
    clients: list[PulseClient] = []

    def make(**overrides: Any) -> PulseClient:
        options: dict[str, Any] = {
            "token": TOKEN,
            "family": FAMILY,
            "flush_interval": 0.05,
            "backoff_base": 0.01,
            "backoff_cap": 0.05,
            "timeout": 2.0,
        }
        options.update(overrides)
        client = PulseClient(server.url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=0.5)


def test_records_arrive_in_batches_with_the_right_shape_and_ids(server, make_client):
    client = make_client(batch_size=10, flush_interval=1.0)
    ids = [
        client.log_interaction(
            input=f"where is my card {i}",
            output="card_arrival",
            predicted_label="card_arrival",
            confidence=0.93,
            model_version="v7",
            latency_ms=12.5,
            metadata={"i": i},
        )
        for i in range(25)
    ]
    fid = client.log_feedback(
        ids[3], thumbs="down", corrected_response="card_delivery_estimate", annotator="user-42"
    )
    fid2 = client.log_feedback(ids[4], rating=4)
    assert client.flush(timeout=10)

    interactions = [r for r in server.requests if r.path == "/v1/interactions"]
    feedback = [r for r in server.requests if r.path == "/v1/feedback"]
    assert [len(r.records) for r in interactions] == [10, 10, 5]
    assert [len(r.records) for r in feedback] == [2]
    assert server.requests.index(feedback[0]) > server.requests.index(interactions[-1])
    for request in server.requests:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Content-Type"] == "application/json"
    assert len({r.client_port for r in server.requests}) < len(server.requests)  # keep-alive

    received = server.records("/v1/interactions")
    assert [r["id"] for r in received] == ids
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    first = received[0]
    assert set(first) == {
        "kind",
        "family",
        "id",
        "created_at",
        "input",
        "output",
        "model_version",
        "predicted_label",
        "confidence",
        "latency_ms",
        "metadata",
    }
    assert first["kind"] == "interaction" and first["family"] == FAMILY
    assert first["input"] == "where is my card 0" and first["output"] == "card_arrival"
    assert first["confidence"] == 0.93 and first["latency_ms"] == 12.5 and first["metadata"] == {"i": 0}
    created = dt.datetime.fromisoformat(first["created_at"])
    assert created.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 60

    down, rated = server.records("/v1/feedback")
    assert down == {
        "kind": "feedback",
        "family": FAMILY,
        "id": fid,
        "created_at": down["created_at"],
        "interaction_id": ids[3],
        "thumbs": "down",
        "corrected_response": "card_delivery_estimate",
        "annotator": "user-42",
    }
    assert rated["id"] == fid2 and rated["rating"] == 4 and "thumbs" not in rated

    stats = client.stats
    assert (stats.queued, stats.sent, stats.duplicates, stats.quarantined) == (0, 27, 0, 0)
    assert (stats.rejected, stats.dropped, stats.retries, stats.last_error) == (0, 0, 0, None)


def test_a_full_batch_goes_at_once_and_a_partial_one_after_flush_interval(server, make_client):
    client = make_client(batch_size=5, flush_interval=0.5)
    start = time.monotonic()
    for i in range(5):
        client.log_interaction(f"full {i}")
    wait_for(lambda: len(server.requests) == 1)
    assert server.requests[0].at - start < 0.4  # did not wait for flush_interval

    partial_logged = time.monotonic()
    client.log_interaction("partial 1")
    client.log_interaction("partial 2")
    time.sleep(0.2)
    assert len(server.requests) == 1  # waits to fill a batch...
    wait_for(lambda: len(server.requests) == 2)
    assert server.requests[1].at - partial_logged >= 0.5  # ...for flush_interval at most
    assert [r["input"] for r in server.requests[1].records] == ["partial 1", "partial 2"]


def test_log_calls_never_block_while_the_server_is_down(server, make_client):
    server.stop()
    client = make_client(backoff_cap=0.02)
    client.log_interaction("warm up")
    wait_for(lambda: client.stats.retries >= 2)  # the sender is busy failing
    durations = []
    for i in range(1000):
        started = time.perf_counter()
        client.log_interaction(f"text {i}", "label", confidence=0.5, metadata={"i": i})
        durations.append(time.perf_counter() - started)
    assert max(durations) < 0.05
    assert statistics.median(durations) < 0.001
    stats = client.stats
    assert stats.queued == 1001 and stats.sent == 0 and stats.dropped == 0
    assert "ConnectError" in stats.last_error


def test_server_down_then_up_delivers_everything_once_in_order(server, make_client):
    client = make_client(batch_size=7)
    server.stop()
    ids = [client.log_interaction(f"before {i}") for i in range(30)]
    feedback_ids = [client.log_feedback(ids[i], thumbs="up") for i in range(5)]
    ids += [client.log_interaction(f"after {i}") for i in range(10)]
    wait_for(lambda: client.stats.retries >= 2)
    assert client.flush(timeout=0.3) is False  # flush times out while the server is down

    server.start()
    assert client.flush(timeout=10)
    interactions = server.records("/v1/interactions")
    assert [r["id"] for r in interactions] == ids  # exactly once, in order
    assert [r["id"] for r in server.records("/v1/feedback")] == feedback_ids
    assert all(len(r.records) <= 7 for r in server.requests)
    # feedback went only after the interactions logged before it
    first_feedback = next(i for i, r in enumerate(server.requests) if r.path == "/v1/feedback")
    holds_29 = next(i for i, r in enumerate(server.requests) if ids[29] in {x["id"] for x in r.records})
    assert first_feedback > holds_29
    stats = client.stats
    assert stats.sent == 45 and stats.queued == 0 and stats.retries >= 2
    assert stats.last_error is not None


def test_429_with_retry_after_waits_at_least_that_long(server, make_client):
    server.script.append(Reply(429, {"Retry-After": "1"}, "slow down"))
    client = make_client(backoff_cap=0.05)
    iid = client.log_interaction("hello")
    assert client.flush(timeout=10)
    first, second = server.requests
    assert second.at - first.at >= 1.0
    assert [r["id"] for r in second.records] == [iid]
    stats = client.stats
    assert stats.retries == 1 and stats.sent == 1 and "429" in stats.last_error


def test_503_and_500_are_retried(server, make_client):
    server.script.extend([Reply(503, {"Retry-After": "0"}, "restarting"), Reply(500, body="oops")])
    client = make_client()
    iid = client.log_interaction("hello")
    assert client.flush(timeout=10)
    assert [r.status for r in server.requests] == [503, 500, 200]
    assert list(server.stored) == [iid]
    assert client.stats.retries == 2 and client.stats.sent == 1


def test_a_timeout_is_retried_and_the_server_dedupes_by_id(server, make_client):
    server.script.append(Reply(200, delay=0.8))  # answers after the client gave up
    client = make_client(timeout=0.3)
    ids = [client.log_interaction(f"slow {i}") for i in range(3)]
    assert client.flush(timeout=10)
    assert len(server.requests) >= 2
    assert [r["id"] for r in server.requests[1].records] == ids  # the same batch, re-sent
    wait_for(lambda: len(server.order) == 3)
    time.sleep(0.6)  # the slow first answer has stored its copy by now
    assert sorted(server.order) == sorted(ids)
    assert client.stats.retries >= 1 and "Timeout" in client.stats.last_error
    assert client.stats.sent == 3


def test_401_rejects_the_batch_and_later_batches_still_go(server, make_client, caplog):
    server.script.append(Reply(401, body="bad token"))
    client = make_client()
    with caplog.at_level(logging.WARNING, logger="pulse_pipeline.client"):
        for i in range(5):
            client.log_interaction(f"refused {i}")
        assert client.flush(timeout=10)
    warnings = [r.getMessage() for r in caplog.records if r.name == "pulse_pipeline.client"]
    assert len(warnings) == 1 and "401" in warnings[0] and "bad token" in warnings[0]
    assert client.stats.rejected == 5 and client.stats.sent == 0 and client.stats.retries == 0

    later = [client.log_interaction(f"later {i}") for i in range(3)]
    assert client.flush(timeout=10)
    assert server.order == later
    stats = client.stats
    assert stats.rejected == 5 and stats.sent == 3 and stats.queued == 0


def test_a_413_sends_the_same_records_again_in_smaller_batches(server, make_client):
    server.script.extend([Reply(413, body="too large"), Reply(413, body="too large")])
    client = make_client()
    ids = [client.log_interaction(f"big {i}") for i in range(8)]
    assert client.flush(timeout=10)
    assert server.order == ids  # nothing lost, in order
    assert [len(r.records) for r in server.requests] == [8, 4, 2, 4, 2]  # halved twice, then doubled back
    stats = client.stats
    assert stats.sent == 8 and stats.rejected == 0
    one = client.log_interaction("a single record too large")
    server.script.append(Reply(413, body="too large"))
    assert client.flush(timeout=10)
    assert client.stats.rejected == 1 and one not in server.order  # one record alone: refused for good


def test_quarantined_records_and_duplicates_are_counted(server, make_client):
    server.quarantine = lambda record: "empty input" if record["input"] == "" else None
    client = make_client()
    first = client.log_interaction("ok 1")
    client.log_interaction("")
    client.log_interaction("ok 2")
    client.log_interaction("ok 1 again", id=first)  # a re-sent id: the server already has it
    assert client.flush(timeout=10)
    stats = client.stats
    assert stats.quarantined == 1 and stats.sent == 3 and stats.duplicates == 1
    assert len(server.order) == 2


def test_a_full_buffer_drops_new_records_and_warns_once(server, make_client, caplog):
    server.stop()
    client = make_client(max_buffer=5)
    with caplog.at_level(logging.WARNING, logger="pulse_pipeline.client"):
        ids = [client.log_interaction(f"text {i}") for i in range(8)]
    assert len(set(ids)) == 8
    stats = client.stats
    assert stats.dropped == 3 and stats.queued == 5
    full = [r for r in caplog.records if "full" in r.getMessage()]
    assert len(full) == 1

    server.start()
    assert client.flush(timeout=10)
    assert server.order == ids[:5]
    assert client.stats.sent == 5 and client.stats.dropped == 3


def test_trace_measures_latency_and_logs_the_error_case(server, make_client):
    client = make_client()
    with client.trace(input="where is my card", model_version="v7", metadata={"route": "/predict"}) as t:
        time.sleep(0.02)
        t.output = "card_arrival"
        t.predicted_label = "card_arrival"
        t.confidence = 0.9
        traced_id = t.id
    client.log_feedback(traced_id, thumbs="up")
    with pytest.raises(RuntimeError, match="model down"), client.trace(input="boom") as failed:
        raise RuntimeError("model down")
    assert client.flush(timeout=10)

    ok, error = server.records("/v1/interactions")
    assert ok["id"] == traced_id and ok["input"] == "where is my card"
    assert ok["output"] == "card_arrival" and ok["predicted_label"] == "card_arrival"
    assert ok["confidence"] == 0.9 and ok["model_version"] == "v7"
    assert ok["metadata"] == {"route": "/predict"}
    assert 20 <= ok["latency_ms"] < 5000
    assert error["id"] == failed.id and error["input"] == "boom" and "output" not in error
    assert error["metadata"] == {"error": "RuntimeError('model down')"}
    assert error["latency_ms"] >= 0
    assert server.records("/v1/feedback")[0]["interaction_id"] == traced_id


def test_instrument_decorates_sync_and_async_functions(server, make_client):
    client = make_client()

    @client.instrument(model_version="v7")
    def predict(text: str) -> str:
        return text.upper()

    @client.instrument(model_version="v8", metadata={"mode": "async"})
    async def apredict(text: str) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"label": "async:" + text}

    class Model:
        @client.instrument(model_version="m1")
        def classify(self, text: str, k: int = 1) -> str:
            return f"label-{k}"

    @client.instrument()
    def failing(input: str) -> str:
        raise ValueError("bad input")

    assert predict("hello") == "HELLO"
    assert predict(text="keyword") == "KEYWORD"
    assert predict.__name__ == "predict" and inspect.iscoroutinefunction(apredict)
    assert asyncio.run(apredict("hi")) == {"label": "async:hi"}
    assert Model().classify("doc", k=2) == "label-2"
    with pytest.raises(ValueError, match="bad input"):
        failing(input="z")
    assert client.flush(timeout=10)

    by_input = {r["input"]: r for r in server.records("/v1/interactions")}
    assert by_input["hello"]["output"] == "HELLO" and by_input["hello"]["model_version"] == "v7"
    assert by_input["keyword"]["output"] == "KEYWORD"
    assert by_input["hi"]["output"] == {"label": "async:hi"} and by_input["hi"]["model_version"] == "v8"
    assert by_input["hi"]["metadata"] == {"mode": "async"} and by_input["hi"]["latency_ms"] >= 10
    assert by_input["doc"]["output"] == "label-2"
    assert by_input["z"]["metadata"] == {"error": "ValueError('bad input')"}
    assert all(r["latency_ms"] >= 0 for r in by_input.values())


def test_async_client_sends_and_flushes_under_asyncio_run(server):
    async def main() -> tuple[list[str], str, Any, Any]:
        async with AsyncPulseClient(
            server.url, token=TOKEN, family=FAMILY, flush_interval=0.05, backoff_base=0.01, backoff_cap=0.05
        ) as client:
            iid = client.log_interaction("async hello", "greeting", confidence=0.8)
            fid = client.log_feedback(iid, rating=5, annotator="user-1")
            tid = await asyncio.to_thread(client.log_interaction, "from a worker thread")
            with client.trace(input="traced") as t:
                await asyncio.sleep(0.01)
                t.output = "done"
            assert await client.flush(timeout=10)

            server.stop()
            down = client.log_interaction("while down")
            assert await client.flush(timeout=0.3) is False
            server.start()
            assert await client.flush(timeout=10)
            stats = client.stats
        client.log_interaction("after close")
        return [iid, tid, t.id, down], fid, stats, client.stats

    ids, fid, stats, after = asyncio.run(main())
    assert [r["id"] for r in server.records("/v1/interactions")] == ids
    assert [r["id"] for r in server.records("/v1/feedback")] == [fid]
    assert server.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert stats.sent == 5 and stats.queued == 0 and stats.retries >= 1
    assert after.dropped == 1


def test_many_threads_log_concurrently(server, make_client):
    client = make_client(batch_size=50)
    logged: dict[int, list[str]] = {}

    def worker(n: int) -> None:
        logged[n] = [client.log_interaction(f"thread {n} item {i}") for i in range(200)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(timeout=10)
    received = [r["id"] for r in server.records("/v1/interactions")]
    assert len(received) == len(set(received)) == 1600
    position = {iid: i for i, iid in enumerate(received)}
    for ids in logged.values():  # each thread's records in its own order
        assert [position[i] for i in ids] == sorted(position[i] for i in ids)
    assert all(len(r.records) <= 50 for r in server.requests)
    assert client.stats.sent == 1600


def test_close_flushes_and_later_records_are_dropped(server, make_client):
    client = make_client(flush_interval=30.0)
    ids = [client.log_interaction(f"text {i}") for i in range(3)]
    client.close(timeout=5)
    assert server.order == ids
    client.log_interaction("too late")
    assert client.stats.dropped == 1 and client.stats.sent == 3
    assert client._thread is not None and not client._thread.is_alive()


def test_environment_variables_and_validation(server, monkeypatch):
    monkeypatch.setenv("PULSE_CAPTURE_URL", server.url + "/")
    monkeypatch.setenv("PULSE_CAPTURE_TOKEN", "from-env")
    with PulseClient(flush_interval=0.01) as client:
        with pytest.raises(ValueError, match="family"):
            client.log_interaction("no family")
        iid = client.log_interaction("hi", family="other-family")
        with pytest.raises(ValueError, match="at least one"):
            client.log_feedback(iid)
        with pytest.raises(ValueError, match="thumbs"):
            client.log_feedback(iid, thumbs="sideways")  # type: ignore[arg-type]
        for rating in (0, 6, 2.5, True):
            with pytest.raises(ValueError, match="rating"):
                client.log_feedback(iid, rating=rating)  # type: ignore[arg-type]
        assert client.flush(timeout=10)
    assert server.requests[0].headers["Authorization"] == "Bearer from-env"
    assert server.records("/v1/interactions")[0]["family"] == "other-family"
    assert server.records("/v1/feedback") == []

    monkeypatch.delenv("PULSE_CAPTURE_URL")
    with pytest.raises(ValueError, match="PULSE_CAPTURE_URL"):
        PulseClient(family=FAMILY)


def test_odd_values_never_break_a_batch(server, make_client):
    client = make_client()
    client.log_interaction(
        "x", confidence=float("nan"), metadata={"when": dt.date(2024, 1, 2), "score": float("inf"), "s": {1}}
    )
    assert client.flush(timeout=10)
    (record,) = server.records("/v1/interactions")
    assert "confidence" not in record
    assert record["metadata"] == {"when": "2024-01-02", "score": None, "s": [1]}


def test_records_still_buffered_at_interpreter_exit_are_sent(server):
    """The atexit hook: a sync client never closed, and an async one whose loop ended without aclose()."""
    script = f"""
import asyncio
from pulse_pipeline.client import AsyncPulseClient, PulseClient

client = PulseClient({server.url!r}, family="exit", flush_interval=30.0)
client.log_interaction("sync at exit")

aclient = AsyncPulseClient({server.url!r}, family="exit", flush_interval=30.0)

async def main():
    aclient.log_interaction("async at exit")

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert sorted(r["input"] for r in server.records("/v1/interactions")) == ["async at exit", "sync at exit"]
