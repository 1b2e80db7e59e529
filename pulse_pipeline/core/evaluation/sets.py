"""Evaluation sets: what an adapter is judged on.

Three sources, all turned into the same `EvalExample`s with the prompts the family trains on:
the snapshot's test split (`from_snapshot`), the family's golden file `golden/<family>.jsonl`
and any file given with `--eval-file` (`from_records_file`). Golden and extra files hold
annotation records of the contract, validated like ingested ones; each line may also carry a
`category` (e.g. the ACCESS golden set's resource_specs / software / comparisons /
documentation / dynamic / edge_case), which the report breaks results down by.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from pulse_pipeline.core import snapshots
from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.families import FamilyConfig, PulseConfig, TaskKind

_MARKER = re.compile(r"<<SRC:")


class EvalSetError(ValueError):
    """An evaluation file a user must fix; the message names the file, the line and the field."""


@dataclass(frozen=True)
class EvalExample:
    id: str
    kind: str
    input: Any  # chat: the messages before the answer; encoder families: the text
    reference: Any  # chat: the approved answer; classification: the label; regression: scores
    query_type: str | None = None  # qa: static or dynamic
    citation_expected: bool | None = None
    category: str | None = None

    @property
    def prompt_text(self) -> str:
        """The input as one line of text, for reports."""
        if isinstance(self.input, str):
            return self.input
        return next((m["content"] for m in reversed(self.input) if m["role"] == "user"), "")


@dataclass
class EvalSet:
    name: str  # "test", "golden", or the file's stem
    source: str  # where the examples came from, for the report
    examples: list[EvalExample]
    not_used: dict[str, int] = field(default_factory=dict)  # records that make no example, by reason

    def __len__(self) -> int:
        return len(self.examples)


def from_snapshot(
    family: FamilyConfig, artifacts: ArtifactStore, dataset_version: str, split: str = "test"
) -> EvalSet:
    table = snapshots.from_parquet(
        artifacts.read_bytes(f"{snapshots.prefix(family.name, dataset_version)}/{split}.parquet")
    )
    examples = [_from_snapshot_row(family, row) for row in table.to_pylist()]
    return EvalSet(split, f"snapshot {dataset_version} {split} split", examples)


def _from_snapshot_row(family: FamilyConfig, row: dict[str, Any]) -> EvalExample:
    if family.task is TaskKind.classification:
        return EvalExample(row["id"], row["kind"], row["text"], row["label"])
    if family.task is TaskKind.regression:
        return EvalExample(row["id"], row["kind"], row["text"], list(row["labels"]))
    *prompt, answer = row["messages"]
    query_type = row["stratum"] if row["kind"] == "qa_pair" else None
    return EvalExample(
        row["id"],
        row["kind"],
        prompt,
        answer["content"],
        query_type=query_type,
        # The approved answer cites, and the question asks for facts (not live status).
        citation_expected=bool(_MARKER.search(answer["content"])) and query_type != "dynamic",
    )


def from_records_file(
    family: FamilyConfig, config: PulseConfig, path: Path, name: str | None = None
) -> EvalSet:
    """Annotation records of this family (JSON Lines, or a CSV table of them: `text,label` for a
    classification family; annotations.csv_records) -> examples. Every line must be valid: an
    evaluation set with silently missing lines would judge on the wrong data."""
    from pulse_pipeline.core.annotations import RecordError, parse_record

    parsed: list[tuple[Any, str | None]] = []
    for number, obj in _objects(family, path):
        category = obj.pop("category", None) if isinstance(obj, dict) else None
        try:
            record = parse_record(obj, config)
        except RecordError as exc:
            raise EvalSetError(f"{path}:{number}: {exc}") from None
        if record.family != family.name:
            raise EvalSetError(
                f"{path}:{number}: a {record.family} record in an evaluation file of {family.name}"
            )
        parsed.append((record, category if isinstance(category, str) else None))
    if not parsed:
        raise EvalSetError(f"{path}: no records")
    if family.task is TaskKind.chat_sft:
        examples, not_used = _chat_examples(family, parsed)
    else:
        examples, not_used = [_text_example(family, r, c) for r, c in parsed], {}
    return EvalSet(name or path.stem, str(path), examples, not_used)


def _objects(family: FamilyConfig, path: Path) -> list[tuple[int, Any]]:
    """(line number, decoded record) of each non-blank line or CSV row."""
    from pulse_pipeline.core.annotations import csv_records

    try:
        if path.suffix.lower() == ".csv":
            kinds = family.annotation_kinds
            with path.open(encoding="utf-8-sig", newline="") as f:
                return list(csv_records(f, family=family.name, kind=kinds[0].value if len(kinds) == 1 else None))
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise EvalSetError(f"{path}: cannot be read: {exc}") from None
    out = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                out.append((number, orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                raise EvalSetError(f"{path}:{number}: not valid JSON: {exc}") from None
    return out


def _text_example(family: FamilyConfig, record: Any, category: str | None) -> EvalExample:
    p = record.payload
    if family.task is TaskKind.classification:
        return EvalExample(record.id, record.kind, p["text"], p["label"], category=category)
    scores = [float(p["scores"][d]) for d in family.dimensions or ()]
    return EvalExample(record.id, record.kind, p["text"], scores, category=category)


def _chat_examples(
    family: FamilyConfig, parsed: list[tuple[Any, str | None]]
) -> tuple[list[EvalExample], dict[str, int]]:
    """Through the training formatters, so the prompts are exactly the ones the adapter learned."""
    from pulse_pipeline.core.examples import ExampleBuilder

    builder = ExampleBuilder(family)
    now = dt.datetime.now(dt.UTC)
    for seq, (record, _) in enumerate(parsed, start=1):
        builder.add(
            SimpleNamespace(
                seq=seq, id=record.id, kind=record.kind, payload=record.payload,
                created_at=record.created_at or now, ingested_at=now,
            )
        )  # fmt: skip
    by_id = {r.id: (r, c) for r, c in parsed}
    examples = []
    for ex in sorted(builder.examples(), key=lambda e: e.seq):
        record, category = by_id[ex.id]
        p = record.payload
        *prompt, answer = ex.messages
        expected = p.get("citation_expected")
        if expected is None:
            expected = bool(p.get("sources")) and p.get("query_type") != "dynamic"
        examples.append(
            EvalExample(
                ex.id, ex.kind, prompt, answer["content"],
                query_type=p.get("query_type"), citation_expected=expected, category=category,
            )
        )  # fmt: skip
    stats = builder.stats
    not_used = {
        "duplicates": stats.exact_duplicates + stats.normalized_duplicates,
        "feedback without a corrected response": stats.negatives,
        "feedback rated 3 or more": stats.feedback_not_used,
    }
    return examples, {k: v for k, v in not_used.items() if v}


def load_sources(path: Path | None) -> dict[str, dict[str, Any]]:
    """The family's source registry: id -> {title, url, text?}."""
    if path is None:
        return {}
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise EvalSetError(f"{path}: not a readable JSON source registry: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "title" in v for v in data.values()):
        raise EvalSetError(f"{path}: expected an object mapping source id -> {{title, url}}")
    return data
