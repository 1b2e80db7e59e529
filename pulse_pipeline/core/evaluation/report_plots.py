"""The plots of an evaluation report, drawn with matplotlib as PNG bytes.

`make_plots` draws what the results hold: the changes against the baseline with their intervals, the
training and validation loss, the confusion matrix and the error per dimension. matplotlib and numpy
are imported only when a plot is drawn.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from pulse_pipeline.core.evaluation.report_view import (
    as_dict,
    as_list,
    as_number,
    lower_is_better,
    metric_kind,
    verdict,
)

logger = logging.getLogger(__name__)

MAX_CONFUSION_LABELS = 30  # labels drawn in the confusion matrix
PLOT_TITLES = {  # the plots make_plots draws, by name: the title the report gives each
    "deltas": "Change against the baseline (95% intervals)",
    "loss_curve": "Training and validation loss",
    "confusion": "Confusion matrix (candidate, test set)",
    "per_dimension": "Mean absolute error per dimension",
}


def make_plots(results: dict) -> dict[str, bytes]:
    """PNG plots of what the results hold: deltas, loss_curve, confusion, per_dimension.

    A plot whose data is absent is left out. Plots only illustrate the report, so one that cannot be
    drawn (malformed data) is logged and left out rather than failing the evaluation.
    """
    import matplotlib

    matplotlib.use("Agg")
    builders: dict[str, Callable[[dict], bytes | None]] = {
        "deltas": _plot_deltas,
        "loss_curve": _plot_loss_curve,
        "confusion": _plot_confusion,
        "per_dimension": _plot_per_dimension,
    }
    plots = {}
    for name, build in builders.items():
        try:
            png = build(results)
        except Exception:
            logger.exception("could not draw the %s plot; the report goes on without it", name)
            continue
        if png:
            plots[name] = png
    return plots


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", facecolor="white")
        return buffer.getvalue()
    finally:
        plt.close(figure)


_DELTA_UNITS = {  # kind -> (factor, axis label)
    "rate": (100.0, "percentage points"),
    "score": (1.0, "points (0-100)"),
    "error": (1.0, "error"),
    "seconds": (1000.0, "milliseconds"),
    "number": (1.0, "value"),
}
_VERDICT_COLOURS = {"better": "#1a7f37", "worse": "#c62828"}


def _delta_points(results: dict) -> dict[str, list[dict[str, Any]]]:
    """Comparable rows with a delta, grouped by unit, labelled by metric (and set when there are several)."""
    comparison = as_dict(results.get("comparison"))
    several = len(comparison) > 1
    groups: dict[str, list[dict[str, Any]]] = {}
    for set_name, rows in comparison.items():
        for row in as_list(rows):
            if not isinstance(row, dict) or as_number(row.get("delta")) is None or row.get("metric") is None:
                continue
            metric = str(row["metric"])
            higher = row.get("higher_is_better")
            higher = (not lower_is_better(metric)) if higher is None else bool(higher)
            label = f"{metric} ({set_name})" if several else metric
            groups.setdefault(metric_kind(metric), []).append(
                {
                    "label": label + ("" if higher else "  [lower is better]"),
                    "lower": not higher,
                    "delta": as_number(row["delta"]),
                    "low": as_number(row.get("ci_low")),
                    "high": as_number(row.get("ci_high")),
                    "verdict": verdict(row["delta"], row.get("ci_low"), row.get("ci_high"), higher),
                }
            )
    return groups


def _plot_deltas(results: dict) -> bytes | None:
    groups = _delta_points(results)
    if not groups:
        return None
    import matplotlib.pyplot as plt

    kinds = [k for k in _DELTA_UNITS if k in groups]
    sizes = [len(groups[k]) for k in kinds]
    fig, axes = plt.subplots(
        len(kinds),
        1,
        figsize=(8, 1.0 + 0.34 * sum(sizes) + 0.9 * len(kinds)),
        squeeze=False,
        gridspec_kw={"height_ratios": [n + 1.2 for n in sizes]},
    )
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        factor, unit = _DELTA_UNITS[kind]
        points = groups[kind]
        ys = list(range(len(points)))[::-1]
        for y, p in zip(ys, points, strict=True):
            delta = p["delta"] * factor
            err = None
            if p["low"] is not None and p["high"] is not None:
                err = [[max(0.0, delta - p["low"] * factor)], [max(0.0, p["high"] * factor - delta)]]
            colour = _VERDICT_COLOURS.get(p["verdict"], "#6e7781")
            ax.errorbar([delta], [y], xerr=err, fmt="D" if p["lower"] else "o", color=colour, capsize=3)
        ax.axvline(0, color="#444", linewidth=1)
        low, high = ax.get_xlim()
        pad = 0.05 * (high - low)
        ax.set_xlim(min(low, -pad), max(high, pad))  # zero never sits on the frame
        ax.set_yticks(ys, [p["label"] for p in points])
        ax.set_ylim(-0.7, len(points) - 0.3)
        ax.set_xlabel(f"candidate - baseline ({unit})")
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_title("Change against the baseline, 95% intervals (green better, red worse)")
    fig.tight_layout()
    return _png(fig)


def _plot_loss_curve(results: dict) -> bytes | None:
    training = as_dict(results.get("training"))
    steps = [
        h
        for h in as_list(training.get("loss_history"))
        if isinstance(h, dict) and as_number(h.get("loss")) is not None
    ]
    epochs = [
        e
        for e in as_list(training.get("epoch_history"))
        if isinstance(e, dict) and as_number(e.get("epoch")) is not None
    ]
    if not steps and not any(as_number(e.get("val_loss")) is not None for e in epochs):
        return None
    import matplotlib.pyplot as plt

    by_epoch = all(as_number(h.get("epoch")) is not None for h in steps)
    if by_epoch:
        train_x = [float(h["epoch"]) for h in steps]
        epoch_x = [float(e["epoch"]) for e in epochs]
    else:  # no epoch on the logged steps: place epoch ends evenly along the steps
        train_x = [float(h.get("step") or i + 1) for i, h in enumerate(steps)]
        last_epoch = max((float(e["epoch"]) for e in epochs), default=1.0) or 1.0
        epoch_x = [float(e["epoch"]) * max(train_x, default=1.0) / last_epoch for e in epochs]
    fig, ax = plt.subplots(figsize=(8, 4))
    if steps:
        ax.plot(
            train_x,
            [float(h["loss"]) for h in steps],
            color="#4c78a8",
            alpha=0.6,
            linewidth=1,
            label="training loss (per logged step)",
        )
    for key, style, label in (
        ("train_loss", "--s", "training loss (epoch mean)"),
        ("val_loss", "-o", "validation loss"),
    ):
        points = [(x, as_number(e.get(key))) for x, e in zip(epoch_x, epochs, strict=True)]
        points = [(x, y) for x, y in points if y is not None]
        if points:
            colour = "#e45756" if key == "val_loss" else "#4c78a8"
            ax.plot(*zip(*points, strict=True), style, color=colour, label=label)
    best = as_number(training.get("best_epoch"))
    if best is not None and by_epoch:
        ax.axvline(best, color="#888", linestyle=":", label=f"best epoch ({best:g})")
    ax.set_xlabel("epoch" if by_epoch else "step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss per step, validation loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def confusion_subset(
    labels: Sequence[Any], matrix: Sequence[Sequence[Any]], limit: int = MAX_CONFUSION_LABELS
) -> tuple[list[str], Any, str]:
    """(labels, matrix, title) to draw: all labels, or the `limit` with the most off-diagonal errors
    (as true label plus as prediction), kept in their original order."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not fit {n} labels")
    counts = np.nan_to_num(counts)
    if n <= limit:
        return [str(label) for label in labels], counts, PLOT_TITLES["confusion"]
    off = counts - np.diag(np.diag(counts))
    errors = off.sum(axis=0) + off.sum(axis=1)
    keep = sorted(sorted(range(n), key=lambda i: (-errors[i], i))[:limit])
    title = f"{PLOT_TITLES['confusion']}: the {limit} of {n} labels with the most errors"
    return [str(labels[i]) for i in keep], counts[np.ix_(keep, keep)], title


