"""Preference data from feedback: DPO pairs and KTO examples for a chat family, built automatically.

Users rate answers, give thumbs and correct them; that is preference signal, not labels. From a
chat family's stored records (the same rows, prompts and PII redaction as its examples):

- **DPO pairs** (`chosen` better than `rejected` for one prompt):
  - a `feedback` with a `corrected_response`: the correction over the model's `response`
    (source `correction`);
  - a `call_correction` with `ai_output`: the corrected analysis over the AI's (`call_correction`;
    both as the sorted JSON the examples train on), when they differ;
  - several rated responses to one prompt: each over every one rated lower (`ratings`), up to
    `preferences.max_pairs_per_prompt` per prompt, highest-rated first.
- **KTO examples** (one completion, desirable or not) from feedback without a correction: a rating
  of at least `preferences.desirable_min_rating` (4) or a thumbs up is desirable, at most
  `undesirable_max_rating` (2) or a thumbs down undesirable, and 3 is left out (counted). The
  weights follow TRL's KTO advice: `desirable_weight * desirable / (undesirable_weight *
  undesirable)` should lie in [1, 4/3], so the smaller side is weighted up to meet the range.

Every row carries its prompt's group (`question:<normalized query>`, `call:<id>`), the key the
snapshot splits by, so a prompt's pairs stay in one split: no leak between train and test.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from pulse_pipeline.core.annotations import feedback_rating
from pulse_pipeline.core.examples import ExampleBuilder
from pulse_pipeline.core.families import FamilyConfig, TaskKind

KTO_RATIO_RANGE = (1.0, 4 / 3)  # TRL's advice for desirable_weight * n_d / (undesirable_weight * n_u)


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: list[dict[str, str]]  # system and user messages
    chosen: str
    rejected: str
    source: str  # correction, call_correction, ratings
    group: str
    created_at: dt.datetime


@dataclass(frozen=True)
class KtoExample:
    id: str
    prompt: list[dict[str, str]]
    completion: str
    desirable: bool
    group: str
    created_at: dt.datetime


@dataclass
class PreferenceStats:
    pairs: Counter[str] = field(default_factory=Counter)  # by source
    desirable: int = 0
    undesirable: int = 0
    neutral: int = 0  # ratings between the thresholds: no KTO example
    no_prompt: int = 0  # feedback of a family without a feedback or qa_pair prompt
    identical: int = 0  # a correction equal to the answer it corrects: no pair
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def to_json(self) -> dict[str, Any]:
        n_d, n_u = self.desirable, self.undesirable
        return {
            "dpo_pairs": dict(sorted(self.pairs.items())),
            "dpo_pairs_total": sum(self.pairs.values()),
            "kto_desirable": n_d,
            "kto_undesirable": n_u,
            "kto_desirable_share": round(n_d / (n_d + n_u), 4) if n_d + n_u else None,
            "kto_desirable_weight": self.desirable_weight,
            "kto_undesirable_weight": self.undesirable_weight,
            "neutral_ratings": self.neutral,
            "identical_corrections": self.identical,
            "feedback_without_prompt": self.no_prompt,
        }


def kto_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) that bring the weighted ratio into KTO_RATIO_RANGE."""
    if not desirable or not undesirable:
        return 1.0, 1.0
    ratio = desirable / undesirable
    low, high = KTO_RATIO_RANGE
    if ratio < low:
        return round(low / ratio, 4), 1.0
    if ratio > high:
        return 1.0, round(ratio / high, 4)
    return 1.0, 1.0


