"""Regression: mean absolute error and root mean squared error, overall and per dimension.

Predictions and references are equal-length lists of floats, one value per dimension; the
scalar kwarg `dimension_names` names the dimensions (verbatim, so keep them snake_case), and
they default to `dim0`, `dim1`, ... A prediction value that is missing (None) or not finite is
left out of the errors and counted in `regression_missing_rate`, so it is not hidden.
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """MAE and RMSE of multi-dimensional score predictions, over all values and per dimension."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of lists of floats (one per dimension).
    references: list of lists of floats, the same shape.
    dimension_names: optional list of dimension names (default dim0, dim1, ...).
    Other keyword arguments are accepted and ignored.
Returns:
    mae, rmse: over every (example, dimension) value; mae_<dim>, rmse_<dim>: per dimension;
    regression_missing_rate: share of prediction values that were None or not finite.
    Each is None when there is no value to average.
"""


def _matrix(rows: list[list[float | None]], width: int, what: str) -> np.ndarray:
    if any(len(row) != width for row in rows):
        raise ValueError(f"regression: every {what} row must have {width} values")
    return np.array([[math.nan if v is None else v for v in row] for row in rows], dtype=float).reshape(
        len(rows), width
    )


def _errors(diff: np.ndarray) -> tuple[float | None, float | None]:
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return None, None
    return float(np.mean(np.abs(diff))), float(math.sqrt(np.mean(diff * diff)))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Regression(evaluate.Metric):
    """MAE and RMSE, overall and per dimension."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(
        self,
        predictions: list[list[float | None]],
        references: list[list[float]],
        dimension_names: list[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, float | None]:
        if len(predictions) != len(references):
            raise ValueError("regression: predictions and references differ in length")
        width = len(dimension_names) if dimension_names else len(references[0]) if references else 0
        names = list(dimension_names) if dimension_names else [f"dim{i}" for i in range(width)]
        pred = _matrix(predictions, width, "prediction")
        ref = _matrix(references, width, "reference")
        if not np.all(np.isfinite(ref)):
            raise ValueError("regression: references must be finite numbers")
        diff = pred - ref
        result: dict[str, float | None] = {}
        result["mae"], result["rmse"] = _errors(diff)
        for j, name in enumerate(names):
            result[f"mae_{name}"], result[f"rmse_{name}"] = _errors(diff[:, j])
        result["regression_missing_rate"] = float(np.mean(~np.isfinite(pred))) if pred.size else None
        return result
