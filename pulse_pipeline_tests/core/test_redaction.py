"""Redaction measured on a generated, labelled set with known PII positions."""

import random
from collections import Counter

import pytest

from pulse_pipeline.core.redaction import Redactor, iban_ok, luhn_ok


def _luhn_number(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError


def _card(rng: random.Random) -> str:
    kind = rng.choice(["visa", "mc", "amex"])
    if kind == "amex":
        n = _luhn_number(rng, rng.choice(["34", "37"]), 15)
        sep = rng.choice([" ", "-", ""])
        return sep.join([n[:4], n[4:10], n[10:]])
    n = _luhn_number(rng, "4" if kind == "visa" else rng.choice(["51", "55", "22"]), 16)
    sep = rng.choice([" ", "-", ""])
    return sep.join(n[i : i + 4] for i in range(0, 16, 4))


def _iban(rng: random.Random) -> str:
    country, length = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14)])
    if country in ("GB", "NL"):
        bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4)) + "".join(
            str(rng.randint(0, 9)) for _ in range(length - 4)
        )
    else:
        bban = "".join(str(rng.randint(0, 9)) for _ in range(length))
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(digits) % 97
    iban = f"{country}{check:02d}{bban}"
    assert iban_ok(iban)
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.5 else iban


def _phone(rng: random.Random) -> str:
    d = lambda n: "".join(str(rng.randint(0, 9)) for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            f"{rng.randint(201, 989)}-555-{d(4)}",
            f"({rng.randint(201, 989)}) 555-{d(4)}",
            f"+1 {rng.randint(201, 989)} 555 {d(4)}",
            f"+44 20 {d(4)} {d(4)}",
            f"+49 30 {d(8)}",
            f"{rng.randint(201, 989)}.555.{d(4)}",
            f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"{rng.randint(201, 989)} 555 {d(4)}",
        ]
    )


def _email(rng: random.Random) -> str:
    user = rng.choice(["jane.doe", "r.chen", "maria_garcia", "sam+billing", "o.brown2", "luis-ortega"])
    return f"{user}@{rng.choice(['example.com', 'mail.example.org', 'corp.example.co.uk', 'example.net'])}"


# Look-alikes that must survive untouched.
NEGATIVES = [
    "order 20261122-0042 shipped",
    "call at 10:45 on 2026-03-04",
    "the refund of $1,249.99 is pending",
    "version 2.13.0 of the app",
    "ZIP 94105 and PO box 1234",
    "ticket #4111111111111112 (not a card: fails Luhn)",
    "reference DE00123456789012345678 (bad IBAN check digits)",
    "account ending 1111",
    "call-00042 lasted 312.5 seconds",
    "the year 1986 and 12 items",
    "a score of 7/10",
]
TEMPLATES = [
    "Hi, this is Jane, you can reach me at {pii} any time.",
    "My details: {pii}.",
    "{pii} is what I gave the agent",
    "Please send it to {pii}, thanks!",
    "Customer: the number is {pii} and my order is 20261122-0042",
]


def labelled_set(n: int = 2000, seed: int = 11) -> list[tuple[str, list[tuple[int, int, str]]]]:
    rng = random.Random(seed)
    makers = {"EMAIL": _email, "PHONE": _phone, "CARD": _card, "IBAN": _iban}
    items = []
    for _ in range(n):
        kind = rng.choice(sorted(makers))
        value = makers[kind](rng)
        template = rng.choice(TEMPLATES)
        start = template.index("{pii}")
        text = template.replace("{pii}", value) + " " + rng.choice(NEGATIVES)
        items.append((text, [(start, start + len(value), kind)]))
    return items


def score(redactor: Redactor, items):
    tp, fp, fn = Counter(), Counter(), Counter()
    for text, gold in items:
        found = set(redactor.spans(text))
        for span in gold:
            (tp if span in found else fn)[span[2]] += 1
        for span in found - set(gold):
            fp[span[2]] += 1
    return tp, fp, fn


@pytest.mark.parametrize("kind", ["EMAIL", "PHONE", "CARD", "IBAN"])
def test_precision_and_recall_on_the_generated_set(kind):
    tp, fp, fn = score(Redactor(), labelled_set())
    recall = tp[kind] / (tp[kind] + fn[kind])
    precision = tp[kind] / (tp[kind] + fp[kind])
    assert recall >= 0.98, (kind, recall, fn)
    assert precision >= 0.95, (kind, precision, fp)


def test_look_alikes_are_left_alone():
    redactor = Redactor()
    for text in NEGATIVES:
        assert redactor(text) == text, text
    assert sum(redactor.counts.values()) == 0


def test_placeholders_and_counts():
    redactor = Redactor()
    out = redactor("mail jane.doe@example.com or call 415-555-0132; card 4111 1111 1111 1111")
    assert out == "mail [EMAIL] or call [PHONE]; card [CARD]"
    assert redactor.counts == {"EMAIL": 1, "PHONE": 1, "CARD": 1}


def test_extra_patterns_from_config():
    redactor = Redactor.with_extra({"member_id": r"\bMBR-\d{6}\b"})
    assert redactor("member MBR-123456 called") == "member [MEMBER_ID] called"
    assert redactor.counts["MEMBER_ID"] == 1
