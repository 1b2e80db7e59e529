"""A family's oracle prompt: a template file, its version, and the answers it asks for.

The template is plain text with `{{name}}` placeholders (so JSON examples need no escaping):
`{{text}}`, `{{title}}`, and the family's label shape: `{{labels}}` (classification, one per
line), `{{dimensions}}`, `{{score_min}}`, `{{score_max}}` (regression), `{{question}}` (a QA
family: the same as `{{text}}`). The rendered text is the user message; or, when the template
has lines `### system`, `### user` and `### assistant`, the chat turns they open: an instruction
and worked examples as turns of their own (what small models follow best), ending with the user
turn that holds the item. The version is the first 12 hex digits of the template's SHA-256:
editing the prompt makes a new version, which must pass calibration again before `pulse label`
uses it.

Answers are parsed into the family's record fields, leniently about form and strictly about
content: a JSON object anywhere in the reply (code fences, prose and `<think>` blocks ignored) or a
bare answer (a label's name, a number for a one-dimension family); a label outside the family's
set, a missing dimension or a score outside `score_range` is an AnswerError naming it.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from pulse_pipeline.core import chat_api
from pulse_pipeline.core.families import FamilyConfig, TaskKind
from pulse_pipeline.core.oracle.corpus import CorpusItem

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
TURN = re.compile(r"^### (system|user|assistant)[ \t]*$", re.MULTILINE)
FIELDS = {
    TaskKind.classification: {"text", "title", "labels"},
    TaskKind.regression: {"text", "title", "dimensions", "score_min", "score_max"},
    TaskKind.chat_sft: {"text", "title", "question"},
}
RECORD_KIND = {
    TaskKind.classification: "intent_label",
    TaskKind.regression: "score_label",
    TaskKind.chat_sft: "qa_pair",
}

BUILT_IN = {
    TaskKind.classification: """\
Classify the text into exactly one of these labels:
{{labels}}

Text: {{text}}

Answer with the label only.""",
    TaskKind.regression: """\
Rate the text on each of these dimensions, from {{score_min}} (not at all) to {{score_max}} (fully):
{{dimensions}}

Title: {{title}}
Text: {{text}}

Answer with a JSON object mapping each dimension to its score, and nothing else.""",
    TaskKind.chat_sft: """\
Answer the question accurately and briefly.

Question: {{question}}""",
}


class PromptError(ValueError):
    """The family's prompt cannot be used (unknown placeholder, a family the oracle cannot label)."""


class AnswerError(ValueError):
    """The oracle's answer holds no valid label; the message says what is wrong with it."""


