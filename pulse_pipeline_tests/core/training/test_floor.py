"""The frozen-encoder floor: a logistic regression on embeddings, C chosen on validation."""

import numpy as np
import pytest

from pulse_pipeline.core.training.floor import C_GRID, fit_floor


def _blobs(n_per: int, labels: list[str], seed: int, spread: float = 0.6):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(len(labels), 16))
    x = np.vstack([c + spread * rng.normal(size=(n_per, 16)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [name for name in labels for _ in range(n_per)]


def test_the_floor_separates_what_is_separable_and_chooses_c_on_validation():
    labels = ["a", "b", "c", "unseen"]
    x, y = _blobs(40, labels[:3], seed=1)
    vx, vy = _blobs(20, labels[:3], seed=2)
    floor = fit_floor(labels, x, y, val_x=vx, val_y=vy)
    assert [row["c"] for row in floor.grid] == list(C_GRID)
    assert floor.val_accuracy == max(row["val_accuracy"] for row in floor.grid) > 0.9
    assert floor.c == next(r["c"] for r in floor.grid if r["val_accuracy"] == floor.val_accuracy)
    tx, ty = _blobs(30, labels[:3], seed=3)
    assert np.mean(np.array(floor.predict(tx)) == np.array(ty)) > 0.9
    assert "unseen" not in floor.predict(np.vstack([tx, -tx]))  # never predicts a label train lacks
    assert np.allclose(floor.probabilities(tx).sum(1), 1.0)
    assert floor.describe()["kind"] == "logistic_regression" and "weight" not in floor.describe()


def test_two_labels_give_two_logits_that_agree_with_scikit_learn():
    x, y = _blobs(30, ["no", "yes"], seed=4, spread=1.5)
    floor = fit_floor(["no", "yes"], x, y)
    from sklearn.linear_model import LogisticRegression

    reference = LogisticRegression(C=floor.c, max_iter=300).fit(x, [int(v == "yes") for v in y])
    assert floor.val_accuracy is None and floor.grid == []
    assert floor.predict(x) == [["no", "yes"][i] for i in reference.predict(x)]


def test_train_labels_outside_the_family_are_refused():
    x, y = _blobs(5, ["a", "b"], seed=5)
    with pytest.raises(ValueError, match="not among the family's labels: b"):
        fit_floor(["a"], x, y)
