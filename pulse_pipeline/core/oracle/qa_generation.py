"""QA pairs from documents (`pulse generate-qa`): self-instruct over passages, each answer citing the
passage it came from, sent to the review queue rather than straight to training.

- Documents: the `.md`, `.markdown`, `.txt` and `.rst` files under a folder (sorted; others are
  named in the result as skipped). A document is split at blank lines into paragraphs, merged into
  passages of up to `generate_qa.passage_chars` characters; a Markdown heading starts a passage.
- Source ids: `<document>:p<k>`, the document's path under the folder without its suffix, in
  lower case with every other character than `a-z0-9._-` as `-` (`guides/GPU Jobs.md`, third
  passage: `guides-gpu-jobs:p3`), the `domain:entity` form the citation metrics check. Every
  answer ends with `<<SRC:<id>>>` and the record's `sources` names it; the passages are written
  as a source registry (`qa/<family>/<version>/sources.json`: id -> title, path, text) that
  `evaluation.sources_file` can point at.
- The oracle gets the family's `generate_qa.prompt` (or the built-in one) with `{{passage}}`,
  `{{title}}` and `{{n}}` (`per_passage`), and answers with JSON (a list of objects with
  `question` and `answer`, or one object) or `Q:`/`A:` lines. An unparseable reply is retried
  (sampled) `oracle.parse_retries` times, then quarantined.
- Each pair is checked: both parts present, the question not the answer, and the answer grounded:
  at least `min_grounding` of its content words occur in the passage (self-instruct's filter for
  answers the model made up). A pair that fails is quarantined with why; a question already asked
  (normalized, in this run or among the family's stored QA pairs) is counted as a duplicate.
- Records: `qa_pair`s with `source: generated` (triage sends them to the review queue), the oracle
  and prompt version as annotator, and ids derived from the version, the source id and the
  question, so a second run stores nothing twice.
- Like `pulse label`: one run of a family at a time (lock `generate-qa:<family>`); every
  passage's answer is journalled (`oracle_labels`, item `<source id>#<text hash>`) before its
  records are stored, so a killed run resumes without asking again; `max_cost` caps the spend.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pulse_pipeline.core import chat_api
from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.examples import normalize
from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.core.oracle.oracles import MAX_KEPT_REPLY, RETRY_TEMPERATURE, Oracle, OracleError
from pulse_pipeline.core.oracle.prompts import PLACEHOLDER, turns
from pulse_pipeline.core.store import JournalRow, Store

SUFFIXES = (".md", ".markdown", ".txt", ".rst")
QA_FIELDS = {"passage", "title", "n"}
_SLUG = re.compile(r"[^a-z0-9._-]+")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*)$")
_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
# fmt: off
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "does", "for", "from", "has",
    "have", "how", "if", "in", "into", "is", "it", "its", "no", "not", "of", "on", "or", "so", "than",
    "that", "the", "their", "then", "there", "these", "this", "to", "was", "were", "what", "when",
    "where", "which", "who", "why", "will", "with", "yes", "you", "your",
})
# fmt: on

BUILT_IN = """\
### system
You write question-answer pairs for training a documentation assistant. Each question is one a
user could ask; its answer uses only facts stated in the passage. Answer with a JSON list of
objects with "question" and "answer", and nothing else.
### user
Passage (Opening hours):
The library opens at 9 am on weekdays and at 10 am on Saturdays. It is closed on Sundays.

Write 2 question-answer pairs.
### assistant
[{"question": "When does the library open on Saturdays?", "answer": "It opens at 10 am on Saturdays."},
 {"question": "Is the library open on Sundays?", "answer": "No, it is closed on Sundays."}]
### user
Passage ({{title}}):
{{passage}}

Write {{n}} question-answer pairs."""


class DocumentsError(ValueError):
    """The documents folder cannot be read; names the file."""


@dataclass(frozen=True)
class Passage:
    source_id: str  # `<document>:p<k>`
    title: str  # the document's path, and the heading the passage is under
    path: str  # the document, relative to the folder
    text: str

    @property
    def key(self) -> str:
        """The journal's item id: an edited passage is a new item."""
        return f"{self.source_id}#{hashlib.sha256(self.text.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class QaPrompt:
    family: str
    template: str
    source: str
    per_passage: int

    @property
    def version(self) -> str:
        blob = f"{self.template}\n-- pairs per passage: {self.per_passage}"
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def render(self, passage: Passage) -> list[dict[str, str]]:
        values = {"passage": passage.text, "title": passage.title, "n": str(self.per_passage)}
        return [
            {"role": role, "content": PLACEHOLDER.sub(lambda m: values[m.group(1)], text)}
            for role, text in turns(self.template)
        ]


