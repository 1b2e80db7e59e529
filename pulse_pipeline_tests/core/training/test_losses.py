import math

import pytest
import torch

from pulse_pipeline.core.training.losses import (
    IGNORE,
    weighted_causal_lm_loss,
    weighted_classification_loss,
    weighted_regression_loss,
)


def _ce(logits, target):
    """Cross-entropy by hand: log-sum-exp minus the target's logit."""
    return math.log(sum(math.exp(x) for x in logits)) - logits[target]


def test_weighted_causal_loss_equals_a_hand_computation():
    # 2 examples, 4 positions, vocabulary of 3. Position t predicts label t+1.
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0], [0.0, 0.0, 0.0]],
            [[1.0, 2.0, 3.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[IGNORE, IGNORE, 1, 2], [IGNORE, 2, 0, IGNORE]])
    weights = torch.tensor([0.5, 1.0])
    # example 0 trains positions 1->1 and 2->2; example 1 trains 0->2 and 1->0
    terms = [
        (0.5, _ce([0.0, 1.0, 0.0], 1)),
        (0.5, _ce([0.5, 0.5, 3.0], 2)),
        (1.0, _ce([1.0, 2.0, 3.0], 2)),
        (1.0, _ce([0.0, 0.0, 2.0], 0)),
    ]
    expected = sum(w * ce for w, ce in terms) / sum(w for w, _ in terms)
    assert weighted_causal_lm_loss(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)


def test_equal_weights_give_the_usual_token_mean():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[:, :2] = IGNORE
    usual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )
    for w in (1.0, 0.5):
        assert weighted_causal_lm_loss(logits, labels, torch.full((3,), w)).item() == pytest.approx(
            usual.item(), rel=1e-6
        )


def test_weighted_classification_and_regression_by_hand():
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0])
    weights = torch.tensor([1.0, 0.5])
    expected = (1.0 * _ce([1.0, 0.0], 0) + 0.5 * _ce([0.0, 3.0], 0)) / 1.5
    assert weighted_classification_loss(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    expected = (1.0 * (1.0 + 0.0) / 2 + 0.5 * (4.0 + 4.0) / 2) / 1.5
    assert weighted_regression_loss(pred, target, weights).item() == pytest.approx(expected, rel=1e-6)


def test_per_token_weights_of_a_packed_row_equal_per_example_weights():
    # The two examples of the hand computation above, packed into one row.
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0], [0.0, 0.0, 0.0]],
            [[1.0, 2.0, 3.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[IGNORE, IGNORE, 1, 2], [IGNORE, 2, 0, IGNORE]])
    padded = weighted_causal_lm_loss(logits, labels, torch.tensor([0.5, 1.0]))
    packed = weighted_causal_lm_loss(
        logits.reshape(1, 8, 3), labels.reshape(1, 8), torch.tensor([[0.5] * 4 + [1.0] * 4])
    )
    assert packed.item() == pytest.approx(padded.item(), rel=1e-6)


def test_a_margin_comes_off_the_true_label_only():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    labels = torch.tensor([0])
    plain = weighted_classification_loss(logits, labels, torch.ones(1))
    widened = weighted_classification_loss(logits, labels, torch.ones(1), margin=1.5)
    assert plain.item() == pytest.approx(_ce([2.0, 1.0, 0.0], 0), rel=1e-6)
    assert widened.item() == pytest.approx(_ce([0.5, 1.0, 0.0], 0), rel=1e-6)


def test_label_smoothing_mixes_in_the_mean_cross_entropy_over_all_labels():
    logits, eps = [2.0, 1.0, 0.0], 0.3
    smoothed = weighted_classification_loss(
        torch.tensor([logits]), torch.tensor([0]), torch.ones(1), label_smoothing=eps
    )
    by_hand = (1 - eps) * _ce(logits, 0) + eps * sum(_ce(logits, k) for k in range(3)) / 3
    assert smoothed.item() == pytest.approx(by_hand, rel=1e-6)
