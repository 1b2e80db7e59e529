"""The review queue, and Label Studio as the review UI.

The queue holds the captures that triage sent to a person and that no later human judgment
of the same text has settled, priority first. `to_label_studio` writes them as Label Studio
tasks (the text, and the router's suggestion as a prediction); `from_label_studio` turns a
completed Label Studio export back into annotation records for `pulse ingest`'s path.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pulse_pipeline.core.examples import normalize
from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.core.triage import QUEUED, ReviewStatus, triage

FROM_NAME, TO_NAME = "intent", "text"  # names in the labeling config below


@dataclass(frozen=True)
class QueueItem:
    annotation_id: str
    status: ReviewStatus
    text: str
    suggestion: str
    confidence: float | None
    provider: str | None
    created_at: dt.datetime
    payload: dict[str, Any]


@dataclass
class ReviewQueue:
    items: list[QueueItem] = field(default_factory=list)
    by_status: Counter[str] = field(default_factory=Counter)  # every record read, by triage status
    settled: int = 0  # captures a later human judgment already answered


def review_queue(rows: Any, family: FamilyConfig) -> ReviewQueue:
    """Build the queue from stored annotations (oldest first)."""
    waiting: dict[str, QueueItem] = {}
    queue = ReviewQueue()
    for row in rows:
        status = triage(row.kind, row.payload, family.triage)
        queue.by_status[status] += 1
        p = row.payload
        if row.kind != "intent_label":
            continue
        key = normalize(p["text"])
        if status is ReviewStatus.human_reviewed:
            if waiting.pop(key, None) is not None:
                queue.settled += 1
        elif status in QUEUED:
            waiting[key] = QueueItem(
                annotation_id=row.id,
                status=status,
                text=p["text"],
                suggestion=p.get("predicted_label") or p["label"],
                confidence=p.get("confidence"),
                provider=p.get("provider"),
                created_at=row.created_at,
                payload=p,
            )
    rank = {s: i for i, s in enumerate(QUEUED)}
    queue.items = sorted(
        waiting.values(),
        key=lambda q: (rank[q.status], q.confidence if q.confidence is not None else 0.0, q.created_at),
    )
    return queue


def labeling_config(family: FamilyConfig) -> str:
    """A Label Studio labeling config for the family's label set."""
    choices = "\n".join(f'    <Choice value="{label}"/>' for label in family.labels or ())
    return (
        "<View>\n"
        f'  <Text name="{TO_NAME}" value="$text"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="false">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def to_label_studio(queue: ReviewQueue, family: FamilyConfig) -> list[dict[str, Any]]:
    """Label Studio tasks: data carries what the import needs to rebuild the record."""
    tasks = []
    for item in queue.items:
        p = item.payload
        tasks.append(
            {
                "data": {
                    "text": item.text,
                    "pulse_annotation_id": item.annotation_id,
                    "pulse_family": family.name,
                    "pulse_status": str(item.status),
                    **{
                        f"pulse_{k}": p[k]
                        for k in ("conversation_id", "language", "model_version")
                        if p.get(k)
                    },
                },
                "predictions": [
                    {
                        "model_version": p.get("model_version") or "router",
                        "score": item.confidence,
                        "result": [
                            {
                                "from_name": FROM_NAME,
                                "to_name": TO_NAME,
                                "type": "choices",
                                "value": {"choices": [item.suggestion]},
                            }
                        ],
                    }
                ],
            }
        )
    return tasks


class LabelStudioError(ValueError):
    """A Label Studio export that cannot be read; names the task."""


def from_label_studio(tasks: Any, family: FamilyConfig) -> tuple[list[dict[str, Any]], int]:
    """Annotation records from a completed Label Studio export, and how many tasks had no answer."""
    if not isinstance(tasks, list):
        raise LabelStudioError("a Label Studio export is a JSON list of tasks")
    records, unanswered = [], 0
    for n, task in enumerate(tasks, start=1):
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise LabelStudioError(f"task {n}: no data.text")
        answers = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        choice = None
        for answer in sorted(answers, key=lambda a: a.get("updated_at") or a.get("created_at") or ""):
            for result in answer.get("result") or []:
                if result.get("from_name") == FROM_NAME and result.get("value", {}).get("choices"):
                    choice = (answer, result["value"]["choices"][0])
        if choice is None:
            unanswered += 1
            continue
        answer, label = choice
        prediction = next(iter(task.get("predictions") or []), {})
        suggested = next(
            (
                r["value"]["choices"][0]
                for r in prediction.get("result", [])
                if r.get("value", {}).get("choices")
            ),
            None,
        )
        who = answer.get("completed_by")
        if isinstance(who, dict):
            who = who.get("email") or who.get("id")
        record: dict[str, Any] = {
            "kind": "intent_label",
            "family": family.name,
            "text": data["text"],
            "label": label,
            "annotator": f"label-studio:{who}" if who is not None else "label-studio",
        }
        when = answer.get("updated_at") or answer.get("created_at")
        if when:
            record["created_at"] = when
        if suggested:
            record["predicted_label"] = suggested
        if prediction.get("score") is not None:
            record["confidence"] = prediction["score"]
        for key in ("conversation_id", "language", "model_version"):
            if data.get(f"pulse_{key}"):
                record[key] = data[f"pulse_{key}"]
        records.append(record)
    return records, unanswered
