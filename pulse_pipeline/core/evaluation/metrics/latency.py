"""Latency: median, 95th percentile and mean of per-example response times, in seconds.

The per-example kwarg `latencies` carries the seconds; predictions and references are accepted
(strings, lists of floats or numbers, so this module combines with every family's modules) and
ignored. Percentiles are numpy's default linear interpolation. Every key is None when no
latency is given; None entries in `latencies` are skipped.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """p50, p95 and mean of per-example latencies in seconds (numpy linear percentiles)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions, references: accepted and ignored.
    latencies: list of floats, seconds per example.
    Other keyword arguments are accepted and ignored.
Returns:
    latency_p50_seconds, latency_p95_seconds, latency_mean_seconds (None without latencies).
"""


def _features(value: Any) -> datasets.Features:
    return datasets.Features({"predictions": value, "references": value})


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Latency(evaluate.Metric):
    """Latency percentiles and mean."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            # evaluate tries these in order on the first example; every family's inputs fit one.
            features=[
                _features(datasets.Value("string")),
                _features(datasets.Sequence(datasets.Value("float64"))),
                _features(datasets.Value("float64")),
            ],
        )

    def _compute(
        self,
        predictions: Any = None,
        references: Any = None,
        latencies: list[float] | None = None,
        **kwargs: Any,
    ) -> dict[str, float | None]:
        values = np.array([v for v in latencies or [] if v is not None], dtype=float)
        if values.size == 0:
            return {"latency_p50_seconds": None, "latency_p95_seconds": None, "latency_mean_seconds": None}
        return {
            "latency_p50_seconds": float(np.percentile(values, 50)),
            "latency_p95_seconds": float(np.percentile(values, 95)),
            "latency_mean_seconds": float(np.mean(values)),
        }
