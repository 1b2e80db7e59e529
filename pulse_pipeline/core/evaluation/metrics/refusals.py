"""Refusals: dynamic questions deferred, static questions answered; hedging in answers.

A question about live state ("is Delta down right now?") must be deferred: the answer says it
cannot know live or current status, or points to where to look (a status page). A static
question must be answered, not deferred. Deferral and hedging are detected by the phrase
patterns below (case-insensitive, curly apostrophes read as straight ones); they are written
for English answers, with a few Hindi deferral phrases.

- `refusal_accuracy`: over examples whose `query_types` entry is "static" or "dynamic", the
  share handled right (dynamic: deferred; static: not deferred).
- `hedging_rate`: share of all predictions with a hedging phrase ("I think", "probably",
  "might be", "I'm not sure", "possibly", "may be", "it seems", "I believe", "not certain", ...).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import datasets
import evaluate

_DESCRIPTION = (
    """Whether live-status questions are deferred and static ones answered; share of hedged answers."""
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers (strings).
    references: list of reference answers (strings); not used.
    query_types: optional list, one per example, of "static", "dynamic" or None.
    Other keyword arguments are accepted and ignored.
Returns:
    refusal_accuracy: share of typed examples handled right (None without typed examples).
    hedging_rate: share of predictions that hedge (None without predictions).
"""

_NEGATION = r"(?:can't|cannot|can not|couldn't|could not|unable to|not able to|don't|do not|doesn't|won't)"
_LIVE = r"(?:live|real[- ]?time|current|up[- ]to[- ]date|right now|at the moment|at this moment)"

REFUSAL_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        # "I can't see live system status", "cannot check real-time queue information"
        rf"\b{_NEGATION} (?:see|know|check|access|tell|verify|confirm|view|monitor|determine)\b[^.!?\n]{{0,60}}\b{_LIVE}",
        rf"\b{_NEGATION} (?:see|know|check|tell|verify|determine)\b[^.!?\n]{{0,40}}\bstatus\b",
        # "I cannot know that", "there is no way for me to know"
        r"\b(?:can't|cannot|can not|no way (?:for me )?to) know\b",
        # "I don't have access to real-time data", "I have no live information"
        rf"\b(?:don't|do not|doesn't|does not) have (?:any )?(?:access to )?(?:the )?{_LIVE}",
        r"\bhave no (?:access to )?(?:the )?(?:live|real[- ]?time)\b",
        r"\bno access to (?:the )?(?:live|real[- ]?time)\b",
        # "I can't answer that reliably", "not able to provide current numbers"
        rf"\b{_NEGATION} (?:answer|say)\b[^.!?\n]{{0,30}}\breliabl",
        rf"\b(?:not|unable) (?:able )?to (?:provide|give|report|share|know|see|check) (?:you )?(?:the |any )?{_LIVE}",
        # "Check the ACCESS system status page", "see the status page"
        r"\b(?:check|see|visit|consult|look at) (?:the )?[\w\s.-]{0,40}?\bstatus (?:page|dashboard|site)\b",
        # Hindi: "can't see" / "can't know" / "live status"
        r"नहीं देख सकत",
        r"नहीं जान सकत",
        r"(?:लाइव|रीयल[- ]?टाइम|वर्तमान)\s+(?:सिस्टम\s+)?(?:स्थिति|स्टेटस)[^।.!?]{0,40}नहीं",
    )
)

HEDGING_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\bI think\b",
        r"\bI believe\b",
        r"\bI guess\b",
        r"\bI(?:'m| am) not (?:sure|certain)\b",
        r"\bnot (?:entirely |completely |totally )?(?:sure|certain)\b",
        r"\bprobably\b",
        r"\bpossibly\b",
        r"\bperhaps\b",
        r"\bmaybe\b",
        r"\bmight be\b",
        r"\bmay be\b",
        r"\bit seems\b",
        r"\bseems to be\b",
        r"\bif I recall\b",
    )
)


def _plain(text: str) -> str:
    return text.replace("’", "'").replace("‘", "'")


@lru_cache(maxsize=65536)
def is_refusal(text: str) -> bool:
    """Whether the answer defers: it cannot know live state or points to where to look."""
    plain = _plain(text)
    return any(p.search(plain) for p in REFUSAL_PATTERNS)


@lru_cache(maxsize=65536)
def is_hedged(text: str) -> bool:
    """Whether the answer contains a hedging phrase."""
    plain = _plain(text)
    return any(p.search(plain) for p in HEDGING_PATTERNS)


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Refusals(evaluate.Metric):
    """Refusal accuracy on typed questions and the hedging rate."""

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
        query_types: list[str | None] | None = None,
        **kwargs: Any,
    ) -> dict[str, float | None]:
        types = [None] * len(predictions) if query_types is None else list(query_types)
        if len(types) != len(predictions):
            raise ValueError("refusals: query_types and predictions differ in length")
        handled = [
            is_refusal(p) == (t == "dynamic")
            for p, t in zip(predictions, types, strict=True)
            if t in ("static", "dynamic")
        ]
        return {
            "refusal_accuracy": _share(handled),
            "hedging_rate": _share([is_hedged(p) for p in predictions]),
        }
