"""Classification: accuracy, macro F1, confusion matrix and out-of-scope thresholding.

With per-example `scores` (the top label's confidence) and a `threshold`, a prediction whose
score is below the threshold becomes the out-of-scope label (`out_of_scope_label`, default
"oos") before anything is counted. Macro F1 follows scikit-learn's `f1_score(average="macro")`
over the labels present in references or predictions (a label with no true positive scores 0).
`choose_threshold` picks that threshold on a validation split.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import datasets
import evaluate

_DESCRIPTION = """Accuracy, macro F1 and the confusion matrix of predicted labels, with optional
out-of-scope thresholding on the top label's confidence."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted labels (strings).
    references: list of reference labels (strings).
    scores: optional list of floats, the top label's confidence per example.
    threshold: optional float; with `scores`, predictions scoring below it become `out_of_scope_label`.
    out_of_scope_label: the out-of-scope label (default "oos").
    Other keyword arguments are accepted and ignored.
Returns:
    accuracy, macro_f1: 0..1 (None if no example).
    confusion_matrix: {"labels": [...], "matrix": [[...]]}, rows = reference, columns = prediction
        (None if no example).
    in_scope_accuracy: accuracy over examples whose reference is not out of scope (None if none).
    oos_recall: share of out-of-scope references predicted out of scope (None if none).
"""

DEFAULT_OOS = "oos"


def apply_threshold(
    predictions: list[str], scores: list[float], threshold: float, out_of_scope_label: str = DEFAULT_OOS
) -> list[str]:
    """Predictions with those scoring below `threshold` replaced by the out-of-scope label."""
    return [
        out_of_scope_label if score < threshold else pred
        for pred, score in zip(predictions, scores, strict=True)
    ]


def macro_f1(predictions: list[str], references: list[str]) -> float | None:
    """Unweighted mean over labels (references ∪ predictions) of F1 = 2TP / (2TP + FP + FN)."""
    labels = set(predictions) | set(references)
    if not labels:
        return None
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for pred, ref in zip(predictions, references, strict=True):
        if pred == ref:
            tp[ref] += 1
        else:
            fp[pred] += 1
            fn[ref] += 1
    return sum(2 * tp[label] / (2 * tp[label] + fp[label] + fn[label]) for label in labels) / len(labels)


def confusion_matrix(predictions: list[str], references: list[str]) -> dict[str, list] | None:
    """Counts with rows = reference label and columns = predicted label, labels sorted."""
    labels = sorted(set(predictions) | set(references))
    if not labels:
        return None
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for pred, ref in zip(predictions, references, strict=True):
        matrix[index[ref]][index[pred]] += 1
    return {"labels": labels, "matrix": matrix}


def _share(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def choose_threshold(
    scores: list[float], predictions: list[str], references: list[str], out_of_scope_label: str = DEFAULT_OOS
) -> float:
    """The threshold maximizing accuracy with out-of-scope as one more class.

    Candidates are -inf (no thresholding) and every distinct score; ties go to the lowest
    threshold. One sweep over the sorted scores, so it is O(n log n).
    """
    if len(scores) != len(predictions) or len(predictions) != len(references):
        raise ValueError("scores, predictions and references must have the same length")
    rows = sorted(zip(scores, predictions, references, strict=True), key=lambda row: row[0])
    correct = sum(pred == ref for _, pred, ref in rows)  # accuracy count at -inf: nothing thresholded
    best_threshold, best_correct = float("-inf"), correct
    i = 0
    while i < len(rows):
        threshold = rows[i][0]  # thresholding at this score turns every lower score out of scope
        if correct > best_correct:
            best_threshold, best_correct = float(threshold), correct
        while i < len(rows) and rows[i][0] == threshold:
            _, pred, ref = rows[i]
            correct += (ref == out_of_scope_label) - (pred == ref)
            i += 1
    return best_threshold


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    """Accuracy, macro F1, confusion matrix, in-scope accuracy and out-of-scope recall."""

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
        scores: list[float] | None = None,
        threshold: float | None = None,
        out_of_scope_label: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        oos = out_of_scope_label or DEFAULT_OOS
        if threshold is not None:
            if scores is None:
                raise ValueError("classification: `threshold` needs per-example `scores`")
            predictions = apply_threshold(predictions, scores, threshold, oos)
        pairs = list(zip(predictions, references, strict=True))
        return {
            "accuracy": _share([p == r for p, r in pairs]),
            "macro_f1": macro_f1(predictions, references),
            "confusion_matrix": confusion_matrix(predictions, references),
            "in_scope_accuracy": _share([p == r for p, r in pairs if r != oos]),
            "oos_recall": _share([p == oos for p, r in pairs if r == oos]),
        }
