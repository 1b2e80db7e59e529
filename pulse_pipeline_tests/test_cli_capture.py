"""`pulse capture-token` and `pulse serve-capture`'s refusals (the service itself: test_capture_service.py)."""

import json

import orjson
from typer.testing import CliRunner

from pulse_pipeline.cli import app
from pulse_pipeline.core.capture import find_grant, hash_token, parse_grants

runner = CliRunner()


def test_a_token_is_printed_once_with_the_entry_that_grants_it():
    result = runner.invoke(
        app, ["capture-token", "--name", "router-app", "--family", "intent-router", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    token, grant = out["token"], out["grant"]
    assert token.startswith("pulse_") and len(token) > 40 and token not in json.dumps(grant)
    assert grant == {"name": "router-app", "sha256": hash_token(token), "families": ["intent-router"]}
    grants = parse_grants(orjson.dumps([grant]).decode())
    assert find_grant(grants, token).name == "router-app" and find_grant(grants, token + "x") is None

    plain = runner.invoke(app, ["capture-token", "--name", "all"])
    assert plain.exit_code == 0 and '"families":["*"]' in plain.stdout
    assert "PULSE_CAPTURE_TOKENS" in plain.stdout


def test_an_unknown_family_is_refused():
    result = runner.invoke(app, ["capture-token", "--name", "x", "--family", "nope"])
    assert result.exit_code == 1 and "--family 'nope' is not declared in pulse.yaml" in result.stderr


def test_the_service_will_not_start_without_tokens_or_with_bad_ones(monkeypatch):
    result = runner.invoke(app, ["serve-capture"])
    assert result.exit_code == 1
    assert (
        "PULSE_CAPTURE_TOKENS is not set" in result.stderr
        and "pulse capture-token --name NAME" in result.stderr
    )

    from pulse_pipeline.settings import get_settings

    monkeypatch.setenv("PULSE_CAPTURE_TOKENS", '[{"name": "a", "sha256": "abc", "families": ["*"]}]')
    get_settings.cache_clear()
    result = runner.invoke(app, ["serve-capture"])
    assert (
        result.exit_code == 1
        and "PULSE_CAPTURE_TOKENS[0].sha256 must be the token's SHA-256" in result.stderr
    )

    monkeypatch.setenv("PULSE_CAPTURE_TOKENS", orjson.dumps([{"name": "a", "sha256": hash_token("t"),
                                                                "families": ["no-such-family"]}]).decode())  # fmt: skip
    get_settings.cache_clear()
    result = runner.invoke(app, ["serve-capture"])
    assert result.exit_code == 1 and "names family 'no-such-family'" in result.stderr
