"""The two sides a drift report compares, in the same representation.

The reference is the train split of the production adapter's snapshot (current.json's
dataset_version), or of the newest snapshot before any promotion. The recent side is the
family's annotations created in the window, made into examples by the same code that builds
snapshots (`examples.ExampleBuilder`, `text_examples.build_text_examples`): only trainable
records, deduplicated and redacted as training sees them. Either way a side holds the model's
input text (chat: the user message), and the target: the label (classification), the scores
(regression), or the example kind and the answer (chat: kind or segment type or query type).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.families import FamilyConfig, TaskKind
from pulse_pipeline.core.store import Store


@dataclass(frozen=True)
class Side:
    ids: list[str]
    texts: list[str]  # the model's input
    categories: list[str] | None  # classification: label; chat: stratum (kind, segment or query type)
    scores: np.ndarray | None  # regression: [n, dimensions]
    answers: list[str] | None  # chat: the assistant's answer

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Side:
        pick = rows.tolist()
        return replace(
            self,
            ids=[self.ids[i] for i in pick],
            texts=[self.texts[i] for i in pick],
            categories=None if self.categories is None else [self.categories[i] for i in pick],
            scores=None if self.scores is None else self.scores[rows],
            answers=None if self.answers is None else [self.answers[i] for i in pick],
        )


@dataclass(frozen=True)
class Reference:
    side: Side
    dataset_version: str
    source: str  # "production" or "newest_snapshot"
    adapter_version: str | None  # the production version whose snapshot this is
    watermark: int  # store seq the snapshot was built up to


def side_from_examples(family: FamilyConfig, table: Any) -> Side:
    """A side from an examples table (snapshot split or freshly built), rows in table order."""
    ids = table["id"].to_pylist()
    if family.task is TaskKind.chat_sft:
        texts, answers = [], []
        for messages in table["messages"].to_pylist():
            texts.append("\n".join(m["content"] for m in messages if m["role"] == "user"))
            answers.append("\n".join(m["content"] for m in messages if m["role"] == "assistant"))
        return Side(ids, texts, table["stratum"].to_pylist(), None, answers)
    texts = table["text"].to_pylist()
    if family.task is TaskKind.classification:
        return Side(ids, texts, table["label"].to_pylist(), None, None)
    dims = len(family.dimensions or ())
    scores = np.array(table["labels"].to_pylist(), dtype=float).reshape(len(ids), dims)
    return Side(ids, texts, None, scores, None)


def reference_version(artifacts: ArtifactStore, family: str) -> tuple[str, str, str | None] | None:
    """(dataset_version, source, production version) of the snapshot a drift report compares
    with: current.json's dataset_version ("production"), else the newest snapshot's
    ("newest_snapshot"); None when the family has no snapshot. Reads only the small pointers
    (a manifest lists every example id), so a sensor tick can afford it."""
    import orjson

    from pulse_pipeline.core.registry import read_current
    from pulse_pipeline.core.snapshots import prefix

    current = read_current(artifacts, family) or {}
    version = current.get("dataset_version")
    if version and artifacts.exists(f"{prefix(family, version)}/manifest.json"):
        return version, "production", current.get("version")
    try:
        pointer = orjson.loads(artifacts.read_bytes(f"datasets/{family}/latest.json"))
    except KeyError:
        return None
    return pointer["dataset_version"], "newest_snapshot", None


def reference_side(artifacts: ArtifactStore, family: FamilyConfig) -> Reference | None:
    """The train split of the snapshot `reference_version` names; None without a snapshot."""
    import orjson

    from pulse_pipeline.core.snapshots import from_parquet, prefix

    found = reference_version(artifacts, family.name)
    if found is None:
        return None
    version, source, adapter = found
    where = prefix(family.name, version)
    manifest = orjson.loads(artifacts.read_bytes(f"{where}/manifest.json"))
    table = from_parquet(artifacts.read_bytes(f"{where}/{manifest['files']['train']}"))
    return Reference(
        side_from_examples(family, table),
        manifest["dataset_version"],
        source,
        adapter,
        int(manifest["watermark"]["seq"]),
    )


def recent_side(store: Store, family: FamilyConfig, start: dt.datetime, end: dt.datetime) -> Side:
    """Examples of the annotations created in [start, end), built as a snapshot builds them."""
    from pulse_pipeline.core.examples import ExampleBuilder, examples_table

    if family.task is TaskKind.chat_sft:
        builder = ExampleBuilder(family)
        for row in store.annotations.iter_created(family.name, start, end):
            builder.add(row)
        return side_from_examples(family, examples_table(family, builder.examples()))
    from pulse_pipeline.core.text_examples import build_text_examples, text_fields

    columns = store.annotations.read_columns(family.name, text_fields(family), created=(start, end))
    table, _ = build_text_examples(columns, family)
    return side_from_examples(family, table)


def sample(side: Side, limit: int, seed: int) -> Side:
    """At most `limit` rows: those whose seeded hash of the id is smallest. A growing side keeps
    most of its sample, so the embedding cache stays useful."""
    if len(side) <= limit:
        return side
    salt = f"{seed}\x1f".encode()
    keys = np.array([hashlib.sha256(salt + i.encode()).digest()[:8] for i in side.ids], dtype="S8")
    return side.take(np.sort(np.argsort(keys, kind="stable")[:limit]))


def in_text_order(side: Side) -> Side:
    """The rows sorted by input text (then id)."""
    return side.take(
        np.array(sorted(range(len(side)), key=lambda i: (side.texts[i], side.ids[i])), dtype=np.int64)
    )
