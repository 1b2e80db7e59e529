"""The capture service (`pulse serve-capture`): production's way into the annotation store.

FastAPI on uvicorn, over `core.capture` (grants and the group-commit writer):

- `POST /v1/interactions`: `{"records": [...]}` (or a bare list) of `interaction` records, or of
  any other kind of the contract (`kind` defaults to `interaction`).
- `POST /v1/feedback`: `feedback` records (`kind` defaults to `feedback`); one that names only
  its `interaction_id` gets the interaction's input, output and model version.
- Both answer 200 `{"accepted", "duplicates", "quarantined": [{"index", "reason"}]}` once the
  records are committed (a bad record is quarantined, the others stored); 400 for a body that is
  not JSON records, 401 without a known bearer token, 403 for a family the token may not write,
  413 over the size limits, 429 (Retry-After) while too many records wait for the store, 503
  (Retry-After) when the store fails. Ids make re-sending safe: the client retries on 429/5xx.
- `POST /v1/events` `{"family", "reason"}`: an external event asks for a retrain (202; the
  family's `retrain_requests_<family>` sensor starts it), as `pulse request-retrain` does.
- `POST /v1/label-studio`: Label Studio's webhook; a created or updated answer of a task that
  `sync` pushed is stored as the family's human judgment (the `label_studio_<family>` sensor's
  poll stores the same record; either one is a no-op after the other).
- `GET /healthz` (the store answers a query), `GET /metrics` (Prometheus text format).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from pulse_pipeline.core.capture import CaptureWriter, Grant, QueueFull, WriterClosed, find_grant

if TYPE_CHECKING:
    from pulse_pipeline.core.families import PulseConfig
    from pulse_pipeline.core.label_studio import LabelStudio
    from pulse_pipeline.core.store import Store


class CaptureLimits(BaseModel):
    """The service's limits; `pulse serve-capture` options of the same names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Largest request body (413 above).")
    max_records: int = Field(10_000, gt=0, description="Most records in one request (413 above).")
    max_pending: int = Field(
        50_000, gt=0, description="Records that may wait for the store before requests get 429."
    )
    max_group: int = Field(5_000, gt=0, description="Most records stored in one transaction.")
    retry_after_seconds: int = Field(1, ge=1, description="Retry-After of a 429 or 503.")


ENDPOINT_KINDS = {"interactions": "interaction", "feedback": "feedback"}


