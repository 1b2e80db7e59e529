"""Closing review sessions against a real store (SQLite and PostgreSQL): one record per session,
clear refusals, and which closures hold segment reviews newer than a snapshot watermark."""

import datetime as dt

import orjson
import pytest

from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.review_sessions import SessionError, check_closures, close_session


def segment(i: int, session: str | None, **extra) -> bytes:
    record = {
        "kind": "segment_review", "family": "call-analysis", "call_id": f"call-{i}",
        "segment_key": f"call-{i}:greeting", "segment_type": "agent_action",
        "segment_text": f"Agent: hello, this is desk {i}", "ai_assessment": "present",
        "trainer_assessment": "present", "annotator": "trainer", "created_at": "2026-06-30T09:00:00Z",
        **({"session_id": session} if session else {}), **extra,
    }  # fmt: skip
    return orjson.dumps(record)


def test_closing_records_the_session_once_with_its_family_and_count(store, config):
    ingest_lines(store, [segment(i, "dojo-7") for i in range(3)] + [segment(9, None)], config, source="t")
    at = dt.datetime(2026, 7, 1, 8, tzinfo=dt.UTC)
    closed = close_session(store, config, "dojo-7", by="lead", now=at)
    assert (closed.family, closed.segment_reviews, closed.closed_by, closed.closed_at) == (
        "call-analysis", 3, "lead", at
    )  # fmt: skip
    with pytest.raises(
        SessionError, match=r"session 'dojo-7' was already closed at 2026-07-01T08:00:00\+00:00 by lead"
    ):
        close_session(store, config, "dojo-7", by="someone else")
    assert store.sessions.closed() == [closed]  # no second row
    with pytest.raises(
        SessionError, match="no segment review carries session_id 'dojo-404': unknown session"
    ):
        close_session(store, config, "dojo-404", by="lead")
    assert store.sessions.get("dojo-404") is None


def test_closures_call_for_a_retrain_only_with_reviews_newer_than_the_watermark(store, config):
    family = config.family("call-analysis")
    ingest_lines(store, [segment(i, "old") for i in range(2)], config, source="t")
    watermark = store.annotations.latest_seq("call-analysis")  # a snapshot holds the "old" session's reviews
    ingest_lines(store, [segment(i, "new") for i in range(2, 5)], config, source="t")
    old = close_session(store, config, "old", by="a")
    new = close_session(store, config, "new", by="a")
    seen = check_closures(store, family, watermark)
    assert seen.retrain == [(new, 3)] and seen.nothing_new == [old] and seen.read_up_to == new.seq
    later = check_closures(store, family, watermark, after=seen.read_up_to)
    assert later.closures == 0 and later.read_up_to == new.seq
    assert check_closures(store, config.family("access-qa"), 0).closures == 0  # another family's
