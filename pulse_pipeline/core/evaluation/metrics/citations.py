"""Citations: presence and validity of `<<SRC:domain:entity>>` markers, and ungrounded claims.

A marker is any `<<SRC:...>>` match of `<<SRC:([^<>\\s]+)>>`; its id must be `domain:entity`, each
part `[a-z0-9][a-z0-9._-]*`, and a marker whose id does not parse is invalid. The scalar kwarg
`sources` is the registry (id -> {"title", "url", optional "text"}); `citation_expected` is an
optional per-example list of booleans (default: every example expects a citation).

Hallucination is a simple lexical check. The claims of a prediction are its numbers
(`\\d+(?:[.,]\\d+)?`, commas dropped, leading zeros and trailing decimal zeros removed) and its
named entities: runs of capitalized words separated by single spaces (a sentence-initial first
word dropped, stopwords trimmed from both ends) and any word mixing letters and digits ("A100",
"Stampede3"). Markers, URLs and code in backticks are ignored. A claim is grounded when one
grounding text has it: a number as a number, an entity with every one of its words (whole
words, case-insensitive; word order is not checked). The grounding texts are: the title
and text of every source the prediction cites that the registry knows, plus that example's
reference answer. The reference is the human-approved answer to the same question, so its
facts count as grounded even when the registry holds no text for its source.
`hallucination_rate` is the share of predictions with at least one claim that have at least
one ungrounded claim.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import datasets
import evaluate

_DESCRIPTION = """Citation presence and validity of <<SRC:domain:entity>> markers, and the share of
answers with a number or named entity found in none of their cited sources."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers (strings).
    references: list of reference answers (strings); they count as grounding text.
    sources: dict id -> {"title", "url", optional "text"}, the source registry (passed whole).
    citation_expected: optional list of booleans, one per example (default: all True).
    Other keyword arguments are accepted and ignored.
Returns:
    citation_presence: share of citation-expected predictions with at least one marker.
    citation_validity: share of markers that parse and resolve in the registry (None without
        markers or without a registry).
    unknown_sources: sorted well-formed ids cited but not in the registry (None without a registry);
        malformed markers only lower citation_validity.
    hallucination_rate: share of predictions with a checkable claim that have an ungrounded one.
"""

MARKER = re.compile(r"<<SRC:([^<>\s]+)>>")
SOURCE_ID = re.compile(r"[a-z0-9][a-z0-9._-]*:[a-z0-9][a-z0-9._-]*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_WORD = re.compile(r"[^\W_](?:[\w'’.-]*[^\W_])?")
_IGNORED = re.compile(r"<<SRC:[^<>]*>>|https?://\S+|www\.\S+|```.*?```|`[^`]*`", re.DOTALL)
_SENTENCE_END = frozenset(".!?:;\n")
_SKIPPED_BEFORE_WORD = frozenset(" \t\"'“‘([*>#-•")
_STOPWORD_TEXT = """a an the and or but nor so yet if then else when while as at by for from in into of off on onto
    out over to up with without about after before between during per via than that this these those
    there here it its it's i i'm i've i'd i'll me my we we're our you you're your yours he she they
    them their his her is are was were be been being do does did have has had can could will would
    shall should may might must not no yes please note however also see check use run try each every
    all any some most many more other such what which who whom whose how why where thanks thank hi
    hello ok okay"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def parse_source_id(marker_id: str) -> str | None:
    """The id of a marker when it is a well-formed `domain:entity`, else None."""
    return marker_id if SOURCE_ID.fullmatch(marker_id) else None


def cited_ids(text: str) -> list[str]:
    """The raw ids of every `<<SRC:...>>` marker in `text`, in order (malformed ones included)."""
    return MARKER.findall(text)


def _canonical_number(token: str) -> str:
    token = token.replace(",", "")
    whole, _, fraction = token.partition(".")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def _words(text: str) -> list[re.Match[str]]:
    return list(_WORD.finditer(text))


def _sentence_initial(text: str, start: int) -> bool:
    """Whether the word at `start` begins the text, a line or a sentence (quotes, brackets and
    list bullets in between are skipped)."""
    i = start - 1
    while i >= 0 and text[i] in _SKIPPED_BEFORE_WORD:
        i -= 1
    return i < 0 or text[i] in _SENTENCE_END


