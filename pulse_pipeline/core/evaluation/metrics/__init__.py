"""Offline metric modules: one `evaluate.Metric` per file, loaded by path, combined per family.

Each file in this folder is a self-contained Hugging Face `evaluate` module (it imports only the
standard library, numpy, sacrebleu, evaluate and datasets), so `evaluate.load(path)` works with
no network. This package only names them and loads them; importing it does not import
evaluate, datasets, sacrebleu or torch (the Dagster code location must load fast).

evaluate reads its cache folders once, when it is first imported, and copies every module it
loads into its modules cache. Before that can happen, `configure_cache()` defaults those folders
to `$PULSE_HOME/cache/huggingface/` (a variable the user has set is left alone). HF_HOME itself is
not touched: it also places the model hub cache, where the base models live.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import evaluate

HERE = Path(__file__).resolve().parent

MODULES: dict[str, Path] = {
    name: HERE / f"{name}.py"
    for name in (
        "answer_overlap",
        "bleu_chrf",
        "structured_output",
        "classification",
        "regression",
        "citations",
        "refusals",
        "script_consistency",
        "latency",
    )
}

# Result keys where a smaller value is better; every other key is higher-is-better.
LOWER_IS_BETTER: frozenset[str] = frozenset(
    {
        "mae",
        "rmse",
        "timestamp_error_seconds",
        "timestamp_missing_rate",
        "hallucination_rate",
        "hedging_rate",
        "latency_p50_seconds",
        "latency_p95_seconds",
        "latency_mean_seconds",
        "regression_missing_rate",
    }
)
_LOWER_IS_BETTER_PREFIXES = ("mae_", "rmse_")

# evaluate's cache variables (evaluate/config.py) and their folder under $PULSE_HOME/cache/huggingface.
_CACHE_VARIABLES = {
    "HF_MODULES_CACHE": "modules",
    "HF_METRICS_CACHE": "metrics",
    "HF_EVALUATE_CACHE": "evaluate",
}
_defaulted: dict[str, str] = {}  # the values this package put there (a user's own values are kept)


def configure_cache() -> Path:
    """Default evaluate's cache folders to `$PULSE_HOME/cache/huggingface/` and return that root.

    A variable set by the user wins. One this package set earlier follows PULSE_HOME while
    evaluate is not yet imported (evaluate reads them once, at import).
    """
    from pulse_pipeline.settings import get_settings

    root = get_settings().pulse_home / "cache" / "huggingface"
    if "evaluate" in sys.modules and _defaulted:
        return root
    for variable, folder in _CACHE_VARIABLES.items():
        current = os.environ.get(variable)
        if current is None or current == _defaulted.get(variable):
            os.environ[variable] = _defaulted[variable] = str(root / folder)
    return root


configure_cache()  # before any metric file (which imports evaluate) can be imported


def _path_of(name: str) -> Path:
    try:
        return MODULES[name]
    except KeyError:
        raise ValueError(
            f"Unknown metric module {name!r}; known modules: {', '.join(sorted(MODULES))}."
        ) from None


def load(name: str) -> evaluate.EvaluationModule:
    """The metric module `name`, loaded by path with nothing written to disk while computing."""
    path = _path_of(name)
    configure_cache()
    import evaluate

    return evaluate.load(str(path), keep_in_memory=True)


def combine(names: list[str] | tuple[str, ...]) -> evaluate.module.CombinedEvaluations:
    """The modules `names` as one evaluate `CombinedEvaluations` (result keys are unique across modules)."""
    modules = [load(name) for name in names]
    import evaluate

    return evaluate.combine(modules)


def higher_is_better(metric_key: str) -> bool:
    """Whether a larger value of the result key `metric_key` is an improvement."""
    if metric_key in LOWER_IS_BETTER:
        return False
    return not metric_key.startswith(_LOWER_IS_BETTER_PREFIXES)


def scalar_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The float-valued entries of a metric result (None, lists, dicts and booleans dropped)."""
    return {
        key: float(value)
        for key, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