def create_app(
    store: Store,
    config: PulseConfig,
    grants: list[Grant],
    limits: CaptureLimits | None = None,
    label_studio: LabelStudio | None = None,
) -> FastAPI:
    """The service over an open store; the writer starts and stops with the app (its lifespan).
    `label_studio`: the server whose webhook posts to /v1/label-studio, to name reviewers by
    e-mail as the `label_studio_<family>` sensor does (else by user id)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    limits = limits or CaptureLimits()
    registry = CollectorRegistry()
    requests = Counter(
        "pulse_capture_requests", "Requests answered, by endpoint and status.", ["endpoint", "status"],
        registry=registry,
    )  # fmt: skip
    records = Counter(
        "pulse_capture_records", "Records answered, by outcome.", ["outcome"], registry=registry
    )
    latency = Histogram(
        "pulse_capture_request_seconds", "Time to answer a write request.", ["endpoint"], registry=registry,
        buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )  # fmt: skip
    commits = Histogram(
        "pulse_capture_commit_seconds", "Time to store one group of requests.", registry=registry,
        buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )  # fmt: skip
    pending = Gauge("pulse_capture_pending_records", "Records waiting for the store.", registry=registry)
    state: dict[str, CaptureWriter] = {}
    reviewers: dict[str, Any] = {"users": None, "read_at": 0.0}

    async def users() -> dict[int, str] | None:
        """Label Studio's user id -> e-mail, read at most once a minute."""
        if label_studio is None:
            return None
        if reviewers["users"] is None or time.monotonic() - reviewers["read_at"] > 60:
            try:
                reviewers["users"] = await asyncio.to_thread(label_studio.users)
                reviewers["read_at"] = time.monotonic()
            except Exception:  # the server is down: name the reviewer by id this time
                return reviewers["users"]
        return reviewers["users"]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        writer = CaptureWriter(
            store,
            config,
            max_pending=limits.max_pending,
            max_group=limits.max_group,
            on_commit=lambda seconds, _n: commits.observe(seconds),
        )
        state["writer"] = writer
        pending.set_function(lambda: writer.pending)
        try:
            yield
        finally:
            await asyncio.to_thread(writer.close)

    app = FastAPI(title="pulse capture service", lifespan=lifespan, docs_url=None, redoc_url=None)

    def answer(
        endpoint: str, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        requests.labels(endpoint, str(status)).inc()
        return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")

    def error(endpoint: str, status: int, detail: str, **headers: str) -> Response:
        return answer(
            endpoint, status, {"detail": detail}, {k.replace("_", "-"): v for k, v in headers.items()}
        )

    async def write(request: Request, endpoint: str) -> Response:
        started = time.perf_counter()
        try:
            return await _write(request, endpoint)
        finally:
            latency.labels(endpoint).observe(time.perf_counter() - started)

    def authorized(request: Request) -> Grant | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return find_grant(grants, token.strip()) if scheme.lower() == "bearer" and token.strip() else None

    def unauthorized(endpoint: str) -> Response:
        return error(endpoint, 401, "a known bearer token is needed (Authorization: Bearer ...)",
                     WWW_Authenticate="Bearer")  # fmt: skip

    def forbidden(endpoint: str, grant: Grant, family: str) -> Response:
        return error(endpoint, 403, f"token {grant.name!r} may not write family {family!r} "
                     f"(it may write: {', '.join(sorted(grant.families))})")  # fmt: skip

    async def read_request(request: Request, endpoint: str, limit: int) -> tuple[Grant, Any] | Response:
        """The caller's grant and the decoded body, or the answer refusing them (401, 413, 400)."""
        grant = authorized(request)
        if grant is None:
            return unauthorized(endpoint)
        body = await _read_body(request, limit)
        if body is None:
            return error(endpoint, 413, f"the body is over {limit:,} bytes")
        try:
            return grant, orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return error(endpoint, 400, f"the body is not valid JSON: {exc}")

    async def _write(request: Request, endpoint: str) -> Response:
        got = await read_request(request, endpoint, limits.max_body_bytes)
        if isinstance(got, Response):
            return got
        grant, doc = got
        batch = doc.get("records") if isinstance(doc, dict) else doc
        if not isinstance(batch, list):
            return error(endpoint, 400, 'the body must be {"records": [...]} or a JSON list of records')
        if len(batch) > limits.max_records:
            return error(
                endpoint, 413, f"{len(batch):,} records, over the {limits.max_records:,} of one request"
            )
        kind = ENDPOINT_KINDS[endpoint]
        received = dt.datetime.now(dt.UTC).isoformat()
        for record in batch:
            if isinstance(record, dict):
                record.setdefault("kind", kind)
                # an interaction is an event: its time tells two identical calls apart
                if record["kind"] == "interaction":
                    record.setdefault("created_at", received)
        if endpoint == "feedback" and any(isinstance(r, dict) and r["kind"] != "feedback" for r in batch):
            return error(
                endpoint, 400, "/v1/feedback takes feedback records; send other kinds to /v1/interactions"
            )
        families = {r["family"] for r in batch if isinstance(r, dict) and isinstance(r.get("family"), str)}
        denied = sorted(f for f in families if not grant.allows(f))
        if denied:
            return forbidden(endpoint, grant, denied[0])
        label = f"{grant.name} request {request.headers.get('x-request-id') or uuid.uuid4().hex[:12]}"
        return await _store(endpoint, batch, label)

    async def _store(endpoint: str, batch: list[Any], label: str) -> Response:
        retry = str(limits.retry_after_seconds)
        try:
            future = state["writer"].submit(batch, label=label)
        except QueueFull as exc:
            return error(endpoint, 429, str(exc), Retry_After=retry)
        except WriterClosed as exc:
            return error(endpoint, 503, str(exc), Retry_After=retry)
        try:
            outcome = await asyncio.wrap_future(future)
        except Exception as exc:
            return error(endpoint, 503, f"the annotation store failed: {_first_line(exc)}", Retry_After=retry)
        records.labels("accepted").inc(outcome.accepted)
        records.labels("duplicate").inc(outcome.duplicates)
        records.labels("quarantined").inc(len(outcome.quarantined))
        return answer(endpoint, 200, {
            "accepted": outcome.accepted,
            "duplicates": outcome.duplicates,
            "quarantined": [{"index": r.index, "reason": r.reason} for r in outcome.quarantined],
        })  # fmt: skip

    @app.post("/v1/interactions")
    async def interactions(request: Request) -> Response:
        return await write(request, "interactions")

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        return await write(request, "feedback")

    @app.post("/v1/events")
    async def events(request: Request) -> Response:
        """An external event asks for a family's retrain: `{"family", "reason"}` -> 202."""
        got = await read_request(request, "events", 64 * 1024)
        if isinstance(got, Response):
            return got
        grant, doc = got
        family, reason = (doc.get("family"), doc.get("reason")) if isinstance(doc, dict) else (None, None)
        if not isinstance(family, str) or family not in config.families:
            return error("events", 400, f"family {family!r} is not declared in pulse.yaml")
        if not isinstance(reason, str) or not reason.strip():
            return error("events", 400, "reason is missing: say why the family should be retrained")
        if not grant.allows(family):
            return forbidden("events", grant, family)
        try:
            made = await asyncio.to_thread(store.requests.add, family, reason, by=f"capture:{grant.name}")
        except Exception as exc:
            retry = str(limits.retry_after_seconds)
            return error("events", 503, f"the annotation store failed: {_first_line(exc)}", Retry_After=retry)
        return answer("events", 202, {"request": made.seq, "family": family, "reason": made.reason})

    @app.post("/v1/label-studio")
    async def label_studio_webhook(request: Request) -> Response:
        """Label Studio's webhook (ANNOTATION_CREATED, ANNOTATION_UPDATED, with its payload): the
        answer is stored as the family's human judgment at once, as the next poll would store it."""
        from pulse_pipeline.core.review import LabelStudioError, from_label_studio

        endpoint = "label-studio"
        got = await read_request(request, endpoint, limits.max_body_bytes)
        if isinstance(got, Response):
            return got
        grant, event = got
        if not isinstance(event, dict) or event.get("action") not in (
            "ANNOTATION_CREATED",
            "ANNOTATION_UPDATED",
        ):
            action = event.get("action") if isinstance(event, dict) else None
            return answer(endpoint, 200, {"ignored": f"action {action!r}"})
        task, annotation = event.get("task"), event.get("annotation")
        data = task.get("data") if isinstance(task, dict) else None
        family = config.families.get(str((data or {}).get("pulse_family")))
        if family is None or not isinstance(annotation, dict):
            return error(endpoint, 400, "not a task of a pulse family (data.pulse_family), or no annotation")
        if not grant.allows(family.name):
            return forbidden(endpoint, grant, family.name)
        try:
            made, _ = from_label_studio([{**task, "annotations": [annotation]}], family, await users())
        except LabelStudioError as exc:
            return error(endpoint, 400, str(exc))
        if not made:
            return answer(
                endpoint, 200, {"accepted": 0, "duplicates": 0, "quarantined": [], "ignored": "no choice"}
            )
        return await _store(endpoint, made, f"{grant.name} label-studio task {task.get('id')}")

    @app.get("/healthz")
    async def healthz() -> Response:
        try:
            await asyncio.wait_for(asyncio.to_thread(_ping, store), timeout=5)
        except Exception as exc:
            return error("healthz", 503, f"the annotation store does not answer: {_first_line(exc)}")
        return answer("healthz", 200, {"status": "ok", "pending_records": state["writer"].pending})

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _ping(store: Store) -> None:
    import sqlalchemy as sa

    with store.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
