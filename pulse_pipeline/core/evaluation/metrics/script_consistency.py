"""Script consistency: whether answers that should be in Devanagari (Hindi) are written in it.

Per prediction, the share of its letters (Unicode category L*) that lie in the script's blocks
(Devanagari: U+0900-U+097F and U+A8E0-U+A8FF); `<<SRC:...>>` markers, URLs and code in
backticks are removed first, and digits, marks and punctuation are not letters. Devanagari
vowel signs are marks (Mn/Mc), so they count neither way. A prediction is consistent when at
least 90% of its letters are in the script; `script_consistency` is the share of consistent
predictions among those with letters, None when none has any.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any

import datasets
import evaluate

_DESCRIPTION = (
    """Share of answers written (>= 90% of their letters) in the expected script, e.g. Devanagari."""
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers (strings).
    references: list of reference answers (strings); not used.
    script: the expected script (default "devanagari", the only one known).
    Other keyword arguments are accepted and ignored.
Returns:
    script_consistency: share of predictions with letters that are consistent (None if none has letters).
"""

SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "devanagari": ((0x0900, 0x097F), (0xA8E0, 0xA8FF)),
}
MIN_SHARE = 0.9
_IGNORED = re.compile(r"<<SRC:[^<>]*>>|https?://\S+|www\.\S+|```.*?```|`[^`]*`", re.DOTALL)


@lru_cache(maxsize=65536)
def script_share(text: str, script: str = "devanagari") -> float | None:
    """Share of the letters of `text` (markers, URLs and code removed) in `script`; None without letters."""
    ranges = _ranges(script)
    letters = [ch for ch in _IGNORED.sub(" ", text) if unicodedata.category(ch).startswith("L")]
    if not letters:
        return None
    inside = sum(any(lo <= ord(ch) <= hi for lo, hi in ranges) for ch in letters)
    return inside / len(letters)


def _ranges(script: str) -> tuple[tuple[int, int], ...]:
    try:
        return SCRIPT_RANGES[script.lower()]
    except KeyError:
        raise ValueError(f"Unknown script {script!r}; known: {', '.join(sorted(SCRIPT_RANGES))}") from None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ScriptConsistency(evaluate.Metric):
    """Share of answers in the expected script."""

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
        self, predictions: list[str], references: list[str], script: str | None = None, **kwargs: Any
    ) -> dict[str, float | None]:
        shares = [script_share(p, script or "devanagari") for p in predictions]
        consistent = [s >= MIN_SHARE for s in shares if s is not None]
        return {"script_consistency": sum(consistent) / len(consistent) if consistent else None}
