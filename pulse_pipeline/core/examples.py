"""Training examples: one formatter per annotation kind, PII redaction, weights and deduplication.

`build_examples(store, family)` gives a family's examples as an Arrow table (one row per
example, sorted by id) and the build statistics. Chat families go record by record through
`ExampleBuilder` (one formatter per chat kind; volumes are small and the formatting rich);
text families (intent labels, scores) go column-wise through `text_examples`. Either way the
rows have the contract's export shape (`records`): chat `messages`, text/label, or
text/labels with dimension names. The dependency goes one way: this module imports
`text_examples`, never the reverse; both fill a `build_stats.BuildStats`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from pulse_pipeline.core.annotations import feedback_rating
from pulse_pipeline.core.build_stats import BuildStats
from pulse_pipeline.core.families import FamilyConfig, TaskKind
from pulse_pipeline.core.redaction import Redactor
from pulse_pipeline.core.text_examples import build_text_examples, text_fields
from pulse_pipeline.core.triage import TRAINABLE, triage

if TYPE_CHECKING:
    import pyarrow as pa

    from pulse_pipeline.core.store import Store

# Bump when a formatter's output changes; it is part of every dataset_version.
FORMATTER_VERSION = "1"

SEGMENT_HEADINGS = {
    "agent_action": "AGENT ACTIONS",
    "score_impact": "SCORE IMPACT",
    "compliance_flag": "COMPLIANCE FLAGS",
}
AGREEMENT_WEIGHT = 0.5  # a trainer agreeing with the AI teaches less than a correction
_WORDS = re.compile(r"\W+")
_PLACEHOLDER = re.compile(r"{(\w+)}")


@dataclass(slots=True)
class Example:
    """One chat example (text families never become Python objects: see `text_examples`)."""

    id: str  # the annotation's id
    kind: str
    weight: float
    group: str  # records of one group (call, conversation, article, question) stay in one split
    stratum: str  # what the split keeps proportional (label, score tier, segment type ...)
    created_at: dt.datetime
    seq: int
    messages: list[dict[str, str]]


def normalize(text: str) -> str:
    return _WORDS.sub(" ", text.lower()).strip()


def fill(template: str, values: dict[str, str]) -> str:
    """`{name}` placeholders only; other braces (JSON in a prompt) stay as written."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def formatter_version(family: FamilyConfig) -> str:
    """Formatter code version plus the family's prompts and redaction settings."""
    body = orjson.dumps(
        [
            FORMATTER_VERSION,
            family.prompts,
            family.redaction.model_dump(),
            {str(k): v for k, v in family.weights.items()},
            family.dimensions,
        ],
        option=orjson.OPT_SORT_KEYS,
    )
    return f"{FORMATTER_VERSION}-{hashlib.sha256(body).hexdigest()[:12]}"


