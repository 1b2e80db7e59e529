"""`pulse serve-capture`, `pulse capture-token`: the capture service and its tokens; `pulse
request-retrain`: a retrain asked for by a person (the service's POST /v1/events for systems)."""

from __future__ import annotations

from typing import Annotated

import typer

from pulse_pipeline.cli.app import FamilyOpt, JsonFlag, app, command, load_families, user
from pulse_pipeline.cli.output import UserError, emit, reveal, say
from pulse_pipeline.settings import get_settings


@command(app, "serve-capture")
def serve_capture(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8030,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413 above).")] = 4 * 1024 * 1024,
    max_records: Annotated[int, typer.Option(help="Most records in one request (413 above).")] = 10_000,
    max_pending: Annotated[
        int, typer.Option(help="Records that may wait for the store before requests get 429.")
    ] = 50_000,
) -> None:
    """Serve the capture service: production logs interactions and feedback into the annotation store."""
    import uvicorn

    from pulse_pipeline.capture_service import CaptureLimits, create_app
    from pulse_pipeline.core.capture import GrantError
    from pulse_pipeline.core.store import Store

    settings = get_settings()
    try:
        grants = settings.capture_grants()
    except GrantError as exc:
        raise UserError(str(exc)) from None
    if not grants:
        raise UserError(
            "PULSE_CAPTURE_TOKENS is not set, so no client could write: "
            "make a token with `pulse capture-token --name NAME` and set the variable it prints"
        )
    config = load_families()
    unknown = sorted({f for g in grants for f in g.families} - {"*"} - set(config.families))
    if unknown:
        raise UserError(
            f"PULSE_CAPTURE_TOKENS names family {unknown[0]!r}, which pulse.yaml does not declare"
        )
    limits = CaptureLimits(max_body_bytes=max_body_bytes, max_records=max_records, max_pending=max_pending)
    with Store(settings.database_url) as store:
        say(f"capture service on http://{host}:{port} ({len(grants)} token(s); store {store.dialect})")
        app = create_app(store, config, grants, limits, label_studio=settings.label_studio())
        uvicorn.run(app, host=host, port=port, log_level="warning")


@command(app, "capture-token")
def capture_token(
    name: Annotated[str, typer.Option(help="Who will hold the token, e.g. the serving app's name.")],
    family: Annotated[
        list[str] | None, typer.Option("--family", "-f", help="A family it may write (repeat); default all.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a capture-service token; print it once, and the PULSE_CAPTURE_TOKENS entry that grants it."""
    import orjson

    from pulse_pipeline.core.capture import hash_token, new_token

    families = family or ["*"]
    config = load_families()
    for f in families:
        if f != "*" and f not in config.families:
            raise UserError(
                f"--family {f!r} is not declared in pulse.yaml (declared: {', '.join(config.families)})"
            )
    token = new_token()
    grant = {"name": name, "sha256": hash_token(token), "families": families}
    if as_json:
        reveal(orjson.dumps({"token": token, "grant": grant}).decode())
        return
    reveal(f"token (give it to {name}; it is not stored anywhere): {token}")
    say("add this entry to the JSON list in PULSE_CAPTURE_TOKENS:")
    say(orjson.dumps(grant).decode())


@command(app, "request-retrain")
def request_retrain(
    family: FamilyOpt,
    reason: Annotated[str, typer.Option(help="Why, for the run's tags and the audit trail.")],
    as_json: JsonFlag = False,
) -> None:
    """Ask for a retrain of a family (new resources published, a policy changed); the family's
    `retrain_requests_<family>` sensor starts it on its next tick."""
    from pulse_pipeline.core.store import Store

    fam = load_families().family(family)
    name = fam.name
    if not reason.strip():
        raise UserError("--reason is empty: say why the family should be retrained")
    with Store(get_settings().database_url) as store:
        request = store.requests.add(name, reason, by=user())
    if as_json:
        emit(
            {
                "request": request.seq,
                "family": name,
                "reason": request.reason,
                "requested_by": request.requested_by,
            }
        )
        return
    say(
        f"retrain of {name} requested (request {request.seq}); the sensor retrain_requests_{fam.snake} "
        "starts it on its next tick, if it is running"
    )
