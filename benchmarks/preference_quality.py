"""Preference quality: does DPO or KTO after SFT make the adapter prefer on-format answers more often
than the SFT adapter alone?

Run from the project root with the project's venv:

    .venv/bin/python benchmarks/preference_quality.py [--model smollm2-135m|tiny|PATH] [--pairs 120]
        [--heldout 150] [--seed 0] [--sft-noise 0.25] [--generate 40] [--threads N] [--smoke] [--json]

The task is the call-analysis family's (pulse.yaml): its system prompt ("answer with one JSON object
and nothing else") and its call_correction prompt over a generated call transcript. The chosen
answer is the JSON object with the five fields the prompt asks for (sentiment, quality 1-10, topics,
compliance, summary); the rejected one says the same things off format, one of six ways drawn at
random: prose, renamed keys, a missing field, text around the object, a Markdown code fence, or
wrong value types. Train and held-out prompts share nothing but the label space: their companies,
products, customers, agents and the customers' wording come from disjoint pools.

The SFT data is the train prompts' answers as a production log holds them: a share (`--sft-noise`,
0.25) of them are off format (a fresh draw of the same six kinds), as answers approved before the
format rule was enforced are: SFT learns the format imperfectly, as it does from real logs, which is
the situation the preference stage is for (`--sft-noise 0` gives clean SFT data). The DPO data is every train prompt's (chosen,
rejected) pair; the KTO data every chosen answer as desirable and the rejected answers of half the
train prompts as undesirable (thumbs-down are rarer than thumbs-up), weighted by
`core.preferences.kto_weights`. A tenth of the train prompts is the validation split (the recipe's
best epoch, TRL's end-of-stage scores); the held-out prompts are used only to score.

Systems, all on the same base model and data, with the pipeline's defaults for chat families
(config.py: LoRA r=16, SFT 3 epochs at lr 1e-4, preference stage beta 0.1, 1 epoch at lr 5e-5),
max_length 512 (no example is truncated: the script checks):

- SFT only: `recipe.train` with objective sft.
- SFT, then DPO / SFT, then KTO: `preference.train_preferences` on a copy of that same SFT adapter
  (what `train` does for objective sft_then_dpo / sft_then_kto after its own, identical, SFT run:
  SFT runs once, so the comparison is free of SFT's run-to-run noise). Its train seconds are the
  SFT's plus the stage's.
- the base model without an adapter, for scale.

Metrics on the held-out pairs, each completion scored as the sum of its tokens' log-probabilities
given the prompt rendered with the tokenizer's chat template (completion tokens only, the end-of-turn
token included): the win rate (the share of pairs where the chosen completion scores higher than the
rejected one) with a Wilson 95 % interval; its difference from SFT only with a paired bootstrap
interval; the mean margin (chosen minus rejected, in nats) with a bootstrap interval; and format
adherence, the share of greedy answers to `--generate` held-out prompts that are exactly one JSON
object with the five fields and the right types. Nothing is tuned on the held-out prompts.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".pulse" / "bench-models"
FAMILY = "call-analysis"
MAX_LENGTH = 512  # above every example under both tokenizers: nothing is truncated (checked)
BOOTSTRAP = 2000
FIELDS = ("sentiment", "quality", "topics", "compliance", "summary")
SMOKE = {"pairs": 40, "heldout": 24, "generate": 8}

# -- the task ------------------------------------------------------------------------------------

# Disjoint pools: train prompts draw from the first, held-out prompts from the second.
POOLS = {
    "train": {
        "companies": ("Northwind Telecom", "Brightline Energy", "Oakridge Bank", "Cobalt Insurance"),
        "products": (
            "fibre broadband plan",
            "smart thermostat",
            "credit card",
            "home insurance policy",
            "mobile contract",
            "electric car charger",
            "savings account",
            "travel insurance",
        ),
        "customers": ("Maria Lopez", "James Carter", "Aisha Khan", "Tom Becker", "Li Wei", "Sofia Rossi"),
        "agents": ("Daniel", "Priya", "Marcus", "Elena"),
    },
    "heldout": {
        "companies": ("Harbor Water", "Summit Airlines", "Greenfield Grocers", "Vertex Software"),
        "products": (
            "water meter",
            "frequent flyer account",
            "grocery delivery subscription",
            "laptop licence",
            "checked baggage claim",
            "loyalty card",
            "annual software plan",
            "gift voucher",
        ),
        "customers": ("Noah Fischer", "Hannah Okafor", "Ravi Patel", "Emma Nilsson", "Kenji Sato"),
        "agents": ("Olivia", "Samuel", "Fatima", "Jonas"),
    },
}
# Scenarios: the topics, and the customer's complaint worded two ways (train uses the first,
# held-out the second), with the short form the summary uses.
SCENARIOS = (
    (
        ("billing", "refund"),
        (
            "I was charged twice for my {product} this month.",
            "my bank statement shows two payments for the {product}.",
        ),
        "a double charge",
    ),
    (
        ("delivery",),
        (
            "the {product} I ordered still has not arrived after two weeks.",
            "nothing has been delivered for my {product} and it is long overdue.",
        ),
        "a late delivery",
    ),
    (
        ("account access",),
        (
            "I cannot log in to manage my {product} any more.",
            "the website keeps rejecting my password for the {product}.",
        ),
        "a login problem",
    ),
    (
        ("cancellation", "retention"),
        (
            "I want to cancel my {product}, it is too expensive.",
            "please close my {product}, I found a cheaper option.",
        ),
        "a cancellation",
    ),
    (
        ("warranty", "replacement"),
        ("my {product} stopped working after a month.", "the {product} is faulty and I want it replaced."),
        "a faulty product",
    ),
    (
        ("pricing", "upgrade"),
        (
            "I would like to upgrade my {product} but the price is unclear.",
            "what would a better tier of the {product} cost me?",
        ),
        "an upgrade question",
    ),
    (
        ("service outage",),
        (
            "my {product} has been down since yesterday morning.",
            "the {product} has not worked at all for a day now.",
        ),
        "an outage",
    ),
)
OUTCOMES = (  # sentiment, the agent's closing replies, the summary's ending, quality range
    ("positive", ("Done, it is fixed and you will get an email.", "Sorted: I have fixed it now."),
     "fixed on the call", (8, 10)),
    ("neutral", ("I have opened a ticket; expect a call within two days.", "A specialist will call you back."),
     "ticket opened", (5, 7)),
    ("negative", ("Nothing I can do, you will have to wait.", "That is not my department, sorry."),
     "not helped", (2, 4)),
)  # fmt: skip
KEY_RENAMES = {
    "sentiment": ("mood", "tone"),
    "quality": ("score", "rating"),
    "topics": ("tags", "topic"),
    "compliance": ("compliant", "is_compliant"),
    "summary": ("notes", "description"),
}
REJECTIONS = ("prose", "wrong keys", "missing field", "extra text", "code fence", "wrong types")


@dataclass(frozen=True)
class Call:
    transcript: str
    answer: dict[str, Any]  # the five fields


def make_call(rng: random.Random, pool: str) -> Call:
    p = POOLS[pool]
    company, product = rng.choice(p["companies"]), rng.choice(p["products"])
    customer, agent = rng.choice(p["customers"]), rng.choice(p["agents"])
    topics, complaints, short = rng.choice(SCENARIOS)
    sentiment, replies, ending, (lo, hi) = rng.choice(OUTCOMES)
    verified = rng.random() < 0.7  # compliance: the agent verified the caller before acting
    check = "I have verified your identity. " if verified else ""
    complaint = complaints[0 if pool == "train" else 1].format(product=product)
    lines = [
        f"Agent ({agent}, {company}): How can I help?",
        f"Customer ({customer}): {complaint[0].upper()}{complaint[1:]}",
        f"Agent: {check}{rng.choice(replies)}",
    ]
    quality = rng.randint(lo, hi) - (0 if verified else 1)
    answer = {
        "sentiment": sentiment,
        "quality": max(1, quality),
        "topics": list(topics),
        "compliance": verified,
        "summary": f"{customer}: {short}, {product}; {ending}.",
    }
    return Call("\n".join(lines), answer)


def on_format(answer: dict[str, Any]) -> str:
    return json.dumps(answer)


def off_format(rng: random.Random, answer: dict[str, Any], kind: str) -> str:
    """The same content as `answer`, off the family's format in the way `kind` says."""
    a = dict(answer)
    if kind == "prose":
        verdict = "followed" if a["compliance"] else "did not follow"
        return rng.choice((
            f"The customer's sentiment was {a['sentiment']} and I would rate the call {a['quality']} out of 10. "
            f"Topics: {', '.join(a['topics'])}. The agent {verdict} the verification script. {a['summary']}",
            f"Sentiment: {a['sentiment']}\nQuality: {a['quality']}/10\nTopics: {', '.join(a['topics'])}\n"
            f"Compliance: {'yes' if a['compliance'] else 'no'}\nSummary: {a['summary']}",
            f"{a['summary']} Overall a {a['sentiment']} call ({a['quality']}/10) about {' and '.join(a['topics'])}; "
            f"the agent {verdict} the verification script.",
        ))  # fmt: skip
    if kind == "wrong keys":
        for key in rng.sample(FIELDS, rng.randint(1, 2)):
            new = rng.choice(KEY_RENAMES[key])
            a = {(new if k == key else k): v for k, v in a.items()}
        return json.dumps(a)
    if kind == "missing field":
        del a[rng.choice(FIELDS)]
        return json.dumps(a)
    if kind == "extra text":
        if rng.random() < 0.5:
            return rng.choice(
                ("Here is the analysis:\n", "Sure! ", "Analysis of the call:\n\n")
            ) + json.dumps(a)
        return json.dumps(a) + rng.choice((
            "\nLet me know if you need anything else.",
            "\n\nNote: the transcript is short, so the quality score is approximate.",
        ))  # fmt: skip
    if kind == "code fence":
        return "```json\n" + json.dumps(a, indent=2) + "\n```"
    if kind == "wrong types":
        changes = rng.sample(("quality", "compliance", "topics"), rng.randint(1, 2))
        if "quality" in changes:
            a["quality"] = f"{a['quality']}/10"
        if "compliance" in changes:
            a["compliance"] = "yes" if a["compliance"] else "no"
        if "topics" in changes:
            a["topics"] = ", ".join(a["topics"])
        return json.dumps(a)
    raise ValueError(kind)


