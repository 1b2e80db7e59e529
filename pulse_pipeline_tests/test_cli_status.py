"""`pulse status` as text: per family, who trains (idle, a live training with its run, or a dead
training's stale lock) and the production version from current.json; --json carries the same."""

import datetime as dt
import json
import os
import re

from typer.testing import CliRunner

from pulse_pipeline.cli import app
from pulse_pipeline.core.registry.pointer import production, write_current
from pulse_pipeline.core.store import Store
from pulse_pipeline.core.store.locks import LockHolder
from pulse_pipeline.settings import get_settings

runner = CliRunner()
RUN_ID = "5c0ffee0-1111-4222-8333-444455556666"
V1, V2 = "intent-router-20261201-0900", "intent-router-20261202-0900"


def _block(text: str, family: str) -> dict[str, str]:
    """The family's lines of the text output, by their label."""
    lines = text.splitlines()
    start = lines.index(family)
    block = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        label, _, value = line.strip().partition(" ")
        block[label] = value.strip()
    return block


def _status(*args: str) -> str:
    result = runner.invoke(app, ["status", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_fresh_family_is_idle_with_no_production_version():
    block = _block(_status(), "intent-router")
    assert block["training"] == "idle"
    assert block["production"] == "none (nothing promoted yet)"
    assert block["annotations"] == "0 new of 200 required (waiting)"
    assert block["snapshot"] == "none; 0 adapter versions"
    assert set(_block(_status(), "access-qa")) >= {"training", "production", "annotations", "snapshot"}


def test_a_live_training_shows_who_since_when_and_its_run_and_production_its_version():
    settings = get_settings()
    meta = {"trained_at": "2026-12-02T09:00:00+00:00", "samples_used": 10, "dataset_version": "d1"}
    write_current(settings.artifact_store(), "intent-router", production(meta, V2, V1, "2026-12-03T10:00:00+00:00"))
    since = dt.datetime(2026, 12, 4, 8, 30, tzinfo=dt.UTC)
    with Store(settings.database_url) as store:
        holder = LockHolder("cli:alice", RUN_ID, "a-host", os.getpid())
        assert store.locks.insert("intent-router", holder, since)
        assert store.locks.refresh("intent-router", holder, dt.datetime.now(dt.UTC))  # alive: a fresh heartbeat
    block = _block(_status("--family", "intent-router"), "intent-router")
    assert block["training"].startswith("training since 2026-12-04T08:30:00")
    assert "by cli:alice (run 5c0ffee0, pid" in block["training"] and block["training"].endswith(f", run {RUN_ID}")
    assert block["production"] == f"{V2} (promoted 2026-12-03T10:00:00+00:00; previous {V1})"
    out = json.loads(_status("--family", "intent-router", "--json"))
    assert out["is_training"] is True and out["lock_run_id"] == RUN_ID and out["stale_lock"] is None
    assert out["production_version"] == V2 and out["current_version"]["previous_version"] == V1


def test_a_dead_trainings_lock_is_shown_stale_and_the_family_idle():
    settings = get_settings()
    with Store(settings.database_url) as store:
        holder = LockHolder("sensor:new_annotations_intent_router", RUN_ID, "a-host", 4242)
        assert store.locks.insert("intent-router", holder, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    block = _block(_status(), "intent-router")
    assert block["training"].startswith("idle; stale lock of a dead training (sensor:new_annotations_intent_router")
    assert re.search(r"no heartbeat for 36\d\d s", block["training"])  # an hour, and the seconds the CLI took
    assert block["training"].endswith("the next training takes it over")
    out = json.loads(_status("--family", "intent-router", "--json"))
    assert out["is_training"] is False and out["lock_run_id"] is None
    assert out["stale_lock"]["run_id"] == RUN_ID and out["stale_lock"]["reason"].startswith("no heartbeat for")
