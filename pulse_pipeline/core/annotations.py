"""Annotation records of the contract: one pydantic model per kind, and the check of one JSON line.

`parse_record(obj, config)` turns one decoded JSON object into an `Annotation` or raises
`RecordError` whose message names the kind and the field, e.g.
"segment_review.timestamp_end 12.0 is before timestamp_start 15.5".
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from pulse_pipeline.core.families import AnnotationKind, FamilyConfig, PulseConfig, TaskKind

COMMON_FIELDS = frozenset({"kind", "family", "id", "created_at", "annotator", "model_version"})

Text = Annotated[str, StringConstraints(min_length=1)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
SourceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]+:[A-Za-z0-9_.\-/]+$")]


class RecordError(ValueError):
    """A record the store cannot accept; `family` and `created_at` are set when they were readable."""

    def __init__(self, message: str, *, family: str | None = None, created_at: dt.datetime | None = None):
        super().__init__(message)
        self.family = family
        self.created_at = created_at


class _Record(BaseModel):
    """Fields every kind carries."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: str
    family: Name
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    # ISO 8601 text in JSON; naive times are taken as UTC.
    created_at: dt.datetime | None = Field(None, strict=False)
    annotator: Name | None = None
    model_version: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    speaker: Name
    text: str
    start: float | None = Field(None, ge=0)
    end: float | None = Field(None, ge=0)


