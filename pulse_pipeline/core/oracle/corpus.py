"""The items an oracle labels: a JSON Lines corpus, one object per line.

Each line has `text` (a QA family: `question`), and optionally `id` (default: derived from the
text, so the same text is the same item), `title`, `group_id`, and a person's label where the
corpus has one (`label`, `scores` or `answer`), which calibration compares the oracle with. A line
that cannot be read is an error naming the file, the line and the field: a corpus is read whole
before anything is sent, so no money is spent on a file that then fails.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HUMAN_FIELDS = ("label", "scores", "answer")


class CorpusError(ValueError):
    """The corpus cannot be read; one line naming the file, the line and the field."""


@dataclass(frozen=True)
class CorpusItem:
    id: str
    text: str  # a QA family: the question
    title: str | None = None
    group_id: str | None = None
    human: dict[str, Any] | None = None  # {"label": ...} | {"scores": {...}} | {"answer": ...}


def item_id(text: str) -> str:
    return "c-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def read_corpus(path: str | Path) -> list[CorpusItem]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot read it: {exc}") from None
    items: list[CorpusItem] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{where}: not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{where}: not a JSON object")
        item = _item(obj, where)
        if item.id in seen:
            raise CorpusError(f"{where}: field 'id' {item.id!r} repeats line {seen[item.id]}")
        seen[item.id] = number
        items.append(item)
    if not items:
        raise CorpusError(f"{path}: holds no item")
    return items


def _item(obj: dict[str, Any], where: str) -> CorpusItem:
    text = obj.get("text", obj.get("question"))
    if not isinstance(text, str) or not text.strip():
        raise CorpusError(f"{where}: field 'text' (or 'question') is missing or empty")
    for name in ("id", "title", "group_id"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise CorpusError(f"{where}: field '{name}' must be a string")
    human = {k: obj[k] for k in HUMAN_FIELDS if obj.get(k) is not None}
    if "scores" in human and not (
        isinstance(human["scores"], dict)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in human["scores"].values())
    ):
        raise CorpusError(f"{where}: field 'scores' must map dimensions to numbers")
    if "label" in human and not isinstance(human["label"], str):
        raise CorpusError(f"{where}: field 'label' must be a string")
    return CorpusItem(
        id=obj.get("id") or item_id(text),
        text=text,
        title=obj.get("title"),
        group_id=obj.get("group_id"),
        human=human or None,
    )
