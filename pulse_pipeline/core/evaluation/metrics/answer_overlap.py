"""Answer overlap: SQuAD exact match and token F1 between generated and reference answers.

Normalization is the official SQuAD v1.1 script's: lowercase, drop ASCII punctuation
(`string.punctuation`), drop the articles a/an/the, collapse whitespace. Token F1 is SQuAD's
bag-of-tokens F1 with the SQuAD v2.0 rule for empty answers: when either side normalizes to
no tokens, F1 is 1 if both are empty and 0 otherwise. Scores are means over examples, in 0..1.
`answer_accuracy` counts an answer right when its token F1 reaches `f1_threshold` (default 0.5,
"mostly the reference's words"), the per-answer yes/no that a gate such as "QA answer accuracy
>= 95 %" needs for generated text, which rarely matches a reference exactly.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache
from typing import Any

import datasets
import evaluate

_DESCRIPTION = """SQuAD-style exact match and token F1 (means over examples, 0..1, not percent)."""

_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of EMNLP 2016",
    year = "2016",
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers (strings).
    references: list of reference answers (strings), one per prediction.
    Other keyword arguments are accepted and ignored.
Returns:
    exact_match: share of predictions equal to their reference after normalization (None if no example).
    token_f1: mean SQuAD token F1 (None if no example).
    answer_accuracy: share of predictions with token F1 >= f1_threshold (kwarg, default 0.5).
"""

F1_RIGHT = 0.5  # token F1 at which an answer counts as right for `answer_accuracy`
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, remove punctuation, articles and extra whitespace (SQuAD v1.1)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both answers are equal after normalization, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 of one answer; an empty side gives 1.0 if both are empty, else 0.0."""
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    overlap = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=65536)
def _pair_scores(prediction: str, reference: str) -> tuple[float, float]:
    """(exact match, token F1), cached: the paired bootstrap recomputes on resampled subsets."""
    return exact_match(prediction, reference), token_f1(prediction, reference)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AnswerOverlap(evaluate.Metric):
    """Exact match and token F1 as in the SQuAD evaluation script."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(
        self, predictions: list[str], references: list[str], **kwargs: Any
    ) -> dict[str, float | None]:
        scores = [_pair_scores(p, r) for p, r in zip(predictions, references, strict=True)]
        cut = float(kwargs.get("f1_threshold", F1_RIGHT))
        return {
            "exact_match": _mean([em for em, _ in scores]),
            "token_f1": _mean([f1 for _, f1 in scores]),
            "answer_accuracy": _mean([float(f1 >= cut) for _, f1 in scores]),
        }