def _plot_confusion(results: dict) -> bytes | None:
    confusion = as_dict(results.get("confusion"))
    if not as_list(confusion.get("labels")) or not as_list(confusion.get("matrix")):
        return None
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import PowerNorm

    labels, counts, title = confusion_subset(confusion["labels"], confusion["matrix"])
    n = len(labels)
    side = max(4.5, 0.3 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    top = max(1.0, float(counts.max()))
    image = ax.imshow(counts, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=top))
    ticks = np.unique(np.round(np.linspace(0, math.sqrt(top), 5) ** 2))  # even on the square-root scale
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="examples", ticks=ticks)
    font = 9 if n <= 15 else 7
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 12:
        middle = counts.max() / 2
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if counts[i, j] > middle else "black"
                    ax.text(j, i, f"{counts[i, j]:g}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_title(title, fontsize=10 if n > 15 else 11)
    fig.tight_layout()
    return _png(fig)


def _plot_per_dimension(results: dict) -> bytes | None:
    per_dimension = {str(k): as_dict(v) for k, v in as_dict(results.get("per_dimension")).items()}
    if not any(as_number(v.get("candidate_mae")) is not None for v in per_dimension.values()):
        return None
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(per_dimension)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    for offset, key, label, colour in (
        (-0.2, "candidate_mae", "candidate", "#4c78a8"),
        (0.2, "baseline_mae", "baseline", "#bab0ac"),
    ):
        values = [as_number(per_dimension[name].get(key)) for name in names]
        if any(v is not None for v in values):
            ax.bar(
                x + offset, [np.nan if v is None else v for v in values], width=0.4, label=label, color=colour
            )
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("MAE (lower is better)")
    ax.set_title(PLOT_TITLES["per_dimension"])
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)
