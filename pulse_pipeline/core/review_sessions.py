"""Closed review (dojo) sessions: recording a closure, and which closures call for a retrain.

A trainer reviews a call's segments in a session; the segment reviews carry its `session_id`.
Closing the session (`pulse sessions close`) records it in the store once, with the family
whose reviews carry the id. A closure calls for a retrain when the session holds at least one
segment review newer than the family's newest snapshot, i.e. judgment no adapter has seen yet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.core.store import ClosedSession, Store

SEGMENT_REVIEW = "segment_review"


class SessionError(ValueError):
    """The session cannot be closed; the message names it and says why."""


def takes_review_sessions(family: FamilyConfig) -> bool:
    return SEGMENT_REVIEW in family.annotation_kinds


def close_session(
    store: Store, config: PulseConfig, session_id: str, *, by: str, now: dt.datetime | None = None
) -> ClosedSession:
    """Record that `session_id` closed. SessionError when no segment review carries the id, when
    the reviews span several families, or when it was closed before (no second record)."""
    from pulse_pipeline.core.store import SessionClosedError

    session_id = session_id.strip()
    if not session_id:
        raise SessionError("a session id must not be empty")
    earlier = store.sessions.get(session_id)
    if earlier is not None:
        raise SessionError(earlier.already_closed())
    reviews = {f: n for f, n in store.sessions.reviews_by_family(session_id).items() if f in config.families}
    if not reviews:
        raise SessionError(f"no segment review carries session_id {session_id!r}: unknown session")
    if len(reviews) > 1:
        spread = ", ".join(f"{f} ({n})" for f, n in sorted(reviews.items()))
        raise SessionError(f"session {session_id!r} has segment reviews in several families: {spread}")
    ((family, count),) = reviews.items()
    try:
        return store.sessions.record_closure(session_id, family, by=by, segment_reviews=count, now=now)
    except SessionClosedError as exc:  # closed by someone else in the meantime
        raise SessionError(str(exc)) from None


@dataclass(frozen=True)
class ClosureCheck:
    """The closures read since a cursor, split by whether they call for a retrain."""

    retrain: list[tuple[ClosedSession, int]]  # (session, segment reviews newer than the watermark)
    nothing_new: list[ClosedSession]
    read_up_to: int  # newest closure seq read: the next cursor

    @property
    def closures(self) -> int:
        return len(self.retrain) + len(self.nothing_new)


def check_closures(store: Store, family: FamilyConfig, watermark: int, after: int = 0) -> ClosureCheck:
    """Sessions of `family` closed after closure seq `after`, with their reviews newer than the
    snapshot `watermark`: one count query per new closure, whatever the table's size."""
    retrain: list[tuple[ClosedSession, int]] = []
    quiet: list[ClosedSession] = []
    newest = after
    for session in store.sessions.closed(family=family.name, after=after):
        newest = session.seq
        fresh = store.sessions.count_reviews(family.name, session.session_id, after=watermark)
        if fresh:
            retrain.append((session, fresh))
        else:
            quiet.append(session)
    return ClosureCheck(retrain, quiet, newest)
