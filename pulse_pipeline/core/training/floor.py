"""The frozen-encoder floor of a classification family: what no fine-tune may be worse than.

A multinomial logistic regression (scikit-learn, L-BFGS) on the frozen encoder's mean-pooled,
normalized sentence embeddings, the same features the adapter's head reads. Its regularisation
`C` is chosen on the validation split from `C_GRID` (each fit starts from the previous one's
solution, so the grid costs little more than its largest C); with no validation split the
default C is used. On CLINC150 and HWU64 this plain classifier is within a point or two of
published fine-tuned encoders, and well above a nearest-centroid head: a fine-tune that does
not beat it has learnt nothing worth serving.

Pure numpy in and out (the embeddings are computed once by the caller); no torch here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

C_GRID = (1.0, 4.0, 16.0, 64.0)  # on unit-norm embeddings: from strong to weak regularisation
DEFAULT_C = 16.0
MAX_ITER = 300
FLOOR_WEIGHTS, FLOOR_JSON = "floor.npz", "floor.json"


@dataclass
class Floor:
    """A fitted floor: logits = embeddings @ weight.T + bias, one row per label in `labels` order."""

    labels: list[str]
    weight: Any  # float32 [labels, hidden]
    bias: Any  # float32 [labels]; labels never seen in train get a bias no logit reaches
    c: float
    val_accuracy: float | None  # on the validation split, with the chosen C (None: no validation)
    grid: list[dict[str, float]] = field(default_factory=list)  # [{"c", "val_accuracy"}]
    seconds: float = 0.0

    def logits(self, x: Any) -> Any:
        return x @ self.weight.T + self.bias

    def predict(self, x: Any) -> list[str]:
        return [self.labels[i] for i in self.logits(x).argmax(1)]

    def probabilities(self, x: Any) -> Any:
        import numpy as np

        z = self.logits(x)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def save(self, folder: Path) -> None:
        """Into `folder` (a training's work folder): the weights and what describes them."""
        import numpy as np

        np.savez(folder / FLOOR_WEIGHTS, weight=self.weight, bias=self.bias)
        (folder / FLOOR_JSON).write_text(json.dumps({**self.describe(), "labels": self.labels}) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Floor | None:
        """The floor saved in `folder`, or None."""
        import numpy as np

        if not (folder / FLOOR_JSON).is_file():
            return None
        meta = json.loads((folder / FLOOR_JSON).read_text())
        with np.load(folder / FLOOR_WEIGHTS) as arrays:
            weight, bias = arrays["weight"], arrays["bias"]
        return cls(
            meta["labels"], weight, bias, meta["c"], meta["val_accuracy"], meta["grid"], meta["seconds"]
        )

    def describe(self) -> dict[str, Any]:
        """What the adapter metadata and the report say about it (no weights)."""
        return {
            "kind": "logistic_regression",
            "c": self.c,
            "val_accuracy": self.val_accuracy,
            "grid": self.grid,
            "seconds": round(self.seconds, 1),
        }


def fit_floor(
    labels: list[str],
    train_x: Any,
    train_y: list[str],
    *,
    train_weights: Any = None,
    val_x: Any = None,
    val_y: list[str] | None = None,
    grid: tuple[float, ...] = C_GRID,
    seed: int = 0,
) -> Floor:
    """Fit the floor on the train embeddings, choosing C on validation when there is one.

    `labels` is the family's label order (the head's logit order); train labels outside it are an
    error. Ties in validation accuracy go to the smaller C (the simpler model)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    began = time.perf_counter()
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({y for y in train_y if y not in index})
    if unknown:
        raise ValueError(f"train labels not among the family's labels: {', '.join(unknown[:5])}")
    x = np.asarray(train_x, dtype=np.float32)
    y = np.array([index[v] for v in train_y])
    if len(set(y.tolist())) < 2:
        raise ValueError("the floor needs at least two labels in the train split")
    validating = val_x is not None and val_y is not None and len(val_y) > 0
    # warm_start: each C starts from the previous solution, so the grid costs little more than one fit.
    model = LogisticRegression(max_iter=MAX_ITER, warm_start=True, random_state=seed)
    tried: list[dict[str, float]] = []
    best: tuple[float, float, Any, Any] | None = None  # (accuracy, C, coef, intercept)
    for c in grid if validating else (DEFAULT_C,):
        model.set_params(C=c)
        model.fit(x, y, sample_weight=train_weights)
        if not validating:
            best = (float("nan"), c, model.coef_.copy(), model.intercept_.copy())
            break
        vy = np.array([index.get(v, -1) for v in val_y])  # type: ignore[union-attr]
        accuracy = float((model.predict(np.asarray(val_x, dtype=np.float32)) == vy).mean())
        tried.append({"c": c, "val_accuracy": round(accuracy, 6)})
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model.coef_.copy(), model.intercept_.copy())
    assert best is not None
    accuracy, c, coef, intercept = best
    weight = np.zeros((len(labels), x.shape[1]), dtype=np.float32)
    bias = np.full(len(labels), -1e4, dtype=np.float32)  # a label never seen in train is never predicted
    if len(model.classes_) == 2:  # binary: one logit, for the second class; the first's is 0
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    weight[model.classes_] = coef
    bias[model.classes_] = intercept
    return Floor(
        labels=list(labels),
        weight=weight,
        bias=bias,
        c=c,
        val_accuracy=None if not validating else accuracy,
        grid=tried,
        seconds=time.perf_counter() - began,
    )
