"""BLEU and chrF: sacrebleu's corpus scores of generated answers against one reference each.

Both use sacrebleu's default settings (BLEU: 13a tokenizer, exp smoothing; chrF: character
order 6, no word n-grams, beta 2) and sacrebleu's 0..100 scale. Segment statistics are cached
per (prediction, reference) pair and summed with sacrebleu's own aggregation, the way its
paired bootstrap does, so recomputing on resampled subsets stays cheap and gives exactly
`sacrebleu.corpus_bleu(...).score` / `sacrebleu.corpus_chrf(...).score`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import datasets
import evaluate
from sacrebleu.metrics import BLEU, CHRF

_DESCRIPTION = """sacrebleu corpus BLEU and chrF with default settings, on sacrebleu's 0..100 scale."""

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
}
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts (strings).
    references: list of reference texts (strings), one per prediction.
    Other keyword arguments are accepted and ignored.
Returns:
    bleu: corpus BLEU, 0..100 (None if no example).
    chrf: corpus chrF, 0..100 (None if no example).
"""

_BLEU = BLEU()
_CHRF = CHRF()


@lru_cache(maxsize=65536)
def _bleu_stats(prediction: str, reference: str) -> tuple[int, ...]:
    return tuple(_BLEU._extract_corpus_statistics([prediction], [[reference]])[0])


@lru_cache(maxsize=65536)
def _chrf_stats(prediction: str, reference: str) -> tuple[int, ...]:
    return tuple(_CHRF._extract_corpus_statistics([prediction], [[reference]])[0])


def corpus_bleu(predictions: list[str], references: list[str]) -> float | None:
    """sacrebleu corpus BLEU (0..100) with one reference per prediction; None for no example."""
    if not predictions:
        return None
    stats = [list(_bleu_stats(p, r)) for p, r in zip(predictions, references, strict=True)]
    return float(_BLEU._aggregate_and_compute(stats).score)


def corpus_chrf(predictions: list[str], references: list[str]) -> float | None:
    """sacrebleu corpus chrF (0..100) with one reference per prediction; None for no example."""
    if not predictions:
        return None
    stats = [list(_chrf_stats(p, r)) for p, r in zip(predictions, references, strict=True)]
    return float(_CHRF._aggregate_and_compute(stats).score)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BleuChrf(evaluate.Metric):
    """Corpus BLEU and chrF from sacrebleu."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(
        self, predictions: list[str], references: list[str], **kwargs: Any
    ) -> dict[str, float | None]:
        return {"bleu": corpus_bleu(predictions, references), "chrf": corpus_chrf(predictions, references)}
