"""Deterministic demo annotations for every kind of the contract (seeded; same seed, same file).

The records imitate the systems pulse_pipeline replaces: call-centre transcripts with
PII-looking strings for the redaction step to find, dojo segment reviews with agreements,
disagreement reasons and timestamp fixes, intent labels captured from a router (built from
CLINC150 when its folder is given, generated otherwise), article scores over eight dimensions,
and ACCESS-style QA pairs with `<<SRC:domain:entity>>` citations, some of which must be refused.
Facts about resources are illustrative, not authoritative.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

# The vocabulary is the tiny model's tokenizer corpus: the demo depends on core, never the reverse.
from pulse_pipeline.core.training.tiny_corpus import (
    DIMENSIONS,  # noqa: F401 (the article scores' names, which tests import from here)
    RESOURCES,
    SCENARIOS,
    STATIC_QUESTIONS,
    TOPICS,
)

# Deliberately flawed lines appended to the demo file, so the demo shows quarantine at work.
FLAWED_LINES = (
    b'{"kind": "intent_label", "family": "intent-router", "text": "freeze my card", "label": "freeze_account", "confidence": 1.3}',
    b'{"kind": "segment_review", "family": "call-analysis", "call_id": "c-x", "segment_key": "s1", "segment_type": "agent_action", '
    b'"segment_text": "Agent verified identity", "ai_assessment": "ok", "trainer_assessment": "ok", "timestamp_start": 15.5, "timestamp_end": 12.0}',
    b'{"kind": "feedback", "family": "access-qa", "query": "how do I log in?", "response": "use ssh", "rating": 9',
)


# Intent labels for generated utterances when neither CLINC150 nor a label set is given.
FALLBACK_INTENTS = ("balance", "transfer", "freeze_account", "report_fraud", "pin_change", "oos")


@dataclass(frozen=True)
class DemoScale:
    """How many records of each kind; `days` is the span of created_at ending on the anchor day."""

    call_correction: int = 40
    segment_review: int = 240
    intent_label: int = 1500
    score_label: int = 300
    qa_pair: int = 200
    feedback: int = 120
    days: int = 14

    def scaled(self, factor: float) -> DemoScale:
        return DemoScale(
            **{
                k: max(1, round(getattr(self, k) * factor))
                for k in DemoScale.__dataclass_fields__
                if k != "days"
            },
            days=self.days,
        )


@dataclass
class DemoFile:
    path: Path
    counts: Counter[str] = field(default_factory=Counter)
    flawed_lines: int = 0
    intent_source: str = ""


def write_demo_file(
    path: str | Path,
    *,
    seed: int = 7,
    anchor: dt.date,
    scale: DemoScale = DemoScale(),
    clinc150_dir: Path | None = None,
    intent_labels: tuple[str, ...] = FALLBACK_INTENTS,
    flawed: bool = True,
) -> DemoFile:
    """Write the demo JSON Lines file; the same (seed, anchor, scale, clinc150) give the same bytes."""
    out = DemoFile(Path(path))
    out.path.parent.mkdir(parents=True, exist_ok=True)
    with out.path.open("wb") as fh:
        for record in generate(
            seed=seed,
            anchor=anchor,
            scale=scale,
            clinc150_dir=clinc150_dir,
            intent_labels=intent_labels,
            info=out,
        ):
            fh.write(orjson.dumps(record) + b"\n")
            out.counts[record["kind"]] += 1
        if flawed:
            for line in FLAWED_LINES:
                fh.write(line + b"\n")
            out.flawed_lines = len(FLAWED_LINES)
    return out


def generate(
    *,
    seed: int,
    anchor: dt.date,
    scale: DemoScale,
    clinc150_dir: Path | None = None,
    intent_labels: tuple[str, ...] = FALLBACK_INTENTS,
    info: DemoFile | None = None,
) -> Iterator[dict[str, Any]]:
    """All demo records, kind by kind; each kind has its own random stream."""
    clock = _Clock(anchor, scale.days)
    yield from _calls(random.Random(f"{seed}:calls"), clock, scale)
    intents = _clinc150(clinc150_dir) if clinc150_dir else None
    if info is not None:
        info.intent_source = (
            f"CLINC150 at {clinc150_dir}" if intents else "generated utterances (CLINC150 not found)"
        )
    yield from _intent_labels(
        random.Random(f"{seed}:intents"), clock, scale.intent_label, intents, intent_labels
    )
    yield from _score_labels(random.Random(f"{seed}:scores"), clock, scale.score_label)
    yield from _qa_pairs(random.Random(f"{seed}:qa"), clock, scale.qa_pair)
    yield from _feedback(random.Random(f"{seed}:feedback"), clock, scale.feedback)


class _Clock:
    def __init__(self, anchor: dt.date, days: int):
        self.end = dt.datetime.combine(anchor, dt.time(23, 59, 59), tzinfo=dt.UTC)
        self.span = days * 86400 - 1

    def draw(self, rng: random.Random) -> str:
        return (self.end - dt.timedelta(seconds=rng.randint(0, self.span))).isoformat().replace("+00:00", "Z")


AGENTS = ("Priya", "Marcus", "Elena", "Tom", "Aisha", "Kenji")
CUSTOMERS = ("Jane Doe", "Robert Chen", "Maria Garcia", "Sam Patel", "Olivia Brown", "Luis Ortega")
TRAINERS = ("trainer.amy", "trainer.ben", "trainer.chloe")
REVIEWERS = ("reviewer.dan", "reviewer.eve", "reviewer.fay", "reviewer.gus")


def _pii(rng: random.Random, name: str) -> dict[str, str]:
    user = name.lower().replace(" ", ".")
    return {
        "phone": rng.choice(
            ["415-555-{:04d}", "(212) 555-{:04d}", "+1 646 555 {:04d}", "+44 20 7946 {:04d}"]
        ).format(rng.randint(0, 9999)),
        "email": f"{user}{rng.randint(1, 99)}@{rng.choice(['example.com', 'mail.example.org', 'example.net'])}",
        # Well-known test card numbers: Luhn-valid, never real accounts.
        "card": rng.choice(
            ["4111 1111 1111 1111", "5500-0000-0000-0004", "4012888888881881", "3782 822463 10005"]
        ),
    }


def _calls(rng: random.Random, clock: _Clock, scale: DemoScale) -> Iterator[dict[str, Any]]:
    calls = [_call(rng, i) for i in range(max(scale.call_correction, scale.segment_review // 3 + 1))]
    for call in calls[: scale.call_correction]:
        yield _call_correction(rng, clock, call)
    sessions = [f"dojo-{i:03d}" for i in range(max(1, scale.segment_review // 30))]
    reviews = 0
    for call in calls:
        for seg in call["segments"]:
            if reviews >= scale.segment_review:
                return
            yield _segment_review(rng, clock, call, seg, rng.choice(sessions))
            reviews += 1


def _call(rng: random.Random, index: int) -> dict[str, Any]:
    scenario = rng.choice(sorted(SCENARIOS))
    issue, resolution, topics = SCENARIOS[scenario]
    agent, customer = rng.choice(AGENTS), rng.choice(CUSTOMERS)
    pii = _pii(rng, customer)
    disclosed = rng.random() > 0.2
    verified = rng.random() > 0.25
    interrupted = rng.random() < 0.3
    lines: list[tuple[str, str, str | None]] = [
        ("Agent", f"Thank you for calling Northwind, my name is {agent}. How can I help you today?", None)
    ]
    if disclosed:
        lines.append(
            (
                "Agent",
                "Before we start, this call may be recorded for quality and training purposes.",
                "recording_disclosure",
            )
        )
    lines.append(("Customer", f"Hi, this is {customer}. {issue}", None))
    if verified:
        lines.append(
            (
                "Agent",
                "I can help with that. Can I confirm your date of birth and the phone number on the account?",
                "identity_verification",
            )
        )
        lines.append(("Customer", f"Sure, it's the 4th of March 1986 and my number is {pii['phone']}.", None))
    if interrupted:
        lines.append(("Agent", "Yes, yes, I know, let me just stop you there.", "interruption"))
    if scenario in ("billing_dispute", "lost_card"):
        lines.append(("Customer", f"The card is {pii['card']} if you need it.", None))
        lines.append(
            (
                "Agent",
                "Thank you, please never read out your full card number; I only need the last four digits.",
                "pii_guidance",
            )
        )
    lines.append(("Agent", resolution, "resolution"))
    lines.append(("Customer", f"Can you send the confirmation to {pii['email']}?", None))
    lines.append(("Agent", "Done. Is there anything else I can help you with today?", "closing"))
    turns, t = [], 0.0
    for speaker, text, _ in lines:
        dur = round(2.0 + len(text) / 14 + rng.random() * 2, 1)
        turns.append({"speaker": speaker, "text": text, "start": round(t, 1), "end": round(t + dur, 1)})
        t += dur + round(rng.random(), 1)
    negative = scenario == "cancellation" or interrupted
    quality = 9 - 2 * (not disclosed) - 2 * (not verified) - 2 * interrupted + rng.choice([0, 0, -1, 1])
    output = {
        "sentiment": "negative" if negative else rng.choice(["positive", "neutral", "positive"]),
        "quality": max(1, min(10, quality)),
        "topics": topics,
        "compliance": {"recording_disclosure": disclosed, "identity_verified": verified},
        "summary": f"Customer called about {scenario.replace('_', ' ')}; agent {agent} {resolution[0].lower() + resolution[1:]}",
    }
    segments = []
    for (speaker, text, tag), turn in zip(lines, turns, strict=True):
        if tag is None:
            continue
        seg_type = {
            "recording_disclosure": "compliance_flag",
            "identity_verification": "compliance_flag",
            "pii_guidance": "compliance_flag",
            "interruption": "score_impact",
        }.get(tag, "agent_action")
        impact = "negative" if tag == "interruption" else "positive"
        segments.append(
            {
                "tag": tag,
                "type": seg_type,
                "text": f"{speaker}: {text}",
                "start": turn["start"],
                "end": turn["end"],
                "impact": impact,
            }
        )
    if not disclosed:
        segments.append(
            {
                "tag": "missing_disclosure",
                "type": "compliance_flag",
                "text": "No recording disclosure in the first 30 seconds.",
                "start": 0.0,
                "end": 30.0,
                "impact": "negative",
            }
        )
    return {
        "call_id": f"call-{index:05d}",
        "turns": turns,
        "output": output,
        "segments": segments,
        "agent": agent,
    }


def _call_correction(rng: random.Random, clock: _Clock, call: dict[str, Any]) -> dict[str, Any]:
    truth = call["output"]
    ai = json.loads(json.dumps(truth))
    if rng.random() < 0.4:
        ai["sentiment"] = rng.choice(
            [s for s in ("positive", "neutral", "negative") if s != truth["sentiment"]]
        )
    if rng.random() < 0.4:
        ai["quality"] = max(1, min(10, truth["quality"] + rng.choice([-3, -2, 2, 3])))
    if rng.random() < 0.3 and len(ai["topics"]) > 1:
        ai["topics"] = ai["topics"][:-1]
    if rng.random() < 0.2:
        ai["compliance"]["recording_disclosure"] = not ai["compliance"]["recording_disclosure"]
    return {
        "kind": "call_correction",
        "family": "call-analysis",
        "created_at": clock.draw(rng),
        "annotator": rng.choice(REVIEWERS),
        "model_version": "call-analysis-base",
        "call_id": call["call_id"],
        "transcript": call["turns"],
        "ai_output": ai,
        "corrected_output": truth,
    }


def _segment_review(
    rng: random.Random, clock: _Clock, call: dict[str, Any], seg: dict[str, Any], session: str
) -> dict[str, Any]:
    truth = {"action_detected": True, "quality_impact": seg["impact"], "category": seg["tag"]}
    ai = dict(truth)
    record: dict[str, Any] = {
        "kind": "segment_review",
        "family": "call-analysis",
        "created_at": clock.draw(rng),
        "annotator": rng.choice(TRAINERS),
        "session_id": session,
        "call_id": call["call_id"],
        "segment_key": f"{call['call_id']}:{seg['tag']}",
        "segment_type": seg["type"],
        "segment_text": seg["text"],
        "timestamp_start": seg["start"],
        "timestamp_end": seg["end"],
        "segment_ids": [f"{call['call_id']}-t{int(seg['start'])}"],
    }
    roll = rng.random()
    if roll < 0.55:  # the trainer agrees
        pass
    elif roll < 0.65:
        record["disagreement_reason"] = "false_positive"
        truth = {"action_detected": False, "quality_impact": "neutral", "category": seg["tag"]}
    elif roll < 0.77:
        record["disagreement_reason"] = "incorrect_timestamp"
        shift = round(rng.uniform(1.5, 6.0), 1) * rng.choice([-1, 1])
        record["original_timestamp_start"] = max(0.0, round(seg["start"] + shift, 1))
        record["original_timestamp_end"] = max(
            record["original_timestamp_start"] + 0.5, round(seg["end"] + shift, 1)
        )
    elif roll < 0.85:
        record["disagreement_reason"] = "too_harsh" if seg["impact"] == "negative" else "too_lenient"
        ai["quality_impact"] = "negative" if seg["impact"] == "positive" else "positive"
    elif roll < 0.91:
        record["disagreement_reason"] = "wrong_category"
        ai["category"] = rng.choice(["resolution", "closing", "interruption", "pii_guidance"])
    elif roll < 0.96:
        record["disagreement_reason"] = "not_quality_affecting"
        ai["quality_impact"] = "negative"
        truth["quality_impact"] = "neutral"
    else:
        record["disagreement_reason"] = rng.choice(["missed_context", "other"])
        ai["quality_impact"] = "neutral"
    record["ai_assessment"] = ai
    record["trainer_assessment"] = truth
    return record


def _clinc150(folder: Path) -> list[tuple[str, str]] | None:
    path = Path(folder) / "data_full.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return [(t, label) for split in ("train", "oos_train") for t, label in data[split]]


_UTTERANCE_TEMPLATES = (
    "i need help with {x}",
    "can you help me {x}",
    "how do i {x}",
    "please {x} for me",
    "i want to {x}",
    "what about {x}",
)


def _intent_labels(
    rng: random.Random, clock: _Clock, n: int, pool: list[tuple[str, str]] | None, labels: tuple[str, ...]
) -> Iterator[dict[str, Any]]:
    if pool is None:
        pool = [
            (rng.choice(_UTTERANCE_TEMPLATES).format(x=lab.replace("_", " ")), lab)
            for lab in labels
            for _ in range(8)
        ]
    labels_seen = sorted({label for _, label in pool})
    picks = rng.sample(pool, k=min(n, len(pool)))
    for text, label in picks:
        # Simulated router: the encoder is usually right when confident; low confidence goes to an LLM.
        confidence = round(min(0.999, max(0.05, rng.betavariate(5, 1.6))), 3)
        provider = "llm_fallback" if confidence < 0.7 and rng.random() < 0.5 else "encoder"
        p_right = 0.97 if confidence > 0.85 else 0.75 if confidence >= 0.7 else 0.45
        predicted = label if rng.random() < p_right else rng.choice(labels_seen)
        record = {
            "kind": "intent_label",
            "family": "intent-router",
            "created_at": clock.draw(rng),
            "model_version": "intent-router-base",
            "text": text,
            "label": label,
            "predicted_label": predicted,
            "confidence": confidence,
            "provider": provider,
            "language": "en",
            "conversation_id": f"conv-{rng.randint(0, 10**6):06d}",
        }
        if rng.random() < 0.35:
            # A capture nobody has reviewed yet: the label is the router's own suggestion.
            record["label"] = predicted
        else:
            record["annotator"] = rng.choice(REVIEWERS)
        yield record


def _score_labels(rng: random.Random, clock: _Clock, n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        topic = rng.choice(TOPICS)
        paragraphs = rng.randint(1, 6)
        cited = rng.random() < 0.5
        structured = rng.random() < 0.6
        hype = rng.random() < 0.3
        body = []
        if structured:
            body.append(f"This article looks at {topic}: what changed, why it matters, and what comes next.")
        for p in range(paragraphs):
            sentence = f"Researchers studying {topic} report measurable changes in {2018 + p} data."
            if cited:
                sentence += f" According to a {rng.choice(['university', 'government', 'industry'])} report, the effect held across regions."
            if hype:
                sentence += " This is the most shocking discovery ever and changes everything!"
            body.append(sentence)
        text = " ".join(body)

        def score(base: float) -> float:
            return round(min(10.0, max(0.0, base + rng.gauss(0, 0.6))), 1)

        scores = {
            "clarity": score(6 + structured - hype),
            "accuracy": score(6 + 2 * cited - 2 * hype),
            "depth": score(3 + paragraphs),
            "relevance": score(6.5),
            "originality": score(5 + rng.random() * 2),
            "structure": score(4 + 3 * structured + paragraphs / 3),
            "engagement": score(5 + hype + paragraphs / 4),
            "sourcing": score(2 + 6 * cited),
        }
        yield {
            "kind": "score_label",
            "family": "article-scorer",
            "created_at": clock.draw(rng),
            "annotator": rng.choice(REVIEWERS),
            "title": f"{topic.title()}: notes {i:04d}",
            "group_id": f"article-{i:05d}",
            "text": text,
            "scores": scores,
        }


# Users ask the same thing in many ways; without this, deduplication would rightly fold the
# demo's questions into a few dozen.
OPENERS = (
    "",
    "",
    "Quick question: ",
    "Hi! ",
    "Could you tell me: ",
    "I'm new to ACCESS. ",
    "For my allocation request: ",
)
CLOSERS = (
    "",
    "",
    " Thanks!",
    " I need it for a proposal.",
    " Asking for my lab.",
    " Is that documented somewhere?",
)


def _phrase(rng: random.Random, question: str) -> str:
    return f"{rng.choice(OPENERS)}{question}{rng.choice(CLOSERS)}"


DYNAMIC_QUESTIONS = (
    "What is the current queue wait time on {name}?",
    "Is {name} down right now?",
    "How many nodes are free on {name} at the moment?",
)
REFUSAL = (
    "I can't see live system status, so I can't answer that reliably. Check the ACCESS system status page "
    "or run `squeue` on {name} for current information."
)


def _qa_pairs(rng: random.Random, clock: _Clock, n: int) -> Iterator[dict[str, Any]]:
    for _ in range(n):
        key = rng.choice(sorted(RESOURCES))
        facts = RESOURCES[key]
        record: dict[str, Any] = {
            "kind": "qa_pair",
            "family": "access-qa",
            "created_at": clock.draw(rng),
            "annotator": rng.choice(REVIEWERS),
        }
        if rng.random() < 0.15:
            record.update(
                question=_phrase(rng, rng.choice(DYNAMIC_QUESTIONS).format(**facts)),
                answer=REFUSAL.format(**facts) + " <<SRC:documentation:system-status>>",
                sources=["documentation:system-status"],
                query_type="dynamic",
                citation_expected=False,
            )
        else:
            q, a, domain = rng.choice(STATIC_QUESTIONS)
            src = f"{domain}:{key}"
            record.update(
                question=_phrase(rng, q.format(**facts)),
                answer=f"{a.format(**facts)} <<SRC:{src}>>",
                sources=[src],
                query_type="static",
                citation_expected=True,
            )
        yield record


def _feedback(rng: random.Random, clock: _Clock, n: int) -> Iterator[dict[str, Any]]:
    for _ in range(n):
        key = rng.choice(sorted(RESOURCES))
        facts = RESOURCES[key]
        q, a, domain = rng.choice(STATIC_QUESTIONS)
        good = f"{a.format(**facts)} <<SRC:{domain}:{key}>>"
        rating = rng.choices([1, 2, 3, 4, 5], weights=[2, 2, 2, 3, 4])[0]
        record: dict[str, Any] = {
            "kind": "feedback",
            "family": "access-qa",
            "created_at": clock.draw(rng),
            "annotator": f"user-{rng.randint(1, 400):04d}",
            "model_version": "access-qa-base",
            "query": _phrase(rng, q.format(**facts)),
            "response": good
            if rating >= 4
            else rng.choice(
                [
                    f"{facts['name']} has 64 cores per node.",
                    "I'm not sure, please contact support.",
                    good.split(" <<SRC")[0],
                ]
            ),
            "rating": rating,
            "sources": [f"{domain}:{key}"],
        }
        if rating <= 2 and rng.random() < 0.6:
            record["corrected_response"] = good
        yield record
