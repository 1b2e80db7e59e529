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

FROM_NAME, TO_NAME, NOTE_NAME = "intent", "text", "note"  # names in the labeling config below


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
        status = triage(row.kind, row.payload, family)
        queue.by_status[status] += 1
        p = row.payload
        if row.kind not in ("intent_label", "interaction") or status is ReviewStatus.logged:
            continue
        text = p["text"] if row.kind == "intent_label" else p["input"]
        key = normalize(text)
        if status is ReviewStatus.human_reviewed:
            if waiting.pop(key, None) is not None:
                queue.settled += 1
        elif status in QUEUED:
            waiting[key] = QueueItem(
                annotation_id=row.id,
                status=status,
                text=text,
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
        f'  <TextArea name="{NOTE_NAME}" toName="{TO_NAME}" maxSubmissions="1" editable="true"\n'
        '            placeholder="A note: a label that is missing, why the case is unclear"/>\n'
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


def from_label_studio(
    tasks: Any, family: FamilyConfig, users: dict[int, str] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Annotation records from a completed Label Studio export, and how many tasks had no answer.

    `users`: user id -> e-mail (`/api/users`), for exports that name the reviewer by id."""
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
        # a file export holds the predictions; the API's export only their ids, and each
        # annotation the prediction it started from
        prediction = next((p for p in task.get("predictions") or [] if isinstance(p, dict)), None)
        if prediction is None:
            prediction = answer.get("prediction") if isinstance(answer.get("prediction"), dict) else {}
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
        elif isinstance(who, int) and users and who in users:
            who = users[who]
        record: dict[str, Any] = {
            "kind": "intent_label",
            "family": family.name,
            "text": data["text"],
            "label": label,
            "annotator": f"label-studio:{who}" if who is not None else "label-studio",
        }
        when = answer.get("updated_at") or answer.get("created_at")
        if answer.get("id") is not None and task.get("id") is not None:
            # the same answer read twice (a poll, the webhook, an export file) is one record;
            # an edited answer (a new updated_at) is a new judgment, the latest one wins
            stamp = "".join(c for c in str(when or "") if c.isdigit())
            record["id"] = f"label-studio-{task['id']}-{answer['id']}-{stamp}"[:128]
        if when:
            record["created_at"] = when
        if suggested:
            record["predicted_label"] = suggested
        if prediction.get("score") is not None:
            record["confidence"] = prediction["score"]
        if isinstance(answer.get("lead_time"), int | float) and answer["lead_time"] >= 0:
            record["lead_time"] = float(answer["lead_time"])
        note = next(
            (
                " ".join(r["value"]["text"]).strip()
                for r in answer.get("result") or []
                if r.get("from_name") == NOTE_NAME and r.get("value", {}).get("text")
            ),
            "",
        )
        if note:
            record["note"] = note
        for key in ("conversation_id", "language", "model_version"):
            if data.get(f"pulse_{key}"):
                record[key] = data[f"pulse_{key}"]
        records.append(record)
    return records, unanswered
