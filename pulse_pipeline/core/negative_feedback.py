"""Users' negative feedback on the production version: when enough of it arrives, retrain (or alert).

Feedback records (`pulse ingest`, or the capture service's `POST /v1/feedback`, which fills in
the judged interaction's `model_version`) that name the family's production version and were
created within the window are counted; a rating at or below `max_rating`, a thumbs down and a
correction without a rating are negative (`annotations.feedback_rating`). At `threshold` negative
ones the family's `negative_feedback_<family>` sensor acts, then waits a whole window before it
acts again on the same version (a retrain that promotes a new version starts the count afresh).
Settings: `automation.negative_feedback` in pulse.yaml (`families.NegativeFeedbackConfig`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from pulse_pipeline.core.alerts import Alert
from pulse_pipeline.core.annotations import feedback_rating
from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.core.store import Store, annotations


@dataclass(frozen=True)
class FeedbackCount:
    family: str
    version: str
    since: dt.datetime
    negative: int
    total: int  # feedback on the version within the window, negative or not
    threshold: int
    window_hours: float

    @property
    def reached(self) -> bool:
        return self.negative >= self.threshold

    def describe(self) -> str:
        return (
            f"{self.negative} of {self.total} feedback on {self.version} in the last {self.window_hours:g} h "
            f"negative (threshold {self.threshold})"
        )


def count_feedback(store: Store, family: FamilyConfig, version: str, now: dt.datetime) -> FeedbackCount:
    """The family's feedback on `version` created in the window ending at `now`."""
    watch = family.automation.negative_feedback
    since = now - dt.timedelta(hours=watch.window_hours)
    a = annotations.c
    q = sa.select(a.payload).where(
        a.family == family.name,
        a.kind == "feedback",
        a.model_version == version,
        a.created_at >= since,
        a.invalidated_at.is_(None),
    )
    with store.connect() as conn:
        ratings = [feedback_rating(payload) for (payload,) in conn.execute(q)]
    negative = sum(1 for r in ratings if r <= watch.max_rating)
    return FeedbackCount(
        family.name, version, since, negative, len(ratings), watch.threshold, watch.window_hours
    )


def due(count: FeedbackCount, acted: tuple[str, dt.datetime] | None, now: dt.datetime) -> bool:
    """Whether to act: the threshold is reached, and the version was not acted on within the window
    (`acted`: the version and time of the last action)."""
    if not count.reached:
        return False
    if acted is None or acted[0] != count.version:
        return True
    return now - acted[1] >= dt.timedelta(hours=count.window_hours)


def negative_feedback_alert(count: FeedbackCount, retraining: bool) -> Alert:
    action = (
        f"A retrain of {count.family} was requested."
        if retraining
        else f"Alert only (automation.negative_feedback.action). To retrain: `pulse train --family {count.family}`."
    )
    return Alert(
        title=f"{count.family}: users judge {count.version} negatively",
        text=f"{count.describe()}. {action}",
        kind="negative_feedback",
        family=count.family,
        fields={"version": count.version, "negative": count.negative, "feedback": count.total},
    )
