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
import types
import typing
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from pulse_pipeline.core.families import AnnotationKind, FamilyConfig, PulseConfig, TaskKind

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
    # "oracle": labelled by an LLM whose prompt passed calibration (`pulse label`), not by a person;
    # "generated": written by an LLM from documents (`pulse generate-qa`), waiting for a person's review.
    source: Literal["human", "oracle", "generated"] | None = None


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
    lead_time: float | None = Field(None, ge=0, allow_inf_nan=False)  # seconds a reviewer spent on it
    note: str | None = None  # a reviewer's free-text note (Label Studio's text area)


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
    context: Text | None = None  # the passage a generated pair was written from, shown to its reviewer


class Feedback(_Record):
    kind: Literal["feedback"]
    query: Text
    response: Text
    rating: int | None = Field(None, ge=1, le=5)
    thumbs: Literal["up", "down"] | None = None
    corrected_response: Text | None = None
    sources: list[SourceId] | None = None
    interaction_id: Name | None = None  # the logged interaction this judges (capture service)
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _verdict(self) -> Feedback:
        if self.rating is None and self.thumbs is None and self.corrected_response is None:
            raise ValueError(
                "rating is missing: a verdict is needed (rating 1..5, thumbs up/down or corrected_response)"
            )
        return self


def feedback_rating(payload: dict[str, Any]) -> int:
    """A feedback record's verdict on the 1..5 scale: its rating, else thumbs up 5 and down 1; a
    correction alone says the answer was wrong (1)."""
    rating = payload.get("rating")
    if rating is not None:
        return int(rating)
    return 5 if payload.get("thumbs") == "up" else 1


JSON = str | int | float | bool | list[Any] | dict[str, Any]


class Interaction(_Record):
    """One model call in production, logged by the capture service (or ingested from a log)."""

    kind: Literal["interaction"]
    input: Text | list[Any] | dict[str, Any]  # the prompt text, chat messages, or any JSON the model took
    output: JSON | None = None
    predicted_label: Name | None = None
    confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    provider: Name | None = None
    language: Annotated[str, StringConstraints(min_length=2, max_length=16)] | None = None
    latency_ms: float | None = Field(None, ge=0, allow_inf_nan=False)
    request_id: Name | None = None
    conversation_id: Name | None = None
    metadata: dict[str, Any] | None = None


MODELS: dict[AnnotationKind, type[_Record]] = {
    AnnotationKind.call_correction: CallCorrection,
    AnnotationKind.segment_review: SegmentReview,
    AnnotationKind.intent_label: IntentLabel,
    AnnotationKind.score_label: ScoreLabel,
    AnnotationKind.qa_pair: QaPair,
    AnnotationKind.feedback: Feedback,
    AnnotationKind.interaction: Interaction,
}


_MODEL_BY_NAME: dict[str, type[_Record]] = {kind.value: model for kind, model in MODELS.items()}