def load_qa_prompt(family: FamilyConfig) -> QaPrompt:
    """The family's generation prompt (its `oracle.generate_qa.prompt` file, else the built-in)."""
    from pulse_pipeline.core.oracle.prompts import PromptError

    if "qa_pair" not in family.annotation_kinds:
        raise PromptError(f"family {family.name} does not learn from qa_pair, the records generate-qa writes")
    config = family.oracle.generate_qa
    if config.prompt is None:
        prompt = QaPrompt(family.name, BUILT_IN, "built-in generate-qa prompt", config.per_passage)
    else:
        try:
            prompt = QaPrompt(family.name, config.prompt.read_text(), str(config.prompt), config.per_passage)
        except (OSError, UnicodeDecodeError) as exc:
            raise PromptError(
                f"family {family.name}: oracle.generate_qa.prompt {config.prompt}: {exc}"
            ) from None
    unknown = set(PLACEHOLDER.findall(prompt.template)) - QA_FIELDS
    if unknown:
        raise PromptError(
            f"{prompt.source}: unknown placeholder(s) {', '.join(sorted(unknown))} (known: "
            f"{', '.join(sorted(QA_FIELDS))})"
        )
    try:
        turns(prompt.template)
    except ValueError as exc:
        raise PromptError(f"{prompt.source}: {exc}") from None
    return prompt


# -- documents ---------------------------------------------------------------------------------------