@dataclass(frozen=True)
class OraclePrompt:
    family: str
    template: str
    source: str  # the file, or "built-in <task>"

    @property
    def version(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()[:12]


def load_prompt(family: FamilyConfig) -> OraclePrompt:
    """The family's prompt (its `oracle.prompt` file, else the built-in one of its task), checked."""
    record_kind = RECORD_KIND[family.task]
    if record_kind not in family.annotation_kinds:
        raise PromptError(
            f"family {family.name} does not learn from {record_kind}, the records an oracle of a "
            f"{family.task} family writes"
        )
    path = family.oracle.prompt
    if path is None:
        prompt = OraclePrompt(family.name, BUILT_IN[family.task], f"built-in {family.task} prompt")
    else:
        try:
            prompt = OraclePrompt(family.name, path.read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise PromptError(f"family {family.name}: oracle.prompt {path}: {exc}") from None
    unknown = set(PLACEHOLDER.findall(prompt.template)) - FIELDS[family.task]
    if unknown:
        raise PromptError(
            f"{prompt.source}: unknown placeholder(s) {', '.join(sorted(unknown))} for a {family.task} "
            f"family (known: {', '.join(sorted(FIELDS[family.task]))})"
        )
    if family.task is TaskKind.classification and family.oracle.off_topic_label not in (
        None,
        *(family.labels or ()),
    ):
        raise PromptError(f"family {family.name}: oracle.off_topic_label is not one of its labels")
    return prompt


def render(prompt: OraclePrompt, family: FamilyConfig, item: CorpusItem) -> list[dict[str, str]]:
    """The chat messages that ask the oracle about one item."""
    values = {
        "text": item.text,
        "question": item.text,
        "title": item.title or "",
        "labels": "\n".join(family.labels or ()),
        "dimensions": "\n".join(family.dimensions or ()),
        "score_min": f"{family.score_range[0]:g}",
        "score_max": f"{family.score_range[1]:g}",
    }
    return [
        {"role": role, "content": PLACEHOLDER.sub(lambda m: values[m.group(1)], text)}
        for role, text in turns(prompt.template)
    ]


def turns(template: str) -> list[tuple[str, str]]:
    """The template's chat turns: (role, text); one user turn when it has no `### role` lines.
    ValueError when the last turn is not the user's or text comes before the first header."""
    parts = TURN.split(template)
    if len(parts) == 1:
        return [("user", template.strip())]
    if parts[0].strip():
        raise ValueError("text before the first `### system|user|assistant` line")
    out = [(role, text.strip("\n")) for role, text in zip(parts[1::2], parts[2::2], strict=True)]
    if out[-1][0] != "user":
        raise ValueError("the last turn must be `### user` (the item to label)")
    return out


# -- answers -----------------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def parse_answer(family: FamilyConfig, reply: str) -> dict[str, Any]:
    """The record fields in an oracle's reply: {"label"}, {"scores"} or {"answer"}; AnswerError if none."""
    text = _THINK.sub("", reply or "").strip()
    if not text:
        raise AnswerError("the answer is empty")
    obj = _first_object(text)
    if family.task is TaskKind.classification:
        return {"label": _label(family, text, obj)}
    if family.task is TaskKind.regression:
        return {"scores": _scores(family, text, obj)}
    answer = obj.get("answer") if obj is not None else None
    answer = answer if isinstance(answer, str) and answer.strip() else text
    return {"answer": answer.strip()}


def _first_object(text: str) -> dict[str, Any] | None:
    return next((obj for obj in chat_api.json_values(text) if isinstance(obj, dict)), None)


def _key(label: str) -> str:
    return re.sub(r"[\s\-]+", "_", label.strip().lower())


def _label(family: FamilyConfig, text: str, obj: dict[str, Any] | None) -> str:
    labels = {_key(label): label for label in family.labels or ()}
    if obj is not None:
        lowered = {str(k).lower(): v for k, v in obj.items()}
        value = next((lowered[k] for k in ("label", "intent", "category", "class") if k in lowered), None)
        if isinstance(value, str):
            if _key(value) in labels:
                return labels[_key(value)]
            raise AnswerError(f"label {value!r} is not one of the family's labels")
    first = text.splitlines()[0].strip().strip("`'\".*: ")
    first = re.sub(r"^(label|intent|category|answer)\s*[:=]\s*", "", first, flags=re.IGNORECASE).strip(
        "`'\".: "
    )
    if _key(first) in labels:
        return labels[_key(first)]
    named = {
        label
        for key, label in labels.items()
        if re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", text, re.IGNORECASE)
        or re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text, re.IGNORECASE)
    }
    if len(named) == 1:
        return named.pop()
    if named:
        raise AnswerError(f"the answer names several labels ({', '.join(sorted(named))})")
    raise AnswerError(f"the answer names none of the family's labels: {_short(text)}")


def _scores(family: FamilyConfig, text: str, obj: dict[str, Any] | None) -> dict[str, float]:
    dims = family.dimensions or ()
    lo, hi = family.score_range
    found: dict[str, Any] = {}
    if obj is not None:
        source = obj.get("scores") if isinstance(obj.get("scores"), dict) else obj
        lowered = {_key(str(k)): v for k, v in source.items()}
        found = {d: lowered.get(_key(d)) for d in dims}
    elif len(dims) == 1:
        number = re.search(r"-?\d+(?:\.\d+)?", text)
        found = {dims[0]: float(number.group()) if number else None}
    scores: dict[str, float] = {}
    for dim in dims:
        value = found.get(dim)
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                value = None
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise AnswerError(f"no score for dimension {dim!r}: {_short(text)}")
        if not lo <= value <= hi:
            raise AnswerError(f"score {value:g} for {dim!r} is outside score_range [{lo:g}, {hi:g}]")
        scores[dim] = float(value)
    return scores


def _short(text: str, limit: int = 120) -> str:
    one = " ".join(text.split())
    return repr(one if len(one) <= limit else one[: limit - 3] + "...")


def record(
    family: FamilyConfig, item: CorpusItem, fields: dict[str, Any], *, oracle: str, version: str
) -> dict[str, Any]:
    """The annotation record of one labelled item: `source: oracle`, the oracle and prompt version
    as its annotator, an id derived from the prompt version and the item (so labelling twice is a
    no-op)."""
    kind = RECORD_KIND[family.task]
    rid = f"oracle-{version}-{item.id}"
    if len(rid) > 128:
        rid = f"oracle-{version}-{hashlib.sha256(item.id.encode()).hexdigest()[:32]}"
    out: dict[str, Any] = {
        "kind": kind,
        "family": family.name,
        "id": rid,
        "source": "oracle",
        "annotator": f"oracle:{oracle}@{version}"[:256],
    }
    if kind == "intent_label":
        out.update(text=item.text, label=fields["label"], provider="oracle")
    elif kind == "score_label":
        out.update(text=item.text, scores=fields["scores"])
        if item.title:
            out["title"] = item.title
        if item.group_id:
            out["group_id"] = item.group_id
    else:
        out.update(question=item.text, answer=fields["answer"])
    return out
