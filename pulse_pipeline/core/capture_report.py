"""One UTC day of a family's captures and judgments, for `<family>/daily_report`.

A capture is the router's own prediction (a capture kind with no annotator); triage approves it,
queues it for review (priority first) or, when a person made the record, counts it as human-judged
(`core/triage.py`). The report counts the day's valid records by that status, with the day's
quarantined lines and invalidated records (a data fix), the auto-approval rate and average
confidence among the day's captures, the review queue as it stands when the report runs, and the
trainable annotations since the newest snapshot against the family's retrain threshold.
`count_day` is the pure part; `capture_report` reads the store.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.core.store import Store
from pulse_pipeline.core.triage import ReviewStatus, has_review_queue, is_capture, triage


@dataclass
class DayCounts:
    annotations: int = 0
    captures: int = 0  # machine predictions among them
    by_status: Counter[ReviewStatus] = field(default_factory=Counter)
    confidences: list[float] = field(default_factory=list)  # of the captures that carry one


def count_day(rows: Iterable[Any], family: FamilyConfig) -> DayCounts:
    """Count one day's stored annotations (rows with `kind` and `payload`) by triage status."""
    counts = DayCounts()
    for row in rows:
        counts.annotations += 1
        counts.by_status[triage(row.kind, row.payload, family)] += 1
        if is_capture(row.kind, row.payload):
            counts.captures += 1
            confidence = row.payload.get("confidence")
            if confidence is not None:
                counts.confidences.append(float(confidence))
    return counts


@dataclass(frozen=True)
class CaptureReport:
    family: str
    day: dt.date
    annotations: int
    captures: int
    auto_approved: int
    awaiting_review: int  # queued at normal priority
    awaiting_priority_review: int  # low confidence or a fallback provider
    human_judged: int
    quarantined: int  # lines of that day that failed validation
    invalidated: int  # records of that day a data fix excluded (not counted above)
    auto_approval_rate: float | None  # auto-approved / captures (None: no captures that day)
    average_confidence: float | None  # of the day's captures (None: none carried a confidence)
    review_queue: int  # waiting for a person now, whatever day they arrived
    review_queue_priority: int
    new_trainable: int  # trainable annotations newer than the newest snapshot
    min_new_annotations: int  # the family's retrain threshold

    @property
    def threshold_reached(self) -> bool:
        return self.new_trainable >= self.min_new_annotations

    def metadata(self) -> dict[str, int | float | bool]:
        """Numbers only, so the UI plots each across days; a rate without captures is left out."""
        out: dict[str, int | float | bool] = {
            "annotations": self.annotations,
            "captures": self.captures,
            "auto_approved": self.auto_approved,
            "awaiting_review": self.awaiting_review,
            "awaiting_priority_review": self.awaiting_priority_review,
            "human_judged": self.human_judged,
            "quarantined": self.quarantined,
            "invalidated": self.invalidated,
            "review_queue": self.review_queue,
            "review_queue_priority": self.review_queue_priority,
            "new_trainable_annotations": self.new_trainable,
            "min_new_annotations": self.min_new_annotations,
            "training_threshold_reached": self.threshold_reached,
        }
        if self.auto_approval_rate is not None:
            out["auto_approval_rate"] = self.auto_approval_rate
        if self.average_confidence is not None:
            out["average_confidence"] = self.average_confidence
        return out

    def summary(self) -> str:
        rate = f"{self.auto_approval_rate:.0%} auto-approved" if self.auto_approval_rate is not None else ""
        captures = f"{self.captures} captures ({rate}), " if self.captures else ""
        reached = "reached" if self.threshold_reached else "not reached"
        return (
            f"{self.family} {self.day}: {self.annotations} annotations, {captures}"
            f"{self.quarantined} quarantined; {self.review_queue} waiting for review; "
            f"{self.new_trainable} of {self.min_new_annotations} new trainable annotations ({reached})"
        )


def build_report(
    family: FamilyConfig,
    day: dt.date,
    counts: DayCounts,
    *,
    quarantined: int,
    invalidated: int,
    review_queue: int,
    review_queue_priority: int,
    new_trainable: int,
) -> CaptureReport:
    s = counts.by_status
    return CaptureReport(
        family=family.name,
        day=day,
        annotations=counts.annotations,
        captures=counts.captures,
        auto_approved=s[ReviewStatus.auto_approved],
        awaiting_review=s[ReviewStatus.needs_review],
        awaiting_priority_review=s[ReviewStatus.priority_review],
        human_judged=s[ReviewStatus.human_reviewed],
        quarantined=quarantined,
        invalidated=invalidated,
        auto_approval_rate=s[ReviewStatus.auto_approved] / counts.captures if counts.captures else None,
        average_confidence=sum(counts.confidences) / len(counts.confidences) if counts.confidences else None,
        review_queue=review_queue,
        review_queue_priority=review_queue_priority,
        new_trainable=new_trainable,
        min_new_annotations=family.min_new_annotations,
    )


def capture_report(store: Store, artifacts: ArtifactStore, family: FamilyConfig, day: dt.date) -> CaptureReport:
    """The report for (family, day) from the store; the queue is rebuilt from the family's records
    (families without a capture kind have none); new annotations as `core/retraining.py` counts them."""
    from pulse_pipeline.core.retraining import new_annotations
    from pulse_pipeline.core.review import review_queue

    counts = count_day(store.annotations.iter_day(family.name, day), family)
    waiting, priority = 0, 0
    if has_review_queue(family):
        queue = review_queue(store.annotations.iter_family(family.name), family)
        waiting = len(queue.items)
        priority = sum(1 for item in queue.items if item.status is ReviewStatus.priority_review)
    new = new_annotations(store, artifacts, family)
    audit = store.annotations.audit_day(family.name, day)
    return build_report(
        family,
        day,
        counts,
        quarantined=audit.stored_quarantined,
        invalidated=audit.invalidated,
        review_queue=waiting,
        review_queue_priority=priority,
        new_trainable=new.count,
    )