class CallAnalysis(BaseModel):
    """A call-analysis output; the named fields are typed, others pass through."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    sentiment: str | None = None
    quality: float | str | None = None
    topics: list[str] | None = None


class CallCorrection(_Record):
    kind: Literal["call_correction"]
    call_id: Name
    transcript: Text | list[Turn] = Field(min_length=1)
    corrected_output: CallAnalysis
    ai_output: CallAnalysis | None = None


SegmentType = Literal["agent_action", "score_impact", "compliance_flag"]
DisagreementReason = Literal[
    "too_harsh",
    "too_lenient",
    "wrong_category",
    "not_quality_affecting",
    "false_positive",
    "incorrect_timestamp",
    "missed_context",
    "other",
]
Assessment = Text | dict[str, Any]
Seconds = Annotated[float, Field(ge=0)]


class SegmentReview(_Record):
    kind: Literal["segment_review"]
    call_id: Name
    segment_key: Name
    segment_type: SegmentType
    segment_text: Text
    ai_assessment: Assessment
    trainer_assessment: Assessment
    session_id: Name | None = None
    disagreement_reason: DisagreementReason | None = None
    timestamp_start: Seconds | None = None
    timestamp_end: Seconds | None = None
    original_timestamp_start: Seconds | None = None
    original_timestamp_end: Seconds | None = None
    segment_ids: list[Name] | None = None

    @model_validator(mode="after")
    def _timestamps(self) -> SegmentReview:
        for start, end in (
            ("timestamp_start", "timestamp_end"),
            ("original_timestamp_start", "original_timestamp_end"),
        ):
            s, e = getattr(self, start), getattr(self, end)
            if s is not None and e is not None and e < s:
                raise ValueError(f"{end} {e} is before {start} {s}")
        if self.disagreement_reason == "incorrect_timestamp" and (
            self.timestamp_start is None or self.timestamp_end is None
        ):
            raise ValueError(
                "disagreement_reason incorrect_timestamp needs timestamp_start and timestamp_end"
            )
        return self


class IntentLabel(_Record):
    kind: Literal["intent_label"]
    text: Text
    label: Name
    predicted_label: Name | None = None
    confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    provider: Name | None = None
    language: Annotated[str, StringConstraints(min_length=2, max_length=16)] | None = None
    conversation_id: Name | None = None


class ScoreLabel(_Record):
    kind: Literal["score_label"]
    text: Text
    scores: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1)
    title: str | None = None
    group_id: Name | None = None


class QaPair(_Record):
    kind: Literal["qa_pair"]
    question: Text
    answer: Text
    sources: list[SourceId] | None = None
    query_type: Literal["static", "dynamic"] | None = None
    citation_expected: bool | None = None


class Feedback(_Record):
    kind: Literal["feedback"]
    query: Text
    response: Text
    rating: int = Field(ge=1, le=5)
    corrected_response: Text | None = None
    sources: list[SourceId] | None = None


MODELS: dict[AnnotationKind, type[_Record]] = {
    AnnotationKind.call_correction: CallCorrection,
    AnnotationKind.segment_review: SegmentReview,
    AnnotationKind.intent_label: IntentLabel,
    AnnotationKind.score_label: ScoreLabel,
    AnnotationKind.qa_pair: QaPair,
    AnnotationKind.feedback: Feedback,
}


@dataclass(frozen=True, slots=True)
class Annotation:
    """An accepted record, ready for the store."""

    id: str
    family: str
    kind: str
    payload: dict[str, Any]
    content_hash: str
    created_at: dt.datetime | None  # None: "now", filled in by the store at ingestion
    annotator: str | None
    model_version: str | None


def content_hash(obj: dict[str, Any]) -> str:
    """SHA-256 of the record without its `id`, keys sorted: equal judgments hash equal."""
    body = {k: v for k, v in obj.items() if k != "id"} if "id" in obj else obj
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def parse_record(obj: Any, config: PulseConfig, *, may_hold_nul: bool = True) -> Annotation:
    """Validate one decoded JSON value against the contract and its family's config.

    `may_hold_nul=False` skips the NUL scan when the caller saw no `\\u0000` in the raw line.
    """
    if not isinstance(obj, dict):
        raise RecordError(f"a record must be a JSON object, got {type(obj).__name__}")
    family_name = obj.get("family")
    kind = obj.get("kind")
    family = config.families.get(family_name) if isinstance(family_name, str) else None
    created_at = _readable_time(obj.get("created_at"))
    known = family.name if family else None
    if kind is None:
        raise RecordError("kind is missing", family=known, created_at=created_at)
    if kind not in MODELS:
        raise RecordError(
            f"kind {kind!r} is not an annotation kind (known: {', '.join(MODELS)})",
            family=known,
            created_at=created_at,
        )
    if family_name is None:
        raise RecordError(f"{kind}.family is missing", created_at=created_at)
    if family is None:
        raise RecordError(
            f"{kind}.family {family_name!r} is not declared in pulse.yaml (declared: {', '.join(config.families)})",
            created_at=created_at,
        )
    if kind not in family.annotation_kinds:
        raise RecordError(
            f"{kind} records do not belong to family '{family.name}' "
            f"(it takes {', '.join(family.annotation_kinds)})",
            family=known,
            created_at=created_at,
        )
    if may_hold_nul:
        _reject_nul(obj, kind, family=known, created_at=created_at)
    model = MODELS[AnnotationKind(kind)]
    try:
        record = model.model_validate(obj)
    except ValidationError as exc:
        raise RecordError(_describe(exc, kind, model), family=known, created_at=created_at) from None
    problem = _check_against_family(record, family)
    if problem:
        raise RecordError(f"{kind}.{problem}", family=known, created_at=created_at)
    digest = content_hash(obj)
    return Annotation(
        id=record.id or _derived_id(family.name, digest),
        family=family.name,
        kind=kind,
        payload={k: v for k, v in obj.items() if k not in COMMON_FIELDS},
        content_hash=digest,
        created_at=_as_utc(record.created_at) if record.created_at else None,
        annotator=record.annotator,
        model_version=record.model_version,
    )


def _derived_id(family: str, digest: str) -> str:
    return hashlib.sha256(f"{family}\x1f{digest}".encode()).hexdigest()[:32]


def _as_utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _readable_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _as_utc(dt.datetime.fromisoformat(value))
    except ValueError:
        return None


def _check_against_family(record: _Record, family: FamilyConfig) -> str | None:
    if isinstance(record, IntentLabel) and family.task is TaskKind.classification:
        for field in ("label", "predicted_label"):
            value = getattr(record, field)
            if value is not None and value not in family.label_set:
                return f"{field} {value!r} is not a label of family '{family.name}'"
    if isinstance(record, ScoreLabel) and family.dimensions:
        expected = set(family.dimensions)
        unknown = sorted(set(record.scores) - expected)
        if unknown:
            hint = difflib.get_close_matches(unknown[0], family.dimensions, n=1)
            return f"scores.{unknown[0]} is not a dimension of family '{family.name}'" + (
                f" (did you mean '{hint[0]}'?)" if hint else ""
            )
        missing = [d for d in family.dimensions if d not in record.scores]
        if missing:
            return f"scores is missing dimension(s) {', '.join(missing)}"
        lo, hi = family.score_range
        for dim, value in record.scores.items():
            if not lo <= value <= hi:
                return f"scores.{dim} {value:g} is outside the family's score_range [{lo:g}, {hi:g}]"
    return None


def _describe(exc: ValidationError, kind: str, model: type[BaseModel]) -> str:
    """All of a record's problems on one line, each naming `kind.field` and the value given."""
    parts: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not _is_union_branch(p)]
        field = ".".join([kind, *map(str, loc)])
        if err["type"] == "missing":
            parts.setdefault(f"{field} is missing", [])
        elif err["type"] == "extra_forbidden" and len(loc) == 1:
            hint = difflib.get_close_matches(str(loc[0]), list(model.model_fields), n=1)
            parts.setdefault(
                f"{field} is not a field of {kind}" + (f" (did you mean '{hint[0]}'?)" if hint else ""), []
            )
        elif not loc:
            parts.setdefault(f"{kind}.{err['msg'].removeprefix('Value error, ')}", [])
        else:
            # A union reports once per member at the same field: gather them into one phrase.
            parts.setdefault(f"{field} {_short(err.get('input'))}:", []).append(err["msg"])
    return "; ".join(
        head
        if not msgs
        else f"{head} {msgs[0]}" + "".join(" or " + m.removeprefix("Input should be ") for m in msgs[1:])
        for head, msgs in parts.items()
    )


