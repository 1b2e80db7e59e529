"""The `evaluation:` block of a family in `pulse.yaml`: evaluation sets, metrics and the gate.

Every field has its default and a help line here, and nowhere else. The gate works as TFX's
model blessing: absolute thresholds on the candidate's metrics, and change thresholds on
candidate - baseline (the production version, or the base model for a family's first version),
where a metric may not regress by more than its tolerance with the paired-bootstrap interval
excluding zero. An evidence rule asks a person (REVIEW) when the evaluation set is too small, or
the candidate's interval too wide, to tell. Forgetting checks hold the candidate to the same
standard on old slices, the test splits of the snapshots before its own (`forgetting`). The
decision is the worst outcome over all checks: DEPLOY, REVIEW or FAIL.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Decision(StrEnum):
    DEPLOY = "DEPLOY"
    REVIEW = "REVIEW"
    FAIL = "FAIL"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Strict):
    """Bounds on one metric of the candidate. Crossing a `fail_*` bound fails; crossing a
    `review_*` bound asks a person. Give the side that matters: `*_below` for metrics where
    higher is better, `*_above` where lower is better."""

    fail_below: float | None = Field(None, description="FAIL when the metric is below this.")
    review_below: float | None = Field(
        None, description="REVIEW when below this (DEPLOY needs at least this)."
    )
    fail_above: float | None = Field(None, description="FAIL when the metric is above this.")
    review_above: float | None = Field(
        None, description="REVIEW at or above this (DEPLOY needs a value below it: MAE < 1.0)."
    )
    set: str = Field("test", description="The evaluation set the bound applies to (test, golden, ...).")
    required: bool = Field(
        False, description="FAIL when the metric is missing (no applicable example) instead of skipping."
    )

    @model_validator(mode="after")
    def _some_bound(self) -> Threshold:
        if all(v is None for v in (self.fail_below, self.review_below, self.fail_above, self.review_above)):
            raise ValueError("give at least one of fail_below, review_below, fail_above, review_above")
        if None not in (self.fail_below, self.review_below) and self.fail_below > self.review_below:
            raise ValueError("fail_below must not exceed review_below")
        if None not in (self.fail_above, self.review_above) and self.fail_above < self.review_above:
            raise ValueError("fail_above must not be below review_above")
        return self


class ChangeThresholds(_Strict):
    """How far a metric may move against the baseline before the gate objects."""

    metrics: tuple[str, ...] | None = Field(
        None, description="Metrics compared with the baseline (default: the task's main metrics)."
    )
    tolerance: float = Field(
        0.02, ge=0, description="Largest regression allowed, in the metric's own units (0.02 = 2 points)."
    )
    tolerances: dict[str, float] = Field(
        default_factory=dict, description="Per-metric tolerance instead of `tolerance` (e.g. mae: 0.05)."
    )
    on_regression: Decision = Field(
        Decision.FAIL, description="Decision when a metric regresses beyond tolerance (FAIL or REVIEW)."
    )
    sets: tuple[str, ...] = Field(("test",), description="Evaluation sets whose deltas the gate reads.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence of the bootstrap intervals.")
    resamples: int = Field(1000, ge=100, description="Paired bootstrap resamples.")
    seed: int = Field(0, description="Seed of the bootstrap (same inputs, same intervals).")

    def tolerance_for(self, metric: str) -> float:
        return self.tolerances.get(metric, self.tolerance)


class EvidenceConfig(_Strict):
    """When the evaluation is too thin to promote on its own: REVIEW, so a person decides."""

    set: str = Field("test", description="The evaluation set whose size and interval are judged.")
    min_examples: int | None = Field(
        None,
        ge=1,
        description="REVIEW below this many scored examples in `set` (default by task: classification "
        "100, regression 30, chat 20).",
    )
    metric: str | None = Field(
        None,
        description="Metric whose interval is judged (default: the first main metric that has a value).",
    )
    max_interval_width: float | None = Field(
        None,
        gt=0,
        description="REVIEW when the candidate's interval of `metric` is wider, in its own units (None: off).",
    )


class GateConfig(_Strict):
    absolute: dict[str, Threshold] = Field(
        default_factory=dict, description="Metric name -> bounds on the candidate's value."
    )
    change: ChangeThresholds = Field(
        default_factory=ChangeThresholds, description="Regression limits against the baseline."
    )
    evidence: EvidenceConfig = Field(
        default_factory=EvidenceConfig, description="Minimum evidence: set size and interval width."
    )


class ForgettingConfig(_Strict):
    """Old slices: the test splits of the snapshots before the candidate's, each judged against
    production like the test set, so a candidate that learned the new data and forgot the old
    does not pass on the new test split alone."""

    snapshots: int = Field(
        2,
        ge=0,
        description="How many of the family's snapshots created before the one the candidate was "
        "trained on give an old slice (their test splits); 0 turns forgetting checks off.",
    )
    metric: str | None = Field(
        None,
        description="The metric compared on each old slice (default: the task's main one, "
        "FORGETTING_METRIC: accuracy, mae, field_accuracy or answer_accuracy).",
    )
    max_drop: float | None = Field(
        None,
        ge=0,
        description="Largest drop of `metric` on an old slice against production, in the metric's own "
        "units (0.01 = 1 point of accuracy; for mae, a rise). Default: the family's change tolerance "
        "for that metric (gate.change.tolerances, else gate.change.tolerance, 0.02), so an old slice "
        "is held to the same standard as the test set.",
    )
    decision: Literal["review", "fail"] = Field(
        "review", description="What a drop beyond `max_drop` on any old slice makes the gate say."
    )
    require_significant: bool = Field(
        True,
        description="Count a drop only when its paired-bootstrap interval excludes zero too, as the "
        "change checks do (false: the point estimate alone decides).",
    )

    @field_validator("decision", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:  # REVIEW / FAIL, as gate.change.on_regression spells them
        return value.lower() if isinstance(value, str) else value

    def tolerance(self, metric: str, change: ChangeThresholds) -> float:
        return self.max_drop if self.max_drop is not None else change.tolerance_for(metric)


class EvaluationConfig(_Strict):
    """How a family's adapters are judged."""

    metrics: tuple[str, ...] | None = Field(
        None,
        description="Metric modules (pulse_pipeline/core/evaluation/metrics); default by task and "
        "annotation kinds.",
    )
    golden_file: Path | None = Field(
        None, description="Golden annotation records, relative to pulse.yaml (default golden/<family>.jsonl)."
    )
    test_file: Path | None = Field(
        None,
        description="Your own held-out test set (annotation records, relative to pulse.yaml), e.g. a "
        "labelled dataset's official test split: it is the family's `test` set, and the snapshots "
        "split into train and val only (unless `split.test` is set), so training uses all the "
        "rest of the labelled data.",
    )
    sources_file: Path | None = Field(
        None,
        description="Source registry for citations (JSON: id -> {title, url, text}), relative to pulse.yaml.",
    )
    script: str | None = Field(
        None, description="'devanagari' for Hindi families: check the answers' script."
    )
    out_of_scope_label: str = Field(
        "oos", description="Classification: the label that means out of scope (thresholded when present)."
    )
    max_new_tokens: int = Field(256, ge=1, description="Chat families: longest generated answer.")
    batch_size: int = Field(16, ge=1, description="Examples per generation or forward batch.")
    max_flipped: int = Field(25, ge=0, description="Most right-to-wrong examples listed in the report.")
    gate: GateConfig = Field(default_factory=GateConfig, description="The promotion gate.")
    forgetting: ForgettingConfig = Field(
        default_factory=ForgettingConfig,
        description="Old slices: the earlier snapshots' test splits, and how far the candidate may fall on them.",
    )