class ExampleBuilder:
    """Turns stored chat annotations (oldest first) into deduplicated, redacted, weighted examples."""

    def __init__(self, family: FamilyConfig):
        self.family = family
        self.stats = BuildStats()
        red = family.redaction
        self._redactor = Redactor.with_extra(red.extra_patterns) if red.enabled else None
        self._kept: dict[str, tuple[Example, str]] = {}  # dedup key -> (example, exact input)
        self._format = {
            "call_correction": self._call_correction,
            "segment_review": self._segment_review,
            "qa_pair": self._qa_pair,
            "feedback": self._feedback,
        }

    # -- input ---------------------------------------------------------------------------

    def add(self, row: Any) -> None:
        """`row` has seq, id, kind, payload, created_at, ingested_at (a stored annotation)."""
        stats = self.stats
        stats.annotations += 1
        stats.watermark = max(stats.watermark, row.seq)
        if stats.newest_ingested_at is None or row.ingested_at > stats.newest_ingested_at:
            stats.newest_ingested_at = row.ingested_at
        status = triage(row.kind, row.payload, self.family)
        stats.by_status[status] += 1
        if status not in TRAINABLE:
            return
        made = self._format[row.kind](row, row.payload)
        if made is None:
            return
        example, key, exact = made
        kept = self._kept.get(key)
        if kept is not None:
            if exact == kept[1]:
                stats.exact_duplicates += 1
            else:
                stats.normalized_duplicates += 1
            if (kept[0].created_at, kept[0].seq) > (example.created_at, example.seq):
                return  # the stored judgment is the later one
        self._kept[key] = (example, exact)

    def examples(self) -> list[Example]:
        return sorted((e for e, _ in self._kept.values()), key=lambda e: e.id)

    # -- prompts shared with preference data (core/preferences.py) -------------------------

    def prompt(self, kind: str, p: dict[str, Any]) -> tuple[list[dict[str, str]], str] | None:
        """A record's system and user messages (redacted), as its example has them, and its group;
        None for a kind without a chat prompt here (feedback needs a `feedback` or `qa_pair` prompt)."""
        if kind == "feedback":
            template = self.family.prompts.get("feedback") or self.family.prompts.get("qa_pair")
            if template is None:
                return None
            user, group = (
                fill(template, {"query": p["query"], "question": p["query"]}),
                f"question:{normalize(p['query'])}",
            )
        elif kind == "call_correction" and "call_correction" in self.family.prompts:
            values = {"transcript": render_transcript(p["transcript"]), "call_id": p["call_id"]}
            user, group = fill(self.family.prompts["call_correction"], values), f"call:{p['call_id']}"
        else:
            return None
        system = {"role": "system", "content": self.family.prompts["system"]}
        return [system, {"role": "user", "content": self._clean(user)}], group

    def clean(self, text: str) -> str:
        """`text` with PII redacted as the family's examples are (counted in `stats.redactions`)."""
        return self._clean(text)

    # -- helpers --------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        if self._redactor is None:
            return text
        out = self._redactor(text)
        if self._redactor.counts:
            self.stats.redactions.update(self._redactor.counts)
            self._redactor.counts.clear()
        return out

    def _chat(self, row: Any, kind: str, user: str, assistant: str, **extra: Any) -> Example:
        messages = [
            {"role": "system", "content": self.family.prompts["system"]},
            {"role": "user", "content": self._clean(user)},
            {"role": "assistant", "content": self._clean(assistant)},
        ]
        return Example(
            id=row.id, kind=kind, created_at=row.created_at, seq=row.seq, messages=messages,
            weight=extra.pop("weight", self._weight(kind, row.payload)), **extra,
        )  # fmt: skip

    def _weight(self, kind: str, payload: dict[str, Any]) -> float:
        """The kind's weight; an oracle's label (`source: oracle`) times the family's `oracle.weight`."""
        weight = float(self.family.weights.get(kind, 1.0))
        return weight * self.family.oracle.weight if payload.get("source") == "oracle" else weight

    # -- one formatter per kind -----------------------------------------------------------

    def _call_correction(self, row: Any, p: dict[str, Any]) -> tuple[Example, str, str]:
        transcript = render_transcript(p["transcript"])
        user = fill(
            self.family.prompts["call_correction"], {"transcript": transcript, "call_id": p["call_id"]}
        )
        answer = orjson.dumps(p["corrected_output"], option=orjson.OPT_SORT_KEYS).decode()
        ex = self._chat(
            row, "call_correction", user, answer, group=f"call:{p['call_id']}", stratum="call_correction"
        )
        return ex, "chat:" + normalize(transcript), transcript

    def _segment_review(self, row: Any, p: dict[str, Any]) -> tuple[Example, str, str]:
        seg_type = p["segment_type"]
        values = {
            "segment_heading": SEGMENT_HEADINGS[seg_type],
            "segment_text": p["segment_text"],
            "segment_type": seg_type,
            "call_id": p["call_id"],
        }
        user = fill(self.family.prompts["segment_review"], values)
        answer: dict[str, Any] = {"assessment": p["trainer_assessment"]}
        for key in ("timestamp_start", "timestamp_end"):
            if p.get(key) is not None:
                answer[key] = p[key]
        ex = self._chat(
            row, "segment_review", user, orjson.dumps(answer, option=orjson.OPT_SORT_KEYS).decode(),
            weight=AGREEMENT_WEIGHT if segment_agrees(p) else 1.0,
            group=f"call:{p['call_id']}", stratum=seg_type,
        )  # fmt: skip
        # The same wording in another call is another example; a second review of this one is not.
        return ex, f"segment:{p['call_id']}:{seg_type}:{normalize(p['segment_text'])}", p["segment_text"]

    def _qa_pair(self, row: Any, p: dict[str, Any]) -> tuple[Example, str, str]:
        user = fill(self.family.prompts["qa_pair"], {"question": p["question"]})
        question = normalize(p["question"])
        ex = self._chat(
            row,
            "qa_pair",
            user,
            p["answer"],
            group=f"question:{question}",
            stratum=p.get("query_type") or "static",
        )
        return ex, "question:" + question, p["question"]

    def _feedback(self, row: Any, p: dict[str, Any]) -> tuple[Example, str, str] | None:
        if feedback_rating(p) > 2:
            self.stats.feedback_not_used += 1
            return None
        if not p.get("corrected_response"):
            self.stats.negatives += 1
            return None
        template = self.family.prompts.get("feedback") or self.family.prompts["qa_pair"]
        user = fill(template, {"query": p["query"], "question": p["query"]})
        question = normalize(p["query"])
        ex = self._chat(
            row, "feedback", user, p["corrected_response"], group=f"question:{question}", stratum="corrected"
        )
        return ex, "question:" + question, p["query"]