def read_documents(folder: str | Path, passage_chars: int) -> tuple[list[Passage], list[str]]:
    """The folder's passages, and the files it skipped (not text documents), by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise DocumentsError(f"{root}: not a folder of documents")
    passages: list[Passage] = []
    skipped: list[str] = []
    seen: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() not in SUFFIXES or any(part.startswith(".") for part in path.parts):
            skipped.append(rel)
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DocumentsError(f"{path}: cannot read it as UTF-8 text: {exc}") from None
        doc = document_id(rel)
        if doc in seen:
            raise DocumentsError(f"{path}: its source id {doc!r} is the same as {seen[doc]!r}'s; rename one")
        seen[doc] = rel
        for k, (heading, body) in enumerate(split_passages(text, passage_chars), start=1):
            title = f"{rel}: {heading}" if heading else rel
            passages.append(Passage(f"{doc}:p{k}", title, rel, body))
    return passages, skipped


def document_id(relative_path: str) -> str:
    stem = relative_path.rsplit(".", 1)[0] if "." in relative_path.rsplit("/", 1)[-1] else relative_path
    slug = _SLUG.sub("-", stem.lower()).strip("-._")
    return slug or "document"


def split_passages(text: str, limit: int) -> list[tuple[str, str]]:
    """(heading, passage) pairs: paragraphs merged up to `limit` characters; a heading starts one;
    a paragraph longer than `limit` is cut at sentence ends."""
    out: list[tuple[str, str]] = []
    heading, parts = "", []

    def flush() -> None:
        body = "\n\n".join(parts).strip()
        if body:
            out.append((heading, body))
        parts.clear()

    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if not block:
            continue
        first, _, rest = block.partition("\n")
        match = _HEADING.match(first)
        if match:
            flush()
            heading = match.group(2).strip().strip("#").strip()
            block = rest.strip()
            if not block:
                continue
        for piece in _cut(block, limit):
            if parts and len("\n\n".join(parts)) + 2 + len(piece) > limit:
                flush()
            parts.append(piece)
    flush()
    return out


def _cut(block: str, limit: int) -> list[str]:
    if len(block) <= limit:
        return [block]
    pieces, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+", block):
        while len(sentence) > limit:  # one sentence longer than a passage: cut at a space
            cut = sentence.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > limit:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


# -- answers -----------------------------------------------------------------------------------------


class PairsError(ValueError):
    """No question-answer pair in a reply; says what was wrong."""


def parse_pairs(reply: str) -> list[dict[str, str]]:
    """The question-answer pairs in a reply: a JSON list of objects, JSON objects anywhere, or
    `Q:`/`A:` (`Question:`/`Answer:`) lines."""
    text = re.sub(r"<think>.*?</think>", "", reply or "", flags=re.DOTALL | re.IGNORECASE).strip()
    if not text:
        raise PairsError("the answer is empty")
    pairs: list[dict[str, str]] = []
    for value in chat_api.json_values(text, "[{", inside=False):
        for obj in value if isinstance(value, list) else [value]:
            if isinstance(obj, dict):
                lowered = {str(k).lower(): v for k, v in obj.items()}
                q, a = lowered.get("question"), lowered.get("answer")
                if isinstance(q, str) and isinstance(a, str):
                    pairs.append({"question": q.strip(), "answer": a.strip()})
    if not pairs:
        found = re.findall(
            r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*[:.]\s*(.+?)\s*\n\s*(?:A|Answer)\s*[:.]\s*(.+?)(?=\n\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*[:.]|\Z)",
            text,
            flags=re.DOTALL | re.IGNORECASE,
        )
        pairs = [{"question": q.strip(), "answer": " ".join(a.split())} for q, a in found]
    if not pairs:
        one = " ".join(text.split())
        raise PairsError(
            f"no question-answer pair in the answer: {one[:117] + '...' if len(one) > 120 else one!r}"
        )
    return pairs


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and (len(w) > 1 or w.isdigit())]


def check_pair(pair: dict[str, str], passage: Passage, min_grounding: float) -> str | None:
    """Why a pair cannot be kept, or None."""
    question, answer = pair["question"], pair["answer"]
    words = content_words(answer)
    if len(content_words(question)) < 2:
        return "the question is empty or too short"
    if not words:
        return "the answer is empty"
    if normalize(question) == normalize(answer):
        return "the answer repeats the question"
    known = set(content_words(passage.text))
    grounded = sum(w in known for w in words) / len(words)
    if grounded < min_grounding:
        return f"the answer is not grounded in its passage ({grounded:.0%} of its content words are in it, below {min_grounding:.0%})"
    return None


def qa_record(
    family: FamilyConfig, passage: Passage, pair: dict[str, str], *, oracle: str, version: str
) -> dict[str, Any]:
    """The review-queue record of one generated pair; its answer cites the passage."""
    answer = re.sub(r"\s*<<SRC:[^<>]*>>", "", pair["answer"]).strip()
    digest = hashlib.sha256(f"{passage.source_id}\n{normalize(pair['question'])}".encode()).hexdigest()[:24]
    return {
        "kind": "qa_pair",
        "family": family.name,
        "id": f"generated-{version}-{digest}",
        "source": "generated",
        "annotator": f"oracle:{oracle}@{version}"[:256],
        "question": pair["question"],
        "answer": f"{answer} <<SRC:{passage.source_id}>>",
        "sources": [passage.source_id],
        "query_type": "static",
        "citation_expected": True,
        "context": passage.text,
    }


# -- the run -----------------------------------------------------------------------------------------


@dataclass
class QaResult:
    family: str
    prompt_version: str
    oracle: str
    documents: int
    passages: int
    skipped_files: list[str] = field(default_factory=list)
    generated: int = 0  # pairs stored this run (waiting for review)
    duplicates: int = 0  # pairs whose question was already asked
    rejected: int = 0  # pairs that failed a check (quarantined)
    unparsed: int = 0  # passages with no parseable pair after the retries (quarantined)
    failed: int = 0  # calls that failed (not journalled: asked again next time)
    already_done: int = 0  # passages answered by an earlier run
    recovered: int = 0  # records an earlier run paid for but did not store; stored now
    remaining: int = 0
    cost: float = 0.0
    total_cost: float = 0.0
    stopped: str | None = None
    sources_key: str = ""
    first_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def generate_qa(
    store: Store,
    artifacts: ArtifactStore,
    config: PulseConfig,
    family: FamilyConfig,
    prompt: QaPrompt,
    oracle: Oracle,
    docs: str | Path,
    *,
    who: str,
    max_cost: float | None = None,
    on_progress: Callable[[QaResult], None] = lambda _: None,
    lock_holder: Any = None,
) -> QaResult:
    """Generate the folder's QA pairs into the family's review queue; see the module's doc."""
    from pulse_pipeline.core.oracle.labelling import affordable, job_lock, quarantine_reply, store_records
    from pulse_pipeline.core.training.lock import this_process

    settings = family.oracle.generate_qa
    passages, skipped = read_documents(docs, settings.passage_chars)
    result = QaResult(
        family=family.name,
        prompt_version=prompt.version,
        oracle=oracle.name,
        documents=len({p.path for p in passages}),
        passages=len(passages),
        skipped_files=skipped,
    )
    result.sources_key = f"qa/{family.name}/{prompt.version}/sources.json"
    registry = {p.source_id: {"title": p.title, "url": p.path, "text": p.text} for p in passages}
    artifacts.write_bytes(result.sources_key, orjson.dumps(registry, option=orjson.OPT_INDENT_2))
    source = f"generate-qa:{family.name}@{prompt.version}"
    holder = lock_holder or this_process(who)
    with job_lock(store, f"generate-qa:{family.name}", holder, family, "a QA generation"):
        journal = store.oracle.rows(family.name, prompt.version)
        done = {p.key: journal[p.key] for p in passages if p.key in journal}
        result.already_done = len(done)
        result.total_cost = sum(row.cost for row in done.values())
        stored = store.oracle.stored_ids(family.name, f"generated-{prompt.version}-")
        lost = [
            r for row in done.values() for r in (row.record or {}).get("records", []) if r["id"] not in stored
        ]
        if lost:
            store_records(store, config, family, source, lost)
            result.recovered = len(lost)
        asked_before = {
            normalize(row.payload["question"])
            for row in store.annotations.iter_family(family.name)
            if row.kind == "qa_pair"
        }
        answered = len(done)
        for passage in (p for p in passages if p.key not in done):
            if max_cost is not None and not affordable(max_cost, result.total_cost, answered):
                result.stopped = f"cost cap {max_cost:g} reached (spent {result.total_cost:.6g})"
                break
            row, records = _ask(oracle, prompt, family, passage, asked_before, result)
            if row is None:
                continue
            at = dt.datetime.now(dt.UTC)
            if not store.oracle.add(family.name, prompt.version, row, by=who, at=at):
                continue
            answered += 1
            result.cost += row.cost
            result.total_cost += row.cost
            for reason, raw in _rejections(row):
                quarantine_reply(store, family, source, f"passage {passage.source_id}: {reason}", raw, at)
            if records:
                store_records(store, config, family, source, records)
                result.generated += len(records)
            on_progress(result)
        result.remaining = len(passages) - answered
    return result