@dataclass(frozen=True, slots=True)
class Annotation:
    """An accepted record, ready for the store."""

    id: str
    family: str
    kind: str
    payload: dict[str, Any]  # the record as received, every field
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

    def reject(message: str) -> RecordError:
        # Keep what is readable, so the quarantined line lands in its family's day.
        return RecordError(
            message, family=family.name if family else None, created_at=_readable_time(obj.get("created_at"))
        )

    model = _MODEL_BY_NAME.get(kind) if isinstance(kind, str) else None
    if model is None:
        if kind is None:
            raise reject("kind is missing")
        raise reject(f"kind {kind!r} is not an annotation kind (known: {', '.join(MODELS)})")
    if family is None:
        if family_name is None:
            raise reject(f"{kind}.family is missing")
        raise reject(
            f"{kind}.family {family_name!r} is not declared in pulse.yaml (declared: {', '.join(config.families)})"
        )
    if not family.accepts(kind):
        raise reject(
            f"{kind} records do not belong to family '{family.name}' (it takes {', '.join(family.annotation_kinds)})"
        )
    if may_hold_nul:
        nul_at = _find_nul(obj)
        if nul_at is not None:
            raise reject(f"{kind}.{nul_at} contains a NUL character (\\u0000)")
    try:
        record = model.model_validate(obj)
    except ValidationError as exc:
        raise reject(_describe(exc, kind, model)) from None
    problem = _check_against_family(record, family)
    if problem:
        raise reject(f"{kind}.{problem}")
    # The hash covers `family`, so an id derived from it is unique across families too. An
    # interaction is an event, not a judgment: two identical calls with their own ids are two.
    digest = (
        content_hash(obj)
        if kind != "interaction" or record.id is None
        else content_hash({**obj, "": record.id})
    )
    return Annotation(
        id=record.id or digest[:32],
        family=family.name,
        kind=kind,
        payload=obj,
        content_hash=digest,
        created_at=_as_utc(record.created_at) if record.created_at else None,
        annotator=record.annotator,
        model_version=record.model_version,
    )


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
    if isinstance(record, Interaction) and family.task is TaskKind.classification:
        if not isinstance(record.input, str):
            return f"input must be the text classified, for classification family '{family.name}'"
        if record.predicted_label is not None and record.predicted_label not in family.label_set:
            return f"predicted_label {record.predicted_label!r} is not a label of family '{family.name}'"
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


def _find_nul(obj: Any, path: str = "") -> str | None:
    """Where a NUL character sits (PostgreSQL text cannot hold one), as a field path, or None."""
    if isinstance(obj, str):
        return (path or "record") if "\x00" in obj else None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if "\x00" in key:
                return f"{path or 'record'} field name"
            found = _find_nul(value, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found = _find_nul(value, f"{path}[{i}]")
            if found:
                return found
    return None


def csv_records(
    handle: IO[str], *, family: str | None = None, kind: str | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV table of records -> (line number, record object), for `parse_record`.

    The header names record fields (`text,label` for intent labels); `family` and `kind` fill
    those columns where the file has none. Empty cells are absent fields; a cell of a number,
    true/false, list or object field is read as one (`scores` as JSON: {"tone": 4}); a cell that
    does not read as its type stays text, so the record's check names the field."""
    import csv

    reader = csv.DictReader(handle)
    for row in reader:
        obj: dict[str, Any] = {"family": family, "kind": kind} if family or kind else {}
        obj = {k: v for k, v in obj.items() if v is not None}
        model = _MODEL_BY_NAME.get(row.get("kind") or kind or "")
        for name, cell in row.items():
            if name is None:  # more cells than the header has names
                obj["cells past the header"] = cell
            elif cell not in (None, ""):
                obj[name.strip()] = _read_cell(model, name.strip(), cell)
        yield reader.line_num, obj


def _read_cell(model: type[BaseModel] | None, name: str, cell: str) -> Any:
    info = model.model_fields.get(name) if model is not None else None
    kinds = _base_types(info.annotation) if info is not None else {str}
    try:
        if kinds & {dict, list}:
            return orjson.loads(cell)
        if bool in kinds and cell.strip().lower() in ("true", "false"):
            return cell.strip().lower() == "true"
        if int in kinds:
            return int(cell)
        if float in kinds:
            return float(cell)
    except ValueError:
        pass
    return cell


def _base_types(annotation: Any) -> set[Any]:
    """The plain types a field's annotation allows: Annotated[float, ...] | None -> {float, NoneType}."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _base_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_base_types(a) for a in typing.get_args(annotation)))
    return {origin or annotation}


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
            self.by_rating[str(feedback_rating(payload))] += 1


def summarize(rows: Iterable[Any]) -> Summary:
    """Summarize stored rows (with kind, payload, annotator, id, content_hash attributes)."""
    summary = Summary()
    digest = hashlib.sha256()
    for row in rows:
        summary.add(row.kind, row.payload, row.annotator)
        digest.update(f"{row.id}:{row.content_hash}\n".encode())
    summary.digest = digest.hexdigest()
    return summary
