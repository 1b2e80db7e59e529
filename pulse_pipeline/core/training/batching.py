"""Batches without pad-to-max: chat features with assistant-only labels, length-grouped
batches, and collation that pads to the longest example of each batch."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pulse_pipeline.core.training.losses import IGNORE


@dataclass(frozen=True)
class Features:
    input_ids: list[int]
    labels: list[int]  # IGNORE except on the assistant's tokens
    weight: float

    def __len__(self) -> int:
        return len(self.input_ids)


def chat_features(
    tokenizer: Any, messages: list[dict[str, str]], weight: float, max_length: int
) -> Features | None:
    """Tokenize with the chat template; train on the assistant's tokens only.

    Too long: the prompt's start is dropped first (the answer is what is trained); None when
    not even the answer fits.
    """
    if _GENERATION_TAG.search(tokenizer.chat_template or ""):
        out = _render(tokenizer, messages, return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    else:  # a template without {% generation %} tags (most models' own)
        ids = list(_render(tokenizer, messages)["input_ids"])
        mask = _assistant_mask_by_prefix(tokenizer, messages, ids)
    if not any(mask):
        raise ValueError("no assistant tokens to train on: the conversation has no assistant turn")
    if len(ids) > max_length:
        first = mask.index(1)
        cut = len(ids) - max_length
        if cut > first:
            return None
        ids, mask = ids[cut:], mask[cut:]
    return Features(ids, [t if m else IGNORE for t, m in zip(ids, mask, strict=True)], weight)


_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def _render(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)


def _assistant_mask_by_prefix(tokenizer: Any, messages: list[dict[str, str]], ids: list[int]) -> list[int]:
    """Mark each assistant turn as the tokens its rendering adds after the generation prompt:
    render the conversation up to the turn (with the prompt) and up to its end, and take the
    difference. Needs a template whose renderings of a conversation's start are a prefix of
    the whole, which chat templates are (a clear error otherwise)."""
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = list(_render(tokenizer, messages[:i], add_generation_prompt=True)["input_ids"])
        end = len(_render(tokenizer, messages[: i + 1])["input_ids"])
        if ids[: len(prompt)] != prompt:
            raise ValueError(
                "the chat template renders the start of a conversation differently from the whole; "
                "give the tokenizer a template with {% generation %} tags"
            )
        mask[len(prompt) : end] = [1] * (end - len(prompt))
    return mask


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int = 0, group: int = 50
) -> list[list[int]]:
    """Every index once, in batches of similar lengths, batch order shuffled (as Hugging Face's
    LengthGroupedSampler): shuffle, cut into mega-batches of `group` batches, sort each by
    length, cut into batches, shuffle the batches. Deterministic for (seed, epoch)."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def padded_width(longest: int, multiple: int = 1) -> int:
    return -(-longest // multiple) * multiple


def token_budget_batches(
    examples: Sequence[int], lengths: Sequence[int], budget: int, multiple: int = 1
) -> list[list[int]]:
    """`examples` (indices into `lengths`) cut, longest first, into micro-batches whose padded size
    (rows x the longest's width rounded up to `multiple`) stays within `budget` tokens; an example
    longer than the budget gets a micro-batch of its own."""
    out: list[list[int]] = []
    current: list[int] = []
    for i in sorted(examples, key=lambda i: -lengths[i]):
        width = padded_width(lengths[current[0]] if current else lengths[i], multiple)
        if current and (len(current) + 1) * width > budget:
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


def collate(batch: Sequence[Features], pad_id: int, multiple: int = 1) -> dict[str, Any]:
    """Pad to the longest example in this batch (right padding; the width rounded up to
    `multiple`), with weights alongside."""
    import torch

    width = padded_width(max(len(f) for f in batch), multiple)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, f in enumerate(batch):
        n = len(f)
        input_ids[row, :n] = torch.tensor(f.input_ids)
        labels[row, :n] = torch.tensor(f.labels)
        attention[row, :n] = 1
    weights = torch.tensor([f.weight for f in batch], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "weights": weights}


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Fraction of the tokens in padded batches that are padding."""
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / total if total else 0.0


def pack(batch: Sequence[Features]) -> dict[str, Any]:
    """One row holding the whole batch, no padding: position ids restart at each example, which
    transformers turns into a block-diagonal causal mask (no attention across examples) on SDPA
    and eager attention, and into variable-length kernels on flash attention. Each example's
    first label is dropped so no token learns to predict the next example's start."""
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    weights: list[float] = []
    for f in batch:
        ids += f.input_ids
        labels += [IGNORE, *f.labels[1:]]
        positions += range(len(f))
        weights += [f.weight] * len(f)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "weights": torch.tensor([weights], dtype=torch.float32),
    }


@dataclass(frozen=True)
class TextFeatures:
    """A classification or regression example: token ids and its target."""

    input_ids: list[int]
    target: int | list[float]  # label index, or scores scaled to [0, 1]
    weight: float

    def __len__(self) -> int:
        return len(self.input_ids)


def text_features(
    tokenizer: Any, texts: Sequence[str], targets: Sequence[Any], weights: Sequence[float], max_length: int
) -> list[TextFeatures]:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [TextFeatures(list(i), t, float(w)) for i, t, w in zip(encoded, targets, weights, strict=True)]


def collate_text(batch: Sequence[TextFeatures], pad_id: int, multiple: int = 1) -> dict[str, Any]:
    import torch

    width = padded_width(max(len(f) for f in batch), multiple)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, f in enumerate(batch):
        input_ids[row, : len(f)] = torch.tensor(f.input_ids)
        attention[row, : len(f)] = 1
    first = batch[0].target
    dtype = torch.long if isinstance(first, int) else torch.float32
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "targets": torch.tensor([f.target for f in batch], dtype=dtype),
        "weights": torch.tensor([f.weight for f in batch], dtype=torch.float32),
    }
