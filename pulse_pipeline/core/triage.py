"""Triage of captured predictions (the NLU capture system).

A record with an `annotator` is a human judgment; one with `source: oracle` is an LLM's label
(`pulse label`, after its prompt passed calibration): trainable, weighted apart (the family's
`oracle.weight`); one with `source: generated` (a QA pair `pulse generate-qa` wrote from
documents) waits for a person, whatever its annotator. An intent label without either is a capture: the
router's own prediction; so is a logged `interaction` that carries a predicted label, in a
classification family that learns from intent labels. Confident captures from the primary
provider are approved; the rest wait for a person, low confidence and LLM-fallback answers
first. Only approved and human-reviewed records become training data. Other logged records (an
interaction with nothing to learn from until someone judges it, feedback in a family that does
not learn from feedback) are `logged`: kept and counted, never trained on, never queued.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pulse_pipeline.core.families import FamilyConfig, TaskKind


class ReviewStatus(StrEnum):
    human_reviewed = "human_reviewed"
    oracle_labelled = "oracle_labelled"
    auto_approved = "auto_approved"
    needs_review = "needs_review"
    priority_review = "priority_review"
    logged = "logged"


TRAINABLE = frozenset({ReviewStatus.human_reviewed, ReviewStatus.oracle_labelled, ReviewStatus.auto_approved})
QUEUED = (ReviewStatus.priority_review, ReviewStatus.needs_review)  # in the order a reviewer sees them

# Kinds whose records can be machine captures; every other kind is a human judgment.
CAPTURE_KINDS = frozenset({"intent_label", "interaction"})


def is_capture(kind: str, payload: dict[str, Any]) -> bool:
    """A machine prediction (a capture kind with no annotator), not a person's judgment."""
    return kind == "interaction" or (kind in CAPTURE_KINDS and not payload.get("annotator"))


def learns_from_captures(family: FamilyConfig) -> bool:
    """Whether a logged interaction's predicted label can become this family's training data."""
    return family.task is TaskKind.classification and "intent_label" in family.annotation_kinds


def has_review_queue(family: FamilyConfig) -> bool:
    """Whether records of the family can wait for review: it learns from a kind that can be
    captured, or it generates QA pairs from documents (`oracle:` and qa_pair)."""
    return any(kind in CAPTURE_KINDS for kind in family.annotation_kinds) or generates_qa(family)


def generates_qa(family: FamilyConfig) -> bool:
    """`pulse generate-qa` can write QA pairs for this family (to its review queue)."""
    return family.has_oracle and "qa_pair" in family.annotation_kinds


def triage(kind: str, payload: dict[str, Any], family: FamilyConfig) -> ReviewStatus:
    if kind == "interaction":
        if not (learns_from_captures(family) and payload.get("predicted_label")):
            return ReviewStatus.logged
    elif kind not in family.annotation_kinds:
        return ReviewStatus.logged
    if payload.get("source") == "oracle":
        return ReviewStatus.oracle_labelled
    if payload.get("source") == "generated":
        return ReviewStatus.needs_review
    if not is_capture(kind, payload):
        return ReviewStatus.human_reviewed
    config = family.triage
    confidence = payload.get("confidence")
    provider = payload.get("provider") or config.primary_provider
    if confidence is None:
        return ReviewStatus.needs_review
    if provider != config.primary_provider or confidence < config.review_below:
        return ReviewStatus.priority_review
    if confidence > config.auto_approve_above:
        return ReviewStatus.auto_approved
    return ReviewStatus.needs_review