def _normal(word: str) -> str:
    word = word.casefold()
    for suffix in ("'s", "’s"):
        if word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _is_mixed(word: str) -> bool:
    """Letters and digits in one hyphen/dot-separated part: "A100", "Stampede3", not "128-core"."""
    return any(
        any(c.isdigit() for c in part) and any(c.isalpha() for c in part) for part in re.split(r"[.\-]", word)
    )


def _is_name_word(word: str) -> bool:
    return word[0].isupper() or _is_mixed(word)


def _entity_runs(text: str) -> list[list[tuple[str, bool]]]:
    """Runs of capitalized or letter-digit words separated by single spaces, as
    (word, sentence-initial) pairs."""
    runs: list[list[tuple[str, bool]]] = []
    previous_end = -1
    for match in _words(text):
        word = match.group()
        if not _is_name_word(word):
            previous_end = -1
            continue
        item = (word, _sentence_initial(text, match.start()))
        if runs and previous_end >= 0 and text[previous_end : match.start()] == " ":
            runs[-1].append(item)
        else:
            runs.append([item])
        previous_end = match.end()
    return runs


def _entities(text: str) -> set[str]:
    """Named entities: runs of name words without a sentence-initial first word (unless it mixes
    letters and digits) and with stopwords trimmed from both ends."""
    entities = set()
    for run in _entity_runs(text):
        if run[0][1] and not _is_mixed(run[0][0]):
            run = run[1:]
        words = [w for w, _ in run]
        while words and _normal(words[0]) in _STOPWORDS:
            words = words[1:]
        while words and _normal(words[-1]) in _STOPWORDS:
            words = words[:-1]
        if words:
            entities.add(" ".join(_normal(w) for w in words))
    return entities


@lru_cache(maxsize=65536)
def claims(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(numbers, named entities) stated in `text`, normalized."""
    text = _IGNORED.sub(" ", text)
    return frozenset(_canonical_number(n) for n in _NUMBER.findall(text)), frozenset(_entities(text))


@lru_cache(maxsize=65536)
def _grounding(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(numbers, normalized words) of a grounding text."""
    text = _IGNORED.sub(" ", text)
    numbers = frozenset(_canonical_number(n) for n in _NUMBER.findall(text))
    return numbers, frozenset(_normal(m.group()) for m in _words(text))


def ungrounded_claims(prediction: str, grounding_texts: list[str]) -> set[str]:
    """The claims of `prediction` found in none of `grounding_texts`: a number must appear as a
    number, an entity must have each of its words in one text."""
    numbers, entities = claims(prediction)
    indexed = [_grounding(t) for t in grounding_texts]
    missing = {n for n in numbers if not any(n in nums for nums, _ in indexed)}
    missing |= {e for e in entities if not any(set(e.split(" ")) <= words for _, words in indexed)}
    return missing


def _source_text(source: dict[str, Any]) -> str:
    return f"{source.get('title') or ''}\n{source.get('text') or ''}"


def _hallucinated(prediction: str, reference: str, sources: dict[str, Any]) -> bool | None:
    """Whether the prediction has an ungrounded claim; None when it has no claim."""
    numbers, entities = claims(prediction)
    if not numbers and not entities:
        return None
    texts = [reference] + [
        _source_text(sources[i])
        for i in dict.fromkeys(cited_ids(prediction))
        if isinstance(sources.get(i), dict)
    ]
    return bool(ungrounded_claims(prediction, texts))


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Citations(evaluate.Metric):
    """Citation presence, citation validity, unknown sources and hallucination rate."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[str],
        sources: dict[str, Any] | None = None,
        citation_expected: list[bool | None] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        expected = [True] * len(predictions) if citation_expected is None else list(citation_expected)
        if len(expected) != len(predictions) or len(references) != len(predictions):
            raise ValueError("citations: predictions, references and citation_expected differ in length")
        markers = [cited_ids(p) for p in predictions]
        flat = [m for ms in markers for m in ms]
        registry = sources or {}
        flagged = [_hallucinated(p, r, registry) for p, r in zip(predictions, references, strict=True)]
        return {
            "citation_presence": _share(
                [bool(ms) for ms, e in zip(markers, expected, strict=True) if e is not False]
            ),
            "citation_validity": _share([parse_source_id(m) in registry for m in flat])
            if flat and sources is not None
            else None,
            "unknown_sources": sorted({m for m in flat if parse_source_id(m) and m not in registry})
            if sources is not None
            else None,
            "hallucination_rate": _share([f for f in flagged if f is not None]),
        }