_TYPE_TAG = re.compile(r"(constrained-)?(str|int|float|bool|list|dict|set|tuple)(\[.*\])?|function-.*")


def _is_union_branch(part: Any) -> bool:
    """pydantic puts a union member's type tag (e.g. 'constrained-str', 'list[Turn]') into the location."""
    return isinstance(part, str) and _TYPE_TAG.fullmatch(part) is not None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reject_nul(
    obj: Any, kind: str, *, family: str | None, created_at: dt.datetime | None, path: str = ""
) -> None:
    """NUL characters cannot be stored in PostgreSQL text; say which field holds one."""
    if isinstance(obj, str):
        if "\x00" in obj:
            raise RecordError(
                f"{kind}.{path or 'record'} contains a NUL character (\\u0000)",
                family=family,
                created_at=created_at,
            )
    elif isinstance(obj, dict):
        for key, value in obj.items():
            sub = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                raise RecordError(
                    f"{kind}: a field name contains a NUL character (\\u0000)",
                    family=family,
                    created_at=created_at,
                )
            _reject_nul(value, kind, family=family, created_at=created_at, path=sub)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            _reject_nul(value, kind, family=family, created_at=created_at, path=f"{path}[{i}]")


@dataclass
class Summary:
    """Counts over a set of stored annotations, for metadata a person reads."""

    count: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_segment_type: Counter[str] = field(default_factory=Counter)
    by_disagreement: Counter[str] = field(default_factory=Counter)
    by_label: Counter[str] = field(default_factory=Counter)
    by_annotator: Counter[str] = field(default_factory=Counter)
    by_rating: Counter[str] = field(default_factory=Counter)
    low_confidence: int = 0  # intent labels whose router confidence was under 0.70
    digest: str = ""  # hash of the ids and content hashes: changes whenever the set changes

    def add(self, kind: str, payload: dict[str, Any], annotator: str | None) -> None:
        self.count += 1
        self.by_kind[kind] += 1
        if annotator:
            self.by_annotator[annotator] += 1
        if kind == "segment_review":
            self.by_segment_type[payload["segment_type"]] += 1
            self.by_disagreement[payload.get("disagreement_reason") or "agreed"] += 1
        elif kind == "intent_label":
            self.by_label[payload["label"]] += 1
            confidence = payload.get("confidence")
            if confidence is not None and confidence < 0.7:
                self.low_confidence += 1
        elif kind == "qa_pair":
            self.by_label[payload.get("query_type") or "unspecified"] += 1
        elif kind == "feedback":
            self.by_rating[str(payload["rating"])] += 1


def summarize(rows: Iterable[Any]) -> Summary:
    """Summarize stored rows (with kind, payload, annotator, id, content_hash attributes)."""
    summary = Summary()
    digest = hashlib.sha256()
    for row in rows:
        summary.add(row.kind, row.payload, row.annotator)
        digest.update(f"{row.id}:{row.content_hash}\n".encode())
    summary.digest = digest.hexdigest()
    return summary