def _ask(
    oracle: Oracle,
    prompt: QaPrompt,
    family: FamilyConfig,
    passage: Passage,
    asked_before: set[str],
    result: QaResult,
) -> tuple[JournalRow | None, list[dict[str, Any]]]:
    """Ask about one passage (greedy, then sampled retries while nothing parses); the journal row
    (None when the call failed) and the records to store."""
    messages = prompt.render(passage)
    settings = family.oracle.generate_qa
    tokens = [0, 0]
    cost, reply, error, pairs, attempts = 0.0, "", None, None, 0
    for attempt in range(family.oracle.parse_retries + 1):
        attempts += 1
        try:
            done = oracle.complete(
                messages,
                temperature=0.0 if attempt == 0 else RETRY_TEMPERATURE,
                seed=attempt,
                max_tokens=settings.max_new_tokens,
            )
        except OracleError as exc:
            result.failed += 1
            result.first_error = result.first_error or str(exc)
            return None, []
        tokens[0] += done.prompt_tokens
        tokens[1] += done.completion_tokens
        cost += done.cost
        reply = done.text
        try:
            pairs = parse_pairs(done.text)
        except PairsError as exc:
            error = str(exc)
            continue
        error = None
        break
    records, rejected = [], []
    if pairs is None:
        result.unparsed += 1
    else:
        for pair in pairs:
            why = check_pair(pair, passage, settings.min_grounding)
            if why is not None:
                rejected.append({"reason": why, **pair})
                result.rejected += 1
                continue
            key = normalize(pair["question"])
            if key in asked_before:
                result.duplicates += 1
                continue
            asked_before.add(key)
            records.append(qa_record(family, passage, pair, oracle=oracle.model, version=prompt.version))
    row = JournalRow(
        item_id=passage.key[:256],
        status="generated" if pairs is not None else "quarantined",
        record={"records": records, "rejected": rejected},
        reply=reply[:MAX_KEPT_REPLY],
        error=error,
        oracle=oracle.name,
        attempts=attempts,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        cost=cost,
    )
    return row, records


def _rejections(row: JournalRow) -> list[tuple[str, bytes]]:
    if row.status == "quarantined":
        return [(f"no question-answer pair after {row.attempts} attempt(s): {row.error}", row.reply.encode())]
    return [
        (f"generated pair rejected: {r['reason']}", orjson.dumps({k: r[k] for k in ("question", "answer")}))
        for r in (row.record or {}).get("rejected", [])
    ]
