"""Losses with per-example weights (a trainer's agreement weighs 0.5, a correction 1.0).

Chat families: token cross-entropy on the assistant's tokens only (labels -100 elsewhere),
each token weighted by its example's weight and normalized by the weighted token count, so
an example's pull on the adapter is its weight times its length, as in an unweighted
token-mean loss. Classification and regression: the weighted mean of per-example losses.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def weighted_causal_lm_loss(logits: Any, labels: Any, weights: Any) -> Any:
    """logits [B, T, V], labels [B, T] (IGNORE where not trained), weights [B] (one per example)
    or [B, T] (one per token, for packed rows holding several examples) -> scalar."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(shift_labels.shape)
    mask = (shift_labels != IGNORE).to(token_loss.dtype)
    weights = weights.to(token_loss.dtype)
    token_weight = mask * (weights[:, 1:] if weights.dim() == 2 else weights[:, None])
    return (token_loss * token_weight).sum() / token_weight.sum().clamp_min(1e-12)


def weighted_classification_loss(
    logits: Any, labels: Any, weights: Any, margin: Any = 0.0, label_smoothing: float = 0.0
) -> Any:
    """logits [B, C], labels [B] -> weighted mean cross-entropy; `margin` is taken off each
    example's true-label logit first (a large-margin loss: the true label must win by that much);
    `label_smoothing` spreads that share of each target over all labels."""
    import torch.nn.functional as F

    logits = logits.float()
    if margin:
        logits = logits - margin * F.one_hot(labels, logits.size(-1)).to(logits.dtype)
    per_example = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    w = weights.to(per_example.dtype)
    return (per_example * w).sum() / w.sum().clamp_min(1e-12)


def weighted_regression_loss(predictions: Any, targets: Any, weights: Any) -> Any:
    """predictions, targets [B, D] -> weighted mean over examples of the per-example MSE."""
    per_example = ((predictions.float() - targets.float()) ** 2).mean(dim=-1)
    w = weights.to(per_example.dtype)
    return (per_example * w).sum() / w.sum().clamp_min(1e-12)
