"""Heads on a sentence encoder for classification and regression families.

The encoder (all-MiniLM-L6-v2 for the built-in `minilm-l6`) was trained for mean-pooled,
normalized sentence embeddings, so the heads read exactly that, not the [CLS] pooler that
`AutoModelForSequenceClassification` would use (its pooler was never trained for these
weights; measured on CLINC150 that costs several points of accuracy, see
../shared/data/clinc150/README.md):

- classification, `kind: cosine` (what the recipe fine-tunes): cosine similarity between the
  embedding and one learned vector per label, times a learned scale (a "cosine classifier");
  logits [B, labels].
- classification, `kind: linear`: logits = W x + b, the frozen-encoder floor's logistic
  regression (floor.py), published when no fine-tuned epoch beats it on validation.
- `SentenceRegressor`: a linear map of the embedding to one value per dimension, read in
  [0, 1] of the family's score range; predictions [B, dimensions] in that range.

The head is a module named `head`, saved with the adapter through peft's `modules_to_save`;
`head_config.json` in the adapter folder says which head and its labels or dimensions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

HEAD_CONFIG = "head_config.json"


@dataclass(frozen=True)
class HeadConfig:
    task: str  # "classification" or "regression"
    hidden_size: int
    labels: list[str] = field(default_factory=list)  # classification, in logit order
    dimensions: list[str] = field(default_factory=list)  # regression, in output order
    score_range: tuple[float, float] = (0.0, 1.0)  # regression: what 0 and 1 of the head mean
    kind: str = "cosine"  # classification: "cosine", or "linear" (the floor); absent in older adapters

    def save(self, folder: Path) -> None:
        (folder / HEAD_CONFIG).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> HeadConfig:
        raw = json.loads((folder / HEAD_CONFIG).read_text())
        raw["score_range"] = tuple(raw["score_range"])
        return cls(**raw)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states where attention_mask is 1, L2-normalized: [B, T, H] -> [B, H]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    pooled = summed / mask.sum(dim=1).clamp_min(1e-9)
    return nn.functional.normalize(pooled, dim=-1)


class CosineHead(nn.Module):
    def __init__(self, hidden_size: int, n_labels: int, scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_labels, hidden_size) * 0.02)
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        prototypes = nn.functional.normalize(self.weight, dim=-1)
        return self.log_scale.exp() * embedding @ prototypes.T

    @torch.no_grad()
    def init_from_means(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Start each label's vector at the mean embedding of its examples (labels with none keep theirs)."""
        for k in labels.unique().tolist():
            self.weight[k] = embeddings[labels == k].mean(dim=0)


class SentenceModel(nn.Module):
    """An encoder, mean pooling and a head. `forward` returns the head's output [B, n]."""

    def __init__(self, encoder: nn.Module, head_config: HeadConfig):
        super().__init__()
        self.encoder = encoder
        self.head_config = head_config
        self.config = encoder.config  # peft reads the base model's config
        if head_config.task == "classification" and head_config.kind == "linear":
            self.head: nn.Module = nn.Linear(head_config.hidden_size, len(head_config.labels))
        elif head_config.task == "classification":
            self.head = CosineHead(head_config.hidden_size, len(head_config.labels))
        else:
            self.head = nn.Linear(head_config.hidden_size, len(head_config.dimensions))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> Any:  # peft probes for it
        raise NotImplementedError("a sentence model does not generate")


def build_sentence_model(
    encoder_path: Path | str, head_config: HeadConfig, dtype: Any = None
) -> SentenceModel:
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(encoder_path, dtype=dtype or torch.float32, add_pooling_layer=False)
    return SentenceModel(encoder, head_config)