def follows_format(text: str) -> bool:
    """Exactly one JSON object with the five fields and their types, nothing around it."""
    try:
        a = json.loads(text.strip())
    except ValueError:
        return False
    return (
        isinstance(a, dict)
        and set(a) == set(FIELDS)
        and a["sentiment"] in ("positive", "neutral", "negative")
        and isinstance(a["quality"], int) and not isinstance(a["quality"], bool) and 1 <= a["quality"] <= 10
        and isinstance(a["topics"], list) and bool(a["topics"]) and all(isinstance(t, str) for t in a["topics"])
        and isinstance(a["compliance"], bool)
        and isinstance(a["summary"], str) and bool(a["summary"].strip())
    )  # fmt: skip


@dataclass
class Task:
    family: Any
    train_sft: list[dict[str, Any]]  # the snapshot's export shape
    val_sft: list[dict[str, Any]]
    dpo: dict[str, list[dict[str, Any]]]  # by split, as TRL reads them
    kto: dict[str, list[dict[str, Any]]]
    kto_weights: tuple[float, float]
    heldout: list[dict[str, Any]]  # prompt (messages), chosen, rejected (texts), kind


def build_task(pairs: int, heldout: int, seed: int, sft_noise: float) -> Task:
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.core.preferences import kto_weights

    family = load_config(ROOT / "pulse.yaml").family(FAMILY)
    system, template = family.prompts["system"], family.prompts["call_correction"]
    rng = random.Random(seed)

    def prompt(call: Call) -> list[dict[str, str]]:
        return [{"role": "system", "content": system},
                {"role": "user", "content": template.format(transcript=call.transcript)}]  # fmt: skip

    def assistant(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    n_val = max(2, pairs // 10)
    train_sft, val_sft = [], []
    dpo: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    kto: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for i in range(pairs):
        split = "val" if i < n_val else "train"
        call = make_call(rng, "train")
        chosen = on_format(call.answer)
        rejected = off_format(rng, call.answer, rng.choice(REJECTIONS))
        logged = chosen if rng.random() >= sft_noise else off_format(rng, call.answer, rng.choice(REJECTIONS))
        example = {"id": f"pref-{i}", "messages": prompt(call) + assistant(logged), "weight": 1.0}
        (val_sft if split == "val" else train_sft).append(example)
        dpo[split].append(
            {"prompt": prompt(call), "chosen": assistant(chosen), "rejected": assistant(rejected)}
        )
        kto[split].append({"prompt": prompt(call), "completion": assistant(chosen), "label": True})
        if rng.random() < 0.5 or split == "val":  # thumbs-down are rarer than thumbs-up (val: balanced)
            kto[split].append({"prompt": prompt(call), "completion": assistant(rejected), "label": False})
    good = sum(r["label"] for r in kto["train"])
    weights = kto_weights(good, len(kto["train"]) - good)
    held = []
    for _ in range(heldout):
        call = make_call(rng, "heldout")
        kind = rng.choice(REJECTIONS)
        held.append({"prompt": prompt(call), "chosen": on_format(call.answer),
                     "rejected": off_format(rng, call.answer, kind), "kind": kind})  # fmt: skip
    return Task(family, train_sft, val_sft, dpo, kto, weights, held)


# -- training ------------------------------------------------------------------------------------


def training_job(task: Task, base: Any, work: Path, objective: str, seed: int, **overrides: Any) -> Any:
    from pulse_pipeline.core.training.config import resolve_training_config
    from pulse_pipeline.core.training.preference import PreferenceData
    from pulse_pipeline.core.training.recipe import TrainingJob

    config = resolve_training_config(
        "chat_sft", task.family.training,
        {"objective": objective, "max_length": MAX_LENGTH, "seed": seed, **overrides},
    )  # fmt: skip
    preferences = PreferenceData(task.dpo, task.kto, *task.kto_weights)
    return TrainingJob(
        task.family, config, f"bench-{seed}", task.train_sft, task.val_sft, base, work, None, preferences
    )


def train_systems(task: Task, base: Any, work: Path, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """{system: (adapter folder, train seconds, record)}: SFT once, then each preference stage on a
    copy of its adapter."""
    from pulse_pipeline.core.training.preference import train_preferences
    from pulse_pipeline.core.training.recipe import TrainingResult, train

    started = time.perf_counter()
    sft = train(training_job(task, base, work / "sft", "sft", seed, **overrides))
    sft_seconds = time.perf_counter() - started
    systems = {
        "SFT only": (
            sft.folder,
            sft_seconds,
            {"best_validation_loss": sft.metadata.get("best_validation_loss")},
        )
    }
    for name, objective in (("SFT, then DPO", "sft_then_dpo"), ("SFT, then KTO", "sft_then_kto")):
        folder = work / objective / "adapter"
        shutil.copytree(sft.folder, folder)
        start = TrainingResult(folder, copy.deepcopy(sft.metadata))
        job = training_job(task, base, work / objective, objective, seed, **overrides)
        started = time.perf_counter()
        result = train_preferences(job, start)
        record = result.metadata["preference"]
        systems[name] = (
            result.folder,
            sft_seconds + time.perf_counter() - started,
            {k: record[k] for k in ("steps", "first_loss", "final_loss", "validation", "train_examples")}
            | ({"weights": [record["desirable_weight"], record["undesirable_weight"]]} if "desirable_weight" in record else {}),
        )  # fmt: skip
    return systems


def check_lengths(task: Task, base: Any) -> None:
    """Stop if any sequence would be truncated (TRL drops or cuts those; the comparison would not be fair)."""
    from pulse_pipeline.core.training.models import load_tokenizer

    tokenizer = load_tokenizer(base.path)
    rows = [(e["messages"][:-1], e["messages"][-1]["content"]) for e in task.train_sft + task.val_sft]
    rows += [
        (r["prompt"], r[k][0]["content"])
        for split in task.dpo.values()
        for r in split
        for k in ("chosen", "rejected")
    ]
    rows += [(h["prompt"], h[k]) for h in task.heldout for k in ("chosen", "rejected")]
    longest = max(len(completion_ids(tokenizer, p, t)[0]) for p, t in rows)
    if longest > MAX_LENGTH:
        raise SystemExit(
            f"{base.name}: the longest example has {longest} tokens, over max_length {MAX_LENGTH}"
        )


# -- scoring -------------------------------------------------------------------------------------


def completion_ids(tokenizer: Any, prompt: list[dict[str, str]], text: str) -> tuple[list[int], int]:
    """The prompt and completion's token ids as the chat template renders them, and where the
    completion starts."""
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    full = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": text}], tokenize=True, return_dict=True
    )
    head, full = list(head["input_ids"]), list(full["input_ids"])
    if full[: len(head)] != head:
        raise SystemExit("the chat template's rendering of the prompt is not a prefix of the conversation's")
    return full, len(head)


def sum_logprobs(
    model: Any, tokenizer: Any, rows: list[tuple[list[dict[str, str]], str]], batch: int = 16
) -> list[float]:
    """Each completion's summed token log-probability given its prompt: one forward pass over the
    whole conversation (the plain way; `pair_logprobs` is checked against it)."""
    import torch

    encoded = [completion_ids(tokenizer, p, t) for p, t in rows]
    out = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(encoded[i][0]))
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            width = max(len(encoded[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                seq = encoded[i][0]
                ids[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for r, i in enumerate(idx):
                seq, start = encoded[i]
                out[i] = float(logp[r, start - 1 : len(seq) - 1].sum())
    return out


def pair_logprobs(
    model: Any, tokenizer: Any, pairs: list[dict[str, Any]], batch: int = 8
) -> list[tuple[float, float]]:
    """(chosen, rejected) summed completion log-probabilities of each held-out pair: the prompt
    runs once (left-padded, its key/value cache repeated for the two completions), a third less
    work than scoring each conversation whole."""
    import torch

    pad = tokenizer.pad_token_id
    encoded = []
    for pair in pairs:
        (chosen, start), (rejected, start_r) = (
            completion_ids(tokenizer, pair["prompt"], pair[k]) for k in ("chosen", "rejected")
        )
        if chosen[:start] != rejected[:start_r]:
            raise SystemExit("the two completions of a pair do not share the rendered prompt")
        encoded.append((chosen[:start], chosen[start:], rejected[start_r:]))
    order = sorted(range(len(pairs)), key=lambda i: len(encoded[i][0]))
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(pairs)
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            heads = [encoded[i][0] for i in idx]
            width = max(map(len, heads))
            ids = torch.tensor([[pad] * (width - len(h)) + h for h in heads])
            mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads])
            first = model(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True
            )  # fmt: skip
            last = torch.log_softmax(
                first.logits[:, -1].float(), dim=-1
            )  # predicts each completion's first token
            cache = first.past_key_values
            cache.batch_repeat_interleave(2)  # rows: chosen 0, rejected 0, chosen 1, ...
            tails = [encoded[i][k] for i in idx for k in (1, 2)]
            c_width = max(map(len, tails))
            c_ids = torch.tensor([t + [pad] * (c_width - len(t)) for t in tails])
            c_mask = torch.tensor([[1] * len(t) + [0] * (c_width - len(t)) for t in tails])
            lengths = mask.sum(-1).repeat_interleave(2)
            second = model(
                input_ids=c_ids,
                attention_mask=torch.cat([mask.repeat_interleave(2, dim=0), c_mask], dim=1),
                position_ids=lengths[:, None] + torch.arange(c_width)[None, :],
                past_key_values=cache,
                use_cache=True,
            )
            logp = torch.log_softmax(second.logits[:, :-1].float(), dim=-1).gather(-1, c_ids[:, 1:, None])[
                ..., 0
            ]
            for r, i in enumerate(idx):
                scores = []
                for k in (0, 1):
                    row, tail = 2 * r + k, tails[2 * r + k]
                    scores.append(float(last[r, tail[0]] + logp[row, : len(tail) - 1].sum()))
                out[i] = (scores[0], scores[1])
    return out


def generate(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new: int, batch: int = 16
) -> list[tuple[str, bool]]:
    """Greedy answers, and whether each ended (an end-of-turn token before `max_new` tokens)."""
    import torch

    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    texts = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch):
            heads = [
                list(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
                for p in prompts[s : s + batch]
            ]  # fmt: skip
            width = max(map(len, heads))
            ids = torch.tensor(
                [[tokenizer.pad_token_id] * (width - len(h)) + h for h in heads]
            )  # left-padded
            mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads])
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                eos_token_id=end, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
            new = out[:, width:]
            ended = (new == end).any(dim=1).tolist()
            texts += zip(tokenizer.batch_decode(new, skip_special_tokens=True), ended, strict=True)
    return texts


def score(model: Any, tokenizer: Any, task: Task, n_generate: int) -> dict[str, Any]:
    pairs = pair_logprobs(model, tokenizer, task.heldout)
    check = task.heldout[:4]  # the shared-prompt scoring against the plain one
    plain = sum_logprobs(
        model, tokenizer, [(h["prompt"], h[k]) for h in check for k in ("chosen", "rejected")]
    )
    shared = [x for pair in pairs[: len(check)] for x in pair]
    if any(abs(a - b) > 1e-2 * max(1.0, abs(a)) for a, b in zip(plain, shared, strict=True)):
        raise SystemExit(f"shared-prompt scoring disagrees with the plain one: {shared} vs {plain}")
    out: dict[str, Any] = {
        "margins": [c - r for c, r in pairs],
        "chosen": [c for c, _ in pairs],
        "rejected": [r for _, r in pairs],
    }
    if n_generate:
        longest = max(
            len(a) - b for a, b in (completion_ids(tokenizer, h["prompt"], h["chosen"]) for h in task.heldout)
        )
        answers = generate(model, tokenizer, [h["prompt"] for h in task.heldout[:n_generate]], longest + 16)
        out["generations"] = [text for text, _ in answers]
        out["format_ok"] = [follows_format(text) for text, _ in answers]
        out["unfinished"] = [not ended for _, ended in answers]
    return out


# -- statistics ----------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap(values: Any, seed: int) -> tuple[float, float]:
    """Percentile 95 % interval of the mean of `values` (a paired difference when given one)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))].mean(axis=1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def summarise(
    name: str, scored: dict[str, Any], baseline: dict[str, Any] | None, task: Task, seed: int
) -> dict[str, Any]:
    import numpy as np

    margins = np.asarray(scored["margins"])
    wins = (margins > 0).astype(float)
    row: dict[str, Any] = {
        "system": name,
        "pairs": len(margins),
        "win_rate": float(wins.mean()),
        "win_rate_ci": wilson(int(wins.sum()), len(wins)),
        "mean_margin": float(margins.mean()),
        "mean_margin_ci": bootstrap(margins, seed),
        "mean_logp_chosen": float(np.mean(scored["chosen"])),
        "mean_logp_rejected": float(np.mean(scored["rejected"])),
        "by_kind": {
            kind: float(wins[[h["kind"] == kind for h in task.heldout]].mean())
            for kind in REJECTIONS if any(h["kind"] == kind for h in task.heldout)
        },
    }  # fmt: skip
    if baseline is not None:
        base = np.asarray(baseline["margins"])
        row["win_rate_vs_sft"] = float(wins.mean() - (base > 0).mean())
        row["win_rate_vs_sft_ci"] = bootstrap(wins - (base > 0), seed)
        row["margin_vs_sft"] = float((margins - base).mean())
        row["margin_vs_sft_ci"] = bootstrap(margins - base, seed)
    if "format_ok" in scored:
        ok = scored["format_ok"]
        row["format_adherence"] = sum(ok) / len(ok)
        row["format_adherence_ci"] = wilson(sum(ok), len(ok))
        row["generated"] = len(ok)
        row["unfinished"] = sum(scored["unfinished"]) / len(ok)  # still going at the token limit
        row["generations"] = scored["generations"]
        if baseline is not None and "format_ok" in baseline:
            diff = np.asarray(ok, dtype=float) - np.asarray(baseline["format_ok"], dtype=float)
            row["format_vs_sft"] = float(diff.mean())
            row["format_vs_sft_ci"] = bootstrap(diff, seed)
    return row


# -- the benchmark -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pulse_pipeline.core.training.base_models import resolve_base_model
    from pulse_pipeline.core.training.models import load_adapter

    base = resolve_base_model(args.model, CACHE)
    task = build_task(args.pairs, args.heldout, args.seed, args.sft_noise)
    check_lengths(task, base)
    overrides = {"epochs": 1} if args.smoke else {}
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        systems = train_systems(task, base, Path(tmp), args.seed, overrides)
        train_done = time.perf_counter()
        baseline = None
        loaded = None
        for name, (folder, seconds, record) in systems.items():
            scoring = time.perf_counter()
            loaded = load_adapter(folder)
            scored = score(loaded.model, loaded.tokenizer, task, args.generate)
            row = summarise(name, scored, baseline, task, args.seed)
            row.update(train_seconds=seconds, score_seconds=time.perf_counter() - scoring, record=record)
            rows.append(row)
            baseline = baseline or scored
        with loaded.model.disable_adapter():  # type: ignore[union-attr]
            scored = score(loaded.model, loaded.tokenizer, task, args.generate)  # type: ignore[union-attr]
        rows.insert(
            0, summarise("base model, no adapter", scored, baseline, task, args.seed) | {"train_seconds": 0.0}
        )
    return {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "model": args.model,
        "seed": args.seed,
        "train_pairs": len(task.dpo["train"]),
        "val_pairs": len(task.dpo["val"]),
        "heldout_pairs": len(task.heldout),
        "sft_examples": len(task.train_sft),
        "sft_off_format": sum(not follows_format(e["messages"][-1]["content"]) for e in task.train_sft),
        "kto_train": {
            "desirable": sum(r["label"] for r in task.kto["train"]),
            "undesirable": sum(not r["label"] for r in task.kto["train"]),
            "weights": list(task.kto_weights),
        },  # fmt: skip
        "rejection_kinds": {k: sum(h["kind"] == k for h in task.heldout) for k in REJECTIONS},
        "threads": torch.get_num_threads(),
        "training_seconds": round(train_done - started, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "versions": {p: _version(p) for p in ("torch", "transformers", "trl", "peft")},
        "results": rows,
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


def interval(ci: tuple[float, float], fmt: str) -> str:
    return f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def versus(row: dict[str, Any], key: str, fmt: str) -> str:
    """`row[key]` with its interval, or nothing (the SFT row has no difference from itself)."""
    return f"{fmt.format(row[key])} {interval(row[key + '_ci'], fmt)}" if key in row else ""


def print_table(report: dict[str, Any]) -> None:
    r = report
    print(f"Command: {r['command']}")
    print(
        f"{r['model']}, seed {r['seed']}: {r['train_pairs']} train pairs (+{r['val_pairs']} val), "
        f"{r['heldout_pairs']} held-out pairs; SFT on {r['sft_examples']} answers of which "
        f"{r['sft_off_format']} off format; KTO {r['kto_train']['desirable']} desirable / "
        f"{r['kto_train']['undesirable']} undesirable, weights {r['kto_train']['weights']}; "
        f"{r['threads']} torch threads; training {r['training_seconds'] / 60:.1f} min, "
        f"total {r['total_seconds'] / 60:.1f} min; load average {r['load_average']['before'][0]:.2f} before, "
        f"{r['load_average']['after'][0]:.2f} after"
    )
    print()
    print(
        "| system | win rate [95% CI] | vs SFT only [95% CI] | mean margin, nats [95% CI] | vs SFT only [95% CI] "
        "| format adherence [95% CI] | vs SFT only [95% CI] | train s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in r["results"]:
        adherence = (
            f"{row['format_adherence']:.2f} {interval(row['format_adherence_ci'], '{:.2f}')} (n={row['generated']})"
            if "format_adherence" in row else ""
        )  # fmt: skip
        print(
            f"| {row['system']} | {row['win_rate']:.3f} {interval(row['win_rate_ci'], '{:.3f}')} | "
            f"{versus(row, 'win_rate_vs_sft', '{:+.3f}')} | "
            f"{row['mean_margin']:+.1f} {interval(row['mean_margin_ci'], '{:+.1f}')} | {versus(row, 'margin_vs_sft', '{:+.1f}')} | "
            f"{adherence} | {versus(row, 'format_vs_sft', '{:+.2f}')} | {row['train_seconds']:.0f} |"
        )
    print()
    print(
        "Win rate by rejection kind (held-out pairs of that kind: "
        + ", ".join(f"{k} {n}" for k, n in r["rejection_kinds"].items())
        + "):"
    )
    print()
    print("| system | " + " | ".join(REJECTIONS) + " |")
    print("|---|" + "---:|" * len(REJECTIONS))
    for row in r["results"]:
        print(
            f"| {row['system']} | "
            + " | ".join(f"{row['by_kind'].get(k, math.nan):.2f}" for k in REJECTIONS)
            + " |"
        )
    print()
    print("What moved (held-out means, nats), and the greedy answers:")
    print()
    print(
        "| system | log-prob of chosen | log-prob of rejected | answers still going at the token limit | first answer |"
    )
    print("|---|---:|---:|---:|---|")
    for row in r["results"]:
        first = (
            json.dumps(row["generations"][0])[:120].replace("|", "\\|").replace("`", "'")
            if row.get("generations")
            else ""
        )
        unfinished = f"{row['unfinished']:.2f}" if "unfinished" in row else ""
        print(
            f"| {row['system']} | {row['mean_logp_chosen']:.1f} | {row['mean_logp_rejected']:.1f} | {unfinished} | "
            f"`{first}` |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="tiny, smollm2-135m (default; tiny with --smoke) or a model folder")
    parser.add_argument("--pairs", type=int, help="train-pool prompts, a tenth of them val (default 120)")
    parser.add_argument("--heldout", type=int, help="held-out pairs (default 150)")
    parser.add_argument(
        "--generate",
        type=int,
        help="held-out prompts answered greedily for format adherence (default 40; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data, training and bootstrap seed")
    parser.add_argument(
        "--sft-noise", type=float, default=0.25, help="share of off-format answers in the SFT data"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes and one SFT epoch, to check the script"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else {"pairs": 120, "heldout": 150, "generate": 40}
    args.model = args.model or ("tiny" if args.smoke else "smollm2-135m")
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.generate = min(args.generate, args.heldout)

    quiet_libraries()
    import torch

    torch.set_num_threads(args.threads)
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