# The metric modules each task kind gets when `metrics` is not set.
DEFAULT_METRICS = {
    "classification": ("classification", "latency"),
    "regression": ("regression", "latency"),
    "chat_structured": ("structured_output", "answer_overlap", "bleu_chrf", "latency"),
    "chat_qa": ("answer_overlap", "bleu_chrf", "citations", "refusals", "latency"),
}

# What the change thresholds compare by default: the metrics a person would call "quality".
MAIN_METRICS = {
    "classification": ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall"),
    "regression": ("mae", "rmse"),
    "chat_structured": ("json_valid", "field_accuracy", "token_f1"),
    "chat_qa": ("answer_accuracy", "token_f1", "citation_presence", "refusal_accuracy", "hallucination_rate"),
}

# What an old slice is judged on (`forgetting.metric`): the one figure a person would call "still
# right on the old data". Call analysis uses field_accuracy, not json_valid: a model that forgot
# what the fields hold still writes valid JSON.
FORGETTING_METRIC = {
    "classification": "accuracy",
    "regression": "mae",
    "chat_structured": "field_accuracy",
    "chat_qa": "answer_accuracy",
}

# Fewest scored examples in the evidence set before the gate may say DEPLOY (`evidence.min_examples`).
# Classification: a proportion near 0.9 has a 95% half-width of about +-6 points at n=100 (+-11 at 30),
# the size of the changes worth catching. Regression: below ~30 the mean of per-example errors (MAE)
# is not stable, one outlier moves it. Chat: each answer gets a graded score (token F1, field
# accuracy) rather than right/wrong, and a fine-tune moves it by 10+ points; at n=20 the 95%
# half-width is about +-0.1 for a per-answer spread of 0.25. These are floors, not targets.
MIN_EXAMPLES = {"classification": 100, "regression": 30, "chat_structured": 20, "chat_qa": 20}


def profile_of(task: str, annotation_kinds: tuple[str, ...]) -> str:
    """Which default metrics a family gets: its task kind, and for chat families whether its
    answers are JSON objects (call analysis) or prose with citations (question answering)."""
    if task != "chat_sft":
        return task
    structured = {"call_correction", "segment_review"}
    return "chat_structured" if set(annotation_kinds) <= structured else "chat_qa"
