"""How each deployed adapter version does on live traffic, against the accuracy its evaluation measured.

A person's judgment of a model output that carries `model_version` (the column, or the payload
field) says whether that version was right. Only human judgments count (`triage` says
human_reviewed: an intent label needs an `annotator`; the other kinds always come from a person).
What "right" means, per annotation kind, each judged record scoring a number in 0..1:

- intent_label: `predicted_label == label` (1 or 0); a record without `predicted_label` is not
  judgeable.
- segment_review: the trainer agreed with the AI (1 or 0): no disagreement reason, the same
  assessment, timestamps not moved: the rule that gives an example the 0.5 agreement weight
  (`examples.segment_agrees`).
- call_correction: the share of the fields (leaves, nested objects flattened by path) of
  `corrected_output` that `ai_output` got right, compared as `field_accuracy` compares them
  (strings stripped and case-insensitively, numbers within 1e-6, lists as sets); a record without
  `ai_output` is not judgeable.
- feedback: a rating of 4 or 5 (or a thumbs up) is right, 1 to 3 (a thumbs down, a correction) is not;
  in any family, whether or not it learns from feedback.
- qa_pair, score_label: a reference answer or score, no verdict on the model's output: not
  judgeable, and counted as such.

Per version: live accuracy (mean score), the number judged, a 95% Wilson score interval, and when
the first and last judgment were made. The Wilson interval is exact in form for right/wrong
records and conservative for fractional scores (a variable in 0..1 with mean p has variance at most
p(1 - p)).

The comparison: a version's test accuracy is `production_watch.metric` (default per task:
classification `accuracy`, call-analysis `field_accuracy`, question answering `answer_accuracy`)
of `production_watch.eval_set` in its `eval/results.json`; missing, it is not compared, and the
report says why. A version raises an alert when it has at least `min_reviews` judged outputs, its
live accuracy is more than `margin` below the test accuracy, and the test accuracy lies above the
live interval's upper bound: the drop is larger than tolerated and not explained by too few reviews.
Only the production version's (current.json's) alert acts; the others are reported.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from pulse_pipeline.core.alerts import Alert
from pulse_pipeline.core.annotations import feedback_rating
from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.evaluation.config import profile_of
from pulse_pipeline.core.evaluation.json_fields import flatten, leaf_correct, lookup
from pulse_pipeline.core.examples import segment_agrees
from pulse_pipeline.core.families import FamilyConfig, ProductionWatchConfig
from pulse_pipeline.core.registry import files, read_current
from pulse_pipeline.core.registry.errors import NameError_
from pulse_pipeline.core.triage import ReviewStatus, triage

Z95 = 1.959964  # two-sided 95% normal quantile
RIGHT_RATING = 4  # a feedback rating at or above this says the answer was right

# The metric of eval/results.json live accuracy is compared with, by evaluation profile.
DEFAULT_METRIC = {
    "classification": "accuracy",
    "chat_structured": "field_accuracy",
    "chat_qa": "answer_accuracy",
}


class NotJudged(StrEnum):
    """Why a reviewed record with a model_version says nothing about that version being right."""

    not_reviewed = "not reviewed by a person"
    no_model_output = "no model output recorded (predicted_label / ai_output)"
    no_verdict = "kind carries no verdict on the model's output (qa_pair, score_label)"


def judge(kind: str, payload: dict[str, Any], family: FamilyConfig) -> float | NotJudged:
    """How right the model output judged by this record was (0..1), or why it cannot say."""
    if kind == "feedback":  # a user's verdict, whether or not the family learns from feedback
        return float(feedback_rating(payload) >= RIGHT_RATING)
    if triage(kind, payload, family) is not ReviewStatus.human_reviewed:
        return NotJudged.not_reviewed
    if kind == "intent_label":
        predicted = payload.get("predicted_label")
        return NotJudged.no_model_output if predicted is None else float(predicted == payload["label"])
    if kind == "segment_review":
        return float(segment_agrees(payload))
    if kind == "call_correction":
        ai, corrected = payload.get("ai_output"), payload["corrected_output"]
        if not isinstance(ai, dict):
            return NotJudged.no_model_output
        leaves = flatten(corrected)
        if not leaves:
            return NotJudged.no_model_output  # nothing to get right
        return sum(leaf_correct(v, lookup(ai, path)) for path, v in leaves.items()) / len(leaves)
    return NotJudged.no_verdict


@dataclass
class VersionAccuracy:
    """One version's judged live outputs."""

    version: str
    judged: int = 0
    right: float = 0.0  # sum of scores
    by_kind: Counter[str] = field(default_factory=Counter)  # judged records per kind
    not_judged: Counter[str] = field(default_factory=Counter)  # NotJudged value -> records
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None

    @property
    def accuracy(self) -> float | None:
        return self.right / self.judged if self.judged else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.right, self.judged)

    def add(self, score: float | NotJudged, kind: str, created_at: dt.datetime) -> None:
        if isinstance(score, NotJudged):
            self.not_judged[score.value] += 1
            return
        self.judged += 1
        self.right += score
        self.by_kind[kind] += 1
        self.first_seen = created_at if self.first_seen is None else min(self.first_seen, created_at)
        self.last_seen = created_at if self.last_seen is None else max(self.last_seen, created_at)