def segment_agrees(p: dict[str, Any]) -> bool:
    """The trainer agreed: no disagreement reason, same assessment, timestamps not moved."""
    if p.get("disagreement_reason"):
        return False
    if p["trainer_assessment"] != p["ai_assessment"]:
        return False
    for new, old in (
        ("timestamp_start", "original_timestamp_start"),
        ("timestamp_end", "original_timestamp_end"),
    ):
        if p.get(old) is not None and p.get(old) != p.get(new):
            return False
    return True


def render_transcript(transcript: str | list[dict[str, Any]]) -> str:
    if isinstance(transcript, str):
        return transcript
    lines = []
    for turn in transcript:
        start = turn.get("start")
        stamp = f"[{int(start) // 60:02d}:{int(start) % 60:02d}] " if start is not None else ""
        lines.append(f"{stamp}{turn['speaker']}: {turn['text']}")
    return "\n".join(lines)


def build_examples(store: Store, family: FamilyConfig) -> tuple[pa.Table, BuildStats]:
    """All of a family's valid annotations in the store -> (examples table sorted by id, stats).

    The watermark is at least the store's newest seq of the family when the build began, counted
    over invalidated rows too: invalidating the newest records must not move it back to a value
    that an earlier retrain's run key already used.
    """
    floor, fixes = store.annotations.latest_seq(family.name), store.fixes.latest_invalidation(family.name)
    if family.task is TaskKind.chat_sft:
        builder = ExampleBuilder(family)
        for row in store.annotations.iter_family(family.name):
            builder.add(row)
        table, stats = examples_table(family, builder.examples()), builder.stats
    else:
        table, stats = build_text_examples(
            store.annotations.read_columns(family.name, text_fields(family)), family
        )
    stats.watermark = max(stats.watermark, floor)
    stats.invalidations = fixes
    return table, stats


def examples_table(family: FamilyConfig, examples: list[Example]) -> Any:
    """Chat examples as the Arrow table the snapshot layer works on."""
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.table(
        {
            "id": pa.array([e.id for e in examples], pa.string()),
            "kind": pa.array([e.kind for e in examples], pa.string()),
            "messages": pa.array([e.messages for e in examples], pa.list_(message)),
            "weight": pa.array([e.weight for e in examples], pa.float64()),
            "group": pa.array([e.group for e in examples], pa.string()),
            "stratum": pa.array([e.stratum for e in examples], pa.string()),
            "created_at": pa.array([e.created_at for e in examples], pa.timestamp("us", tz="UTC")),
        }
    )


def records(family: FamilyConfig, table: Any, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of an examples table in the contract's export shape."""
    out = []
    dims = list(family.dimensions or ())
    for row in table.to_pylist():
        record: dict[str, Any] = {"id": row["id"]}
        if "messages" in row:
            record["messages"] = row["messages"]
        elif "labels" in row:
            record.update(text=row["text"], labels=row["labels"], dimension_names=dims)
        else:
            record.update(text=row["text"], label=row["label"])
        record["weight"] = row["weight"]
        if split is not None:
            record["split"] = split
        out.append(record)
    return out
