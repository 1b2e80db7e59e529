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
from pulse_pipeline.core.triage import QUEUED, ReviewStatus, generates_qa, triage

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


# What a queued record asks about, by kind: a later human judgment of the same (normalized) text
# settles it. A reviewer's verdict on a generated QA pair is a qa_pair (accepted, maybe edited) or
# a thumbs-down feedback on it (rejected).
_QUESTION = {"intent_label": "text", "interaction": "input", "qa_pair": "question", "feedback": "query"}


def review_queue(rows: Any, family: FamilyConfig) -> ReviewQueue:
    """Build the queue from stored annotations (oldest first)."""
    waiting: dict[str, QueueItem] = {}
    queue = ReviewQueue()
    for row in rows:
        status = triage(row.kind, row.payload, family)
        queue.by_status[status] += 1
        p = row.payload
        if row.kind not in _QUESTION or (row.kind == "feedback" and not p.get("annotator")):
            continue  # a user's feedback through the capture service is no reviewer's verdict
        if status is ReviewStatus.logged and row.kind != "feedback":
            continue
        text = p[_QUESTION[row.kind]]
        if not isinstance(text, str):  # an interaction whose input is chat messages or JSON
            continue
        key = normalize(text)
        if status is ReviewStatus.human_reviewed or row.kind == "feedback":
            if waiting.pop(key, None) is not None:
                queue.settled += 1
        elif status in QUEUED:
            waiting[key] = QueueItem(
                annotation_id=row.id,
                status=status,
                text=text,
                suggestion=p["answer"] if row.kind == "qa_pair" else p.get("predicted_label") or p["label"],
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


QA_CONTEXT, QA_QUESTION, QA_ANSWER, QA_VERDICT = "context", "question", "answer", "verdict"
ACCEPT, REJECT = "accept", "reject"


def labeling_config(family: FamilyConfig) -> str:
    """A Label Studio labeling config for the family's label set (a family that generates QA
    pairs: the passage, the question, its answer to edit, accept or reject; a question that is
    wrong is rejected, since the queue knows a pair by its question)."""
    if generates_qa(family):
        return (
            "<View>\n"
            '  <Header value="Passage $pulse_sources"/>\n'
            f'  <Text name="{QA_CONTEXT}" value="$context"/>\n'
            '  <Header value="Question"/>\n'
            f'  <Text name="{QA_QUESTION}" value="$text"/>\n'
            '  <Header value="Answer, from the passage only (keep its &lt;&lt;SRC:...&gt;&gt; citation)"/>\n'
            f'  <TextArea name="{QA_ANSWER}" toName="{QA_CONTEXT}" editable="true" maxSubmissions="1" rows="4"/>\n'
            f'  <Choices name="{QA_VERDICT}" toName="{QA_CONTEXT}" choice="single" showInline="true" required="true">\n'
            f'    <Choice value="{ACCEPT}"/>\n'
            f'    <Choice value="{REJECT}"/>\n'
            "  </Choices>\n"
            "</View>\n"
        )
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
        if "question" in p:
            tasks.append(_qa_task(item, family))
            continue
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


def _qa_task(item: QueueItem, family: FamilyConfig) -> dict[str, Any]:
    """A generated QA pair as a task: the passage, the question, and the answer and verdict as an
    editable pre-annotation."""
    p = item.payload

    def text(name: str, value: str) -> dict[str, Any]:
        return {"from_name": name, "to_name": QA_CONTEXT, "type": "textarea", "value": {"text": [value]}}

    return {
        "data": {
            "text": item.text,
            "context": p.get("context") or "",
            "pulse_annotation_id": item.annotation_id,
            "pulse_family": family.name,
            "pulse_status": str(item.status),
            "pulse_kind": "qa_pair",
            "pulse_question": p["question"],
            "pulse_answer": p["answer"],
            "pulse_sources": " ".join(p.get("sources") or []),
            "pulse_generated_by": p.get("annotator") or "",
        },
        "predictions": [
            {
                "model_version": p.get("annotator") or "generated",
                "result": [
                    text(QA_ANSWER, p["answer"]),
                    {
                        "from_name": QA_VERDICT,
                        "to_name": QA_CONTEXT,
                        "type": "choices",
                        "value": {"choices": [ACCEPT]},
                    },
                ],
            }
        ],
    }


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
        if data.get("pulse_kind") == "qa_pair":
            record = _qa_verdict(data, answers, family, users)
            if record is None:
                unanswered += 1
            else:
                records.append(record)
            continue
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
        record: dict[str, Any] = {
            "kind": "intent_label",
            "family": family.name,
            "text": data["text"],
            "label": label,
            "annotator": _reviewer(answer, users),
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


def _reviewer(answer: dict[str, Any], users: dict[int, str] | None) -> str:
    who = answer.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    elif isinstance(who, int) and users and who in users:
        who = users[who]
    return f"label-studio:{who}" if who is not None else "label-studio"


def _qa_verdict(
    data: dict[str, Any], answers: list[dict[str, Any]], family: FamilyConfig, users: dict[int, str] | None
) -> dict[str, Any] | None:
    """A reviewer's latest verdict on a generated QA pair: accepted, a qa_pair by the reviewer
    (the answer as they left it, its citation kept); rejected, a thumbs-down feedback on it.
    None: no verdict."""
    latest = None
    for answer in sorted(answers, key=lambda a: a.get("updated_at") or a.get("created_at") or ""):
        results = answer.get("result") or []
        verdict = next(
            (
                r["value"]["choices"][0]
                for r in results
                if r.get("from_name") == QA_VERDICT and r.get("value", {}).get("choices")
            ),
            None,
        )
        if verdict in (ACCEPT, REJECT):
            edited = next(
                (
                    " ".join(r["value"]["text"]).strip()
                    for r in results
                    if r.get("from_name") == QA_ANSWER and r.get("value", {}).get("text")
                ),
                "",
            )
            latest = (answer, verdict, edited)
    if latest is None:
        return None
    answer, verdict, edited = latest
    question = data["pulse_question"]
    reply = edited or data["pulse_answer"]
    sources = [s for s in str(data.get("pulse_sources") or "").split() if s]
    for source in sources:  # an edit that dropped the citation gets it back
        if f"<<SRC:{source}>>" not in reply:
            reply = f"{reply} <<SRC:{source}>>"
    record: dict[str, Any] = {"family": family.name, "annotator": _reviewer(answer, users), "source": "human"}
    if verdict == ACCEPT:
        record.update(kind="qa_pair", question=question, answer=reply, citation_expected=bool(sources))
        if data.get("context"):
            record["context"] = data["context"]
    else:
        record.update(
            kind="feedback", query=data["pulse_question"], response=data["pulse_answer"], thumbs="down"
        )
        record["metadata"] = {
            "review": "rejected generated QA pair",
            "generated_by": data.get("pulse_generated_by"),
        }
    if sources:
        record["sources"] = sources
    when = answer.get("updated_at") or answer.get("created_at")
    if when:
        record["created_at"] = when
    if answer.get("id") is not None and data.get("pulse_annotation_id"):
        stamp = "".join(c for c in str(when or "") if c.isdigit())
        record["id"] = f"label-studio-{data['pulse_annotation_id'][-40:]}-{answer['id']}-{stamp}"[:128]
    return record
