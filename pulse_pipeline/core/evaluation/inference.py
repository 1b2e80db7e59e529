"""Inference for evaluation: the same examples through an adapter, or through its base model.

Chat families generate greedily in length-grouped, left-padded batches through peft; encoder
families take one forward pass. The base model of a chat family is the adapter's own model
with the adapter switched off. An encoder without an adapter has no trained head, so its base
model is the frozen encoder with a head fitted on the snapshot's train split: the family's
frozen-encoder floor, a logistic regression with C chosen on val (classification,
core/training/floor.py), or a ridge regression in closed form (regression).

Latency is each example's share of its batch's wall time on this machine (throughput
latency). With `PULSE_VLLM_URL` set, chat families answer through the vLLM server instead
(`VllmPredictor`), and latency is each request's own wall time there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pulse_pipeline.core.evaluation.sets import EvalExample


@dataclass
class Predictions:
    outputs: list[Any]  # generated text | label | scores per dimension
    latencies: list[float]  # seconds per example
    scores: list[float] | None = None  # classification: the top label's score (scale x cosine)


class AdapterPredictor:
    """Predictions of one adapter folder (`use_adapter=False`: of its base model)."""

    def __init__(
        self,
        loaded: Any,
        *,
        batch_size: int = 16,
        max_new_tokens: int = 256,
        max_length: int = 512,
        floor: Any = None,
    ):
        self.loaded = loaded  # training.models.LoadedAdapter
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self._base_head: Any = None
        self._trained_floor = floor  # the floor the recipe fitted and saved with the adapter, if any
        self.floor: Any = None  # classification: the floor, once fit_base_head ran

    @property
    def task(self) -> str:
        return self.loaded.task

    def predict(self, examples: list[EvalExample], *, use_adapter: bool = True) -> Predictions:
        if not examples:
            return Predictions([], [], [] if self.task == "classification" else None)
        if self.task == "chat_sft":
            return self._generate([e.input for e in examples], use_adapter)
        if use_adapter:
            return self._forward([e.input for e in examples])
        if self._base_head is None:
            raise ValueError("fit_base_head(train examples) first: an encoder has no head of its own")
        return self._base_forward([e.input for e in examples])

    # -- chat: batched greedy generation ---------------------------------------------------------

    def _generate(self, conversations: list[list[dict[str, str]]], use_adapter: bool) -> Predictions:
        import contextlib

        import torch

        model, tok = self.loaded.model, self.loaded.tokenizer
        prompts = [
            tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations
        ]
        lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        stop = [t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if isinstance(t, int)]
        outputs: list[str] = [""] * len(prompts)
        latencies = [0.0] * len(prompts)
        tok.padding_side = "left"
        tok.truncation_side = "left"  # as in training: a long prompt loses its start, never the question
        switch = contextlib.nullcontext() if use_adapter else model.disable_adapter()
        with torch.no_grad(), switch:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = tok(
                    [prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False,
                    truncation=True, max_length=self.max_length,
                )  # fmt: skip
                began = time.perf_counter()
                out = model.generate(
                    **batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                    eos_token_id=stop or None, pad_token_id=tok.pad_token_id,
                )  # fmt: skip
                share = (time.perf_counter() - began) / len(idx)
                new = out[:, batch["input_ids"].shape[1] :]
                for row, i in enumerate(idx):
                    outputs[i] = tok.decode(new[row], skip_special_tokens=True).strip()
                    latencies[i] = share
        return Predictions(outputs, latencies)

    # -- encoder families: one forward pass ------------------------------------------------------

    def _forward(self, texts: list[str]) -> Predictions:
        head = self.loaded.head
        latencies = []
        raw = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            began = time.perf_counter()
            raw.append(
                self.loaded.predict(chunk, max_length=self.max_length, batch_size=self.batch_size, raw=True)
            )
            latencies += [(time.perf_counter() - began) / len(chunk)] * len(chunk)
        import numpy as np

        values = np.concatenate(raw)
        if self.task == "classification":
            top = values.argmax(1)
            return Predictions([head.labels[i] for i in top], latencies, values.max(1).astype(float).tolist())
        return Predictions(values.astype(float).tolist(), latencies)

    def _embed(self, texts: list[str]) -> Any:
        """Mean-pooled embeddings of the frozen base encoder (the adapter switched off)."""
        import numpy as np
        import torch

        from pulse_pipeline.core.training.batching import collate_text, length_grouped_batches, text_features

        model, tok = self.loaded.model, self.loaded.tokenizer
        sentence_model = model.get_base_model()
        features = text_features(tok, texts, [0] * len(texts), [1.0] * len(texts), self.max_length)
        out = np.zeros((len(texts), self.loaded.head.hidden_size), dtype=np.float32)
        with torch.no_grad(), model.disable_adapter():
            for idx in length_grouped_batches([len(f) for f in features], 64, seed=0):
                b = collate_text([features[i] for i in idx], tok.pad_token_id)
                out[idx] = sentence_model.embed(b["input_ids"], b["attention_mask"]).numpy()
        return out

    def fit_base_head(
        self, train: list[EvalExample], val: list[EvalExample] | None = None, ridge: float = 1.0
    ) -> None:
        """The base model's head, from the train split: for classification the frozen-encoder floor
        (core/training/floor.py: a logistic regression, C chosen on `val`; the one the recipe
        fitted on the same split when the adapter carries it), for regression a ridge regression
        in closed form."""
        import numpy as np

        head = self.loaded.head
        if self.task == "classification" and self._trained_floor is not None:
            self._base_head = ("floor", None, self._trained_floor)
            self.floor = self._trained_floor
            return
        x = self._embed([e.input for e in train])
        if self.task == "classification":
            from pulse_pipeline.core.training.floor import fit_floor

            val = val or []
            floor = fit_floor(
                head.labels,
                x,
                [e.reference for e in train],
                val_x=self._embed([e.input for e in val]) if val else None,
                val_y=[e.reference for e in val] if val else None,
            )
            self._base_head = ("floor", None, floor)
            self.floor = floor
        else:
            lo, hi = head.score_range
            y = (np.array([e.reference for e in train], dtype=np.float64) - lo) / (hi - lo)
            xb = np.hstack([x, np.ones((len(x), 1))])
            w = np.linalg.solve(xb.T @ xb + ridge * np.eye(xb.shape[1]), xb.T @ y)
            self._base_head = ("ridge", (lo, hi), w)

    def _base_forward(self, texts: list[str]) -> Predictions:
        import numpy as np

        began = time.perf_counter()
        x = self._embed(texts)
        kind, meta, weights = self._base_head
        if kind == "floor":
            probabilities = weights.probabilities(x)
            outputs: list[Any] = [weights.labels[i] for i in probabilities.argmax(1)]
            scores = probabilities.max(1).astype(float).tolist()  # the top label's probability
        else:
            lo, hi = meta
            y = np.hstack([x, np.ones((len(x), 1))]) @ weights
            outputs, scores = (lo + (hi - lo) * np.clip(y, 0, 1)).tolist(), None
        share = (time.perf_counter() - began) / len(texts)
        return Predictions(outputs, [share] * len(texts), scores)


class VllmPredictor:
    """Chat answers through a vLLM server (`PULSE_VLLM_URL`): the version is loaded under its
    immutable serving name `<family>@<version>`; the base model is the server's own. Each call
    sends one model's requests and waits for them all: vLLM's CPU build can hand a base-model
    request an adapter's output when both share a batch, so the two never run at once."""

    task = "chat_sft"

    def __init__(self, server: Any, name: str, folder: Any, *, max_new_tokens: int, concurrency: int = 4):
        self.server = server  # core.serving.VllmServer
        self.name = name
        self.folder = folder
        self.max_new_tokens = max_new_tokens
        self.concurrency = concurrency

    def predict(self, examples: list[EvalExample], *, use_adapter: bool = True) -> Predictions:
        if use_adapter:
            self.server.load_adapter(self.name, self.folder)
            model = self.name
        else:
            model = self.server.base_model()
        answers = self.server.chat_many(
            model, [e.input for e in examples], max_tokens=self.max_new_tokens, concurrency=self.concurrency
        )
        return Predictions([text.strip() for text, _ in answers], [seconds for _, seconds in answers])
