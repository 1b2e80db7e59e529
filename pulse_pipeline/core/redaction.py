"""PII redaction: typed placeholders for e-mail addresses, phone numbers, payment cards and IBANs.

Runs before any text leaves the store for training or export. Card numbers must pass the
Luhn check and IBANs the ISO 13616 mod-97 check, so order numbers and timestamps survive.
Extra patterns come from the family config (`redaction.extra_patterns: {NAME: regex}`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
# Candidates of 13-19 digits in groups separated by single spaces or dashes.
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# International (+CC ...) or North-American (NXX) NXX-XXXX numbers, with common separators.
PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}"
    r"|\d{3}[.-]\d{3}[.-]\d{4}"
    r"|\d{3} \d{3} \d{4}"
    r")(?![\w])"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"[ -]", "", match.group())
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


@dataclass(frozen=True)
class Recognizer:
    name: str  # the placeholder is f"[{name}]"
    pattern: re.Pattern[str]
    valid: Callable[[re.Match[str]], bool] | None = None


# Order matters: cards and IBANs before phones, so a card number is not read as a phone.
DEFAULT_RECOGNIZERS = (
    Recognizer("EMAIL", EMAIL),
    Recognizer("IBAN", IBAN, lambda m: iban_ok(m.group())),
    Recognizer("CARD", CARD, _card),
    Recognizer("PHONE", PHONE),
)
_QUICK = re.compile(r"@|\d{3}")  # text with neither cannot hold any default PII


@dataclass
class Redactor:
    """Replaces PII with typed placeholders and counts what it replaced."""

    recognizers: tuple[Recognizer, ...] = DEFAULT_RECOGNIZERS
    counts: Counter[str] = field(default_factory=Counter)

    @classmethod
    def with_extra(cls, extra_patterns: Mapping[str, str]) -> Redactor:
        extra = tuple(Recognizer(name.upper(), re.compile(rx)) for name, rx in extra_patterns.items())
        return cls(recognizers=DEFAULT_RECOGNIZERS + extra)

    @property
    def has_extra(self) -> bool:
        return len(self.recognizers) > len(DEFAULT_RECOGNIZERS)

    def __call__(self, text: str) -> str:
        if not self.has_extra and not _QUICK.search(text):
            return text
        for rec in self.recognizers:
            text = rec.pattern.sub(self._replacer(rec), text)
        return text

    def _replacer(self, rec: Recognizer) -> Callable[[re.Match[str]], str]:
        def replace(match: re.Match[str]) -> str:
            if rec.valid is not None and not rec.valid(match):
                return match.group()
            self.counts[rec.name] += 1
            return f"[{rec.name}]"

        return replace

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, type) of every PII span in `text`, for evaluation; no counting."""
        found: list[tuple[int, int, str]] = []
        taken: list[tuple[int, int]] = []
        for rec in self.recognizers:
            for m in rec.pattern.finditer(text):
                if rec.valid is not None and not rec.valid(m):
                    continue
                if any(m.start() < e and s < m.end() for s, e in taken):
                    continue
                taken.append((m.start(), m.end()))
                found.append((m.start(), m.end(), rec.name))
        return sorted(found)