class PreferenceBuilder:
    """Feed it a chat family's stored rows (oldest first), then read `pairs()` and `kto()`."""

    def __init__(self, family: FamilyConfig):
        if family.task is not TaskKind.chat_sft:
            raise ValueError(f"preference data is for chat families; {family.name} is {family.task}")
        self.family = family
        self.settings = family.preferences
        self.chat = ExampleBuilder(family)  # the same prompts and redaction as the family's examples
        self.stats = PreferenceStats()
        self._pairs: dict[str, PreferencePair] = {}  # key -> the latest judgment's pair
        self._kto: dict[str, KtoExample] = {}
        self._rated: dict[str, dict[str, list[Any]]] = defaultdict(dict)  # group -> response -> ratings

    def add(self, row: Any) -> None:
        """`row` has id, kind, payload, created_at (a stored annotation)."""
        p = row.payload
        if row.kind == "call_correction" and isinstance(p.get("ai_output"), dict):
            self._call_correction(row, p)
        elif row.kind == "feedback":
            self._feedback(row, p)

    def _call_correction(self, row: Any, p: dict[str, Any]) -> None:
        made = self.chat.prompt("call_correction", p)
        if made is None:
            return
        prompt, group = made
        chosen = orjson.dumps(p["corrected_output"], option=orjson.OPT_SORT_KEYS).decode()
        rejected = orjson.dumps(p["ai_output"], option=orjson.OPT_SORT_KEYS).decode()
        self._pair(row, prompt, chosen, rejected, "call_correction", group)

    def _feedback(self, row: Any, p: dict[str, Any]) -> None:
        made = self.chat.prompt("feedback", p)
        if made is None:
            self.stats.no_prompt += 1
            return
        prompt, group = made
        response = self.chat.clean(p["response"])
        if p.get("corrected_response"):
            self._pair(row, prompt, self.chat.clean(p["corrected_response"]), response, "correction", group)
            return
        rating = feedback_rating(p)
        entry = self._rated[group].setdefault(response, [prompt, []])
        entry[1].append((rating, row.created_at, row.id))
        if rating >= self.settings.desirable_min_rating:
            desirable = True
        elif rating <= self.settings.undesirable_max_rating:
            desirable = False
        else:
            self.stats.neutral += 1
            return
        key = f"{group}\x00{response}"
        kept = self._kto.get(key)
        if kept is None or (kept.created_at, kept.id) <= (row.created_at, row.id):  # the latest verdict wins
            self._kto[key] = KtoExample(row.id, prompt, response, desirable, group, row.created_at)

    def _pair(self, row: Any, prompt: Any, chosen: str, rejected: str, source: str, group: str) -> None:
        if chosen.strip() == rejected.strip():
            self.stats.identical += 1
            return
        key = f"{group}\x00{rejected}"
        kept = self._pairs.get(key)
        if kept is None or (kept.created_at, kept.id) <= (row.created_at, row.id):
            self._pairs[key] = PreferencePair(row.id, prompt, chosen, rejected, source, group, row.created_at)

    def pairs(self) -> list[PreferencePair]:
        """Every DPO pair, sorted by id; `stats.pairs` counts them by source."""
        pairs = list(self._pairs.values()) + self._rating_pairs()
        self.stats.pairs = Counter(pair.source for pair in pairs)
        return sorted(pairs, key=lambda pair: pair.id)

    def _rating_pairs(self) -> list[PreferencePair]:
        out = []
        for group, responses in self._rated.items():
            scored = sorted(
                (
                    (
                        sum(r for r, _, _ in ratings) / len(ratings),
                        max(ratings, key=lambda x: (x[1], x[2])),
                        text,
                        prompt,
                    )
                    for text, (prompt, ratings) in responses.items()
                ),
                key=lambda s: -s[0],
            )
            made = 0
            for i, (score, (_, when, rid), text, prompt) in enumerate(scored):
                for lower, (_, when2, rid2), other, _ in scored[i + 1 :]:
                    if made >= self.settings.max_pairs_per_prompt or lower >= score:
                        continue
                    pair_id = f"{rid}>{rid2}"
                    out.append(
                        PreferencePair(pair_id, prompt, text, other, "ratings", group, max(when, when2))
                    )
                    made += 1
        return out

    def kto(self) -> list[KtoExample]:
        """Every KTO example, sorted by id; sets the weights in `stats`."""
        examples = sorted(self._kto.values(), key=lambda e: e.id)
        self.stats.desirable = sum(1 for e in examples if e.desirable)
        self.stats.undesirable = len(examples) - self.stats.desirable
        self.stats.desirable_weight, self.stats.undesirable_weight = kto_weights(
            self.stats.desirable, self.stats.undesirable
        )
        return examples


def preference_tables(pairs: list[PreferencePair], kto: list[KtoExample]) -> tuple[Any, Any]:
    """(DPO table, KTO table) as Arrow, with each row's prompt group (the snapshot's split key)."""
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    utc = pa.timestamp("us", tz="UTC")
    dpo = pa.table(
        {
            "id": pa.array([x.id for x in pairs], pa.string()),
            "prompt": pa.array([x.prompt for x in pairs], message),
            "chosen": pa.array([x.chosen for x in pairs], pa.string()),
            "rejected": pa.array([x.rejected for x in pairs], pa.string()),
            "source": pa.array([x.source for x in pairs], pa.string()),
            "group": pa.array([x.group for x in pairs], pa.string()),
            "created_at": pa.array([x.created_at for x in pairs], utc),
        }
    )
    kto_table = pa.table(
        {
            "id": pa.array([x.id for x in kto], pa.string()),
            "prompt": pa.array([x.prompt for x in kto], message),
            "completion": pa.array([x.completion for x in kto], pa.string()),
            "label": pa.array([x.desirable for x in kto], pa.bool_()),
            "group": pa.array([x.group for x in kto], pa.string()),
            "created_at": pa.array([x.created_at for x in kto], utc),
        }
    )
    return dpo, kto_table


def build_preferences(store: Any, family: FamilyConfig) -> tuple[Any, Any, PreferenceStats]:
    """A chat family's stored records -> (DPO table, KTO table, stats)."""
    builder = PreferenceBuilder(family)
    for row in store.annotations.iter_family(family.name):
        builder.add(row)
    pairs, kto = builder.pairs(), builder.kto()
    dpo, kto_table = preference_tables(pairs, kto)
    return dpo, kto_table, builder.stats


def split_preferences(table: Any, split_of_group: dict[str, str], settings: Any) -> list[str]:
    """The split of each preference row: its prompt group's split in the snapshot's examples, else
    one drawn for the group by a seeded hash in the split's proportions (the group's rows together)."""
    import hashlib

    seed = str(settings.seed).encode() + b"\x1fpreferences\x1f"
    out = []
    for group in table["group"].to_pylist():
        split = split_of_group.get(group)
        if split is None:
            draw = int.from_bytes(hashlib.sha256(seed + group.encode()).digest()[:8], "big") / 2**64
            split = (
                "train"
                if draw < settings.train
                else "val"
                if draw < settings.train + settings.val
                else "test"
            )
        out.append(split)
    return out