def wilson(right: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of `right` successes in `n` (None when n is 0)."""
    if n <= 0:
        return None
    p = min(max(right / n, 0.0), 1.0)
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


@dataclass
class LiveAccuracy:
    """Every version's live accuracy from one pass over a family's annotations."""

    versions: dict[str, VersionAccuracy] = field(default_factory=dict)
    without_version: int = 0  # annotations that name no model version (not about any version)


def live_accuracy(rows: Iterable[Any], family: FamilyConfig) -> LiveAccuracy:
    """`rows`: stored annotations (kind, payload, created_at, model_version), any order."""
    out = LiveAccuracy()
    for row in rows:
        version = row.model_version or row.payload.get("model_version")
        if not version:
            out.without_version += 1
            continue
        acc = out.versions.get(version)
        if acc is None:
            acc = out.versions[version] = VersionAccuracy(version)
        acc.add(judge(row.kind, row.payload, family), row.kind, _utc(row.created_at))
    return out


# -- the comparison with the test accuracy -------------------------------------------------------


def metric_of(family: FamilyConfig) -> str | None:
    """The evaluation metric live accuracy is compared with (None: the family has none)."""
    watch = family.automation.production_watch
    if watch.metric:
        return watch.metric
    return DEFAULT_METRIC.get(profile_of(family.task.value, tuple(family.annotation_kinds)))


def eval_accuracy(
    artifacts: ArtifactStore, family: str, version: str, metric: str | None, eval_set: str = "test"
) -> tuple[float | None, str]:
    """The version's `metric` on `eval_set` from its eval/results.json, or (None, why not)."""
    if metric is None:
        return None, "no evaluation metric to compare with (set production_watch.metric)"
    try:
        key = f"{files.key(family, version)}/{files.EVAL_RESULTS}"
    except NameError_:
        return None, f"{version!r} is not a version name of {family}"
    try:
        results = orjson.loads(artifacts.read_bytes(key))
    except KeyError:
        return None, f"{version} was never evaluated (no {files.EVAL_RESULTS})"
    except orjson.JSONDecodeError:
        return None, f"{version}: {files.EVAL_RESULTS} is not readable JSON"
    metrics = results.get("metrics") if isinstance(results, dict) else None
    candidate = ((metrics or {}).get(eval_set) or {}).get("candidate")
    if not isinstance(candidate, dict):
        return None, f"{version}: {files.EVAL_RESULTS} has no '{eval_set}' set"
    value = candidate.get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None, f"{version}: no {metric} on '{eval_set}' in {files.EVAL_RESULTS}"
    return float(value), ""


@dataclass(frozen=True)
class VersionWatch:
    """One version's live accuracy against its test accuracy, and the verdict."""

    live: VersionAccuracy
    test: float | None
    status: str  # "alert", "ok", "within noise", "too few reviews", "not compared"
    reason: str  # one line a person reads

    @property
    def version(self) -> str:
        return self.live.version

    @property
    def alert(self) -> bool:
        return self.status == "alert"

    @property
    def drop(self) -> float | None:
        """Test minus live accuracy (positive: worse live)."""
        live = self.live.accuracy
        return None if self.test is None or live is None else self.test - live

    def to_json(self) -> dict[str, Any]:
        live, interval = self.live, self.live.interval
        return {
            "version": self.version,
            "live_accuracy": live.accuracy,
            "interval": list(interval) if interval else None,
            "judged": live.judged,
            "by_kind": dict(live.by_kind),
            "not_judged": dict(live.not_judged),
            "test_accuracy": self.test,
            "drop": self.drop,
            "status": self.status,
            "alert": self.alert,
            "reason": self.reason,
            "first_seen": live.first_seen.isoformat() if live.first_seen else None,
            "last_seen": live.last_seen.isoformat() if live.last_seen else None,
        }


def assess(
    live: VersionAccuracy, test: float | None, why_not: str, watch: ProductionWatchConfig
) -> VersionWatch:
    """The verdict on one version (see the module docstring for the rule)."""
    if test is None:
        return VersionWatch(live, None, "not compared", why_not)
    if live.judged < watch.min_reviews:
        return VersionWatch(
            live, test, "too few reviews", f"{live.judged} of {watch.min_reviews} judged outputs"
        )
    accuracy, interval = live.accuracy, live.interval
    assert accuracy is not None and interval is not None  # judged >= min_reviews >= 1
    low, high = interval
    figures = f"live {accuracy:.1%} (95% {low:.1%}-{high:.1%}, n={live.judged}) vs test {test:.1%}"
    if test - accuracy <= watch.margin:
        return VersionWatch(live, test, "ok", f"{figures}: within the {watch.margin:.1%} margin")
    if high >= test:
        return VersionWatch(live, test, "within noise", f"{figures}: the interval still reaches test")
    return VersionWatch(
        live, test, "alert", f"{figures}: {test - accuracy:.1%} below, margin {watch.margin:.1%}"
    )


@dataclass(frozen=True)
class ProductionAccuracy:
    """The family's report: every version seen live (and production), production's verdict."""

    family: str
    metric: str | None
    eval_set: str
    current_version: str | None
    versions: list[VersionWatch]  # production first, then newest judgment first
    without_version: int

    @property
    def current(self) -> VersionWatch | None:
        return next((w for w in self.versions if w.version == self.current_version), None)

    @property
    def alert(self) -> bool:
        return self.current is not None and self.current.alert

    def summary(self) -> str:
        if self.current is None:
            return f"{self.family} has no production version yet"
        return f"{self.current.version}: {self.current.status}: {self.current.reason}"

    def to_markdown(self) -> str:
        from pulse_pipeline.core.evaluation.reports import md_escape

        head = f"Live accuracy vs test `{self.metric or 'none'}` on `{self.eval_set}`; production: " + (
            f"`{self.current_version}`" if self.current_version else "none"
        )
        lines = [
            head,
            "",
            "| version | live | 95% interval | judged | test | drop | status | first seen | last seen |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
        ]
        for w in self.versions:
            interval = w.live.interval
            name = (
                f"**{md_escape(w.version)}**" if w.version == self.current_version else md_escape(w.version)
            )
            status = f"**{w.status.upper()}**" if w.alert else w.status
            lines.append(
                f"| {name} | {_pct(w.live.accuracy)} | "
                + (f"{interval[0]:.1%}-{interval[1]:.1%}" if interval else "n/a")
                + f" | {w.live.judged} | {_pct(w.test)} | {_pct(w.drop)} | {status}: {md_escape(w.reason)} | "
                f"{_day(w.live.first_seen)} | {_day(w.live.last_seen)} |"
            )
        if not self.versions:
            lines[2:] = ["No reviewed output names a model version yet."]
        not_judged = Counter[str]()
        for w in self.versions:
            not_judged.update(w.live.not_judged)
        if not_judged or self.without_version:
            lines.append("")
            lines += [f"- not judged, {reason}: {n}" for reason, n in sorted(not_judged.items())]
            if self.without_version:
                lines.append(f"- annotations naming no model_version: {self.without_version}")
        return "\n".join(lines) + "\n"


def production_accuracy(
    rows: Iterable[Any], artifacts: ArtifactStore, family: FamilyConfig
) -> ProductionAccuracy:
    """The family's live accuracy per version from `rows` (one pass), compared with each version's
    test accuracy and the watch's rule."""
    watch = family.automation.production_watch
    metric = metric_of(family)
    seen = live_accuracy(rows, family)
    current = (read_current(artifacts, family.name) or {}).get("version")
    if current and current not in seen.versions:
        seen.versions[current] = VersionAccuracy(current)
    verdicts = [
        assess(live, *eval_accuracy(artifacts, family.name, version, metric, watch.eval_set), watch)
        for version, live in seen.versions.items()
    ]
    oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
    verdicts.sort(key=lambda w: (w.version != current, -(w.live.last_seen or oldest).timestamp(), w.version))
    return ProductionAccuracy(family.name, metric, watch.eval_set, current, verdicts, seen.without_version)


# -- what the sensor may do about an alert -------------------------------------------------------


def rollback_target(
    current: dict[str, Any] | None, alerted: str, alerting: Iterable[str] = ()
) -> tuple[str | None, str]:
    """The version to roll back to from `alerted`, or (None, why not) from the current.json now
    and the versions whose own live accuracy raises an alert (never roll back into one of those)."""
    if current is None or current.get("version") != alerted:
        now = current.get("version") if current else "none"
        return None, f"production is now {now}, not {alerted}: nothing to roll back"
    if len(current.get("traffic") or []) > 1:
        return None, "a canary is running: a rollback would end the canary, not replace " + alerted
    target = current.get("previous_version")
    if not target:
        return None, f"{alerted} has no previous version to roll back to"
    if target in set(alerting):
        return None, f"the previous version {target} is below its own test accuracy too"
    return target, ""


def production_alert(
    family: str, version: str, reason: str, target: str | None, why_not: str, figures: dict[str, Any]
) -> Alert:
    """The alert a person gets: what fell, and the rollback requested or why there is none."""
    if target is not None:
        action = f"Rolling back to {target} (a promote_adapter run)."
    else:
        action = f"Not rolled back: {why_not}. To roll back: `pulse promote --family {family} --previous`."
    return Alert(
        title=f"{family}: {version} is below its test accuracy on live traffic",
        text=f"{reason}. {action}",
        kind="production_accuracy",
        family=family,
        fields={"version": version, "rollback_to": target, **figures},
    )


# -- helpers --------------------------------------------------------------------------------------


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value  # SQLite keeps naive UTC


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _day(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"
