"""Small training sets in the snapshot's export shape, for the recipe's tests."""

from __future__ import annotations

import random
from typing import Any


def chat_examples(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Questions of varied length with a short, learnable answer; weights 0.5 and 1.0."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = i % 4
        question = f"Which queue handles case {k}?" + " Please check the account history." * rng.randint(0, 6)
        out.append(
            {
                "id": f"chat-{i}",
                "messages": [
                    {"role": "system", "content": "You route cases."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": f'{{"queue": "team {k}"}}'},
                ],
                "weight": 1.0 if i % 3 else 0.5,
            }
        )
    return out


INTENTS = {
    "transfer": ["move money to savings", "send cash to my brother", "transfer funds between accounts"],
    "balance": ["how much money do I have", "what is my account balance", "show my current balance"],
    "book_flight": ["book a flight to paris", "get me a plane ticket to rome", "reserve a seat on a flight"],
}


def intent_examples(n: int) -> list[dict[str, Any]]:
    labels = list(INTENTS)
    out = []
    for i in range(n):
        label = labels[i % 3]
        text = INTENTS[label][(i // 3) % 3]
        out.append({"id": f"intent-{i}", "text": f"{text} please {i}", "label": label, "weight": 1.0})
    return out


def score_examples(n: int, dimensions: int) -> list[dict[str, Any]]:
    """Longer texts score higher on every dimension."""
    out = []
    for i in range(n):
        quality = i % 5
        text = "A careful, sourced analysis with evidence. " * (quality + 1) + "Short note."
        out.append({"id": f"score-{i}", "text": text, "labels": [2.0 * quality] * dimensions, "weight": 1.0})
    return out


def preference_rows(n: int, *, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(DPO rows, KTO rows) as TRL reads them, on chat_examples' prompts: the answer in the
    family's JSON format is preferred to the same answer in prose."""
    dpo, kto = [], []
    for example in chat_examples(n, seed=seed):
        prompt = example["messages"][:2]
        good = example["messages"][2]["content"]
        bad = "It goes to " + good.split('"')[3] + ", I think."
        dpo.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
            }
        )
        kto.append({"prompt": prompt, "completion": [{"role": "assistant", "content": good}], "label": True})
        kto.append({"prompt": prompt, "completion": [{"role": "assistant", "content": bad}], "label": False})
    return dpo, kto
