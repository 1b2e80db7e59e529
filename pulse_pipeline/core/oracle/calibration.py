"""Calibration and validation of a family's oracle prompt, before it labels anything at scale.

1. `pulse calibrate`: a stratified sample of the corpus (on-topic, off-topic and edge items by
   the family's prefilter rules: `oracle.prefilter`; without rules, in a classification family
   with an `off_topic_label` and a production version, by that model's probability of the
   off-topic label: ModelScores), labelled by the oracle and compared with what is known about
   each item: a person's label where the corpus has one, else what the prefilter (or the model)
   expects (an off-topic item must get the family's `off_topic_label`, or a mean score at most
   `off_topic_max_score`; an on-topic item must not). Edge items (both or neither rule; the
   model unsure) have no expectation; their answers are shown for a person to look at.
2. `pulse calibrate --validate`: the same on a fresh sample (another seed, none of the
   calibration's items). Validation clearly worse than calibration (by `overfit_drop`) means the
   prompt was tuned to its sample: a warning, and REVIEW.

The decision, with its reasons:
- FAIL: answers that cannot be parsed above `max_unparsed`; off-topic items rated on topic above
  `max_off_topic_errors` (the classic failure: toothbrushes scored as climate technology);
  agreement below `review_agreement`.
- REVIEW: agreement below `pass_agreement`; fewer than `min_items` items with an expectation;
  overfitting (validation).
- PASS otherwise.

Both results are JSON and a Markdown report in the artifact store, under
`oracle/<family>/<prompt version>/` (with the prompt's text), so a person can read why, and
`pulse label` can check that the prompt version it is about to pay for passed both.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.families import FamilyConfig, TaskKind
from pulse_pipeline.core.oracle.corpus import CorpusItem
from pulse_pipeline.core.oracle.oracles import Asked, Oracle, ask_many
from pulse_pipeline.core.oracle.prompts import OraclePrompt
from pulse_pipeline.core.production_accuracy import wilson

ON, OFF, EDGE, ANY = "on_topic", "off_topic", "edge", "unstratified"
PHASES = ("calibration", "validation")
SHOWN_DISAGREEMENTS = 15


class CalibrationError(ValueError):
    """Calibration cannot run as asked (validation before calibration, the same seed, no items)."""


def folder(family: str, version: str) -> str:
    return f"oracle/{family}/{version}"


# -- strata and expectations ------------------------------------------------------------------------


def off_topic_max(family: FamilyConfig) -> float:
    lo, hi = family.score_range
    return (
        family.oracle.off_topic_max_score
        if family.oracle.off_topic_max_score is not None
        else lo + 0.3 * (hi - lo)
    )


@dataclass(frozen=True)
class ModelScores:
    """The current model's view of the corpus, for a family without prefilter rules: per item id,
    the probability its production version gives the `off_topic_label`. At or above OFF_AT an
    item is off topic, at or below ON_AT on topic, between an edge case."""

    version: str
    off_topic: dict[str, float]

    OFF_AT = 0.8
    ON_AT = 0.2

    def stratum(self, item_id: str) -> str:
        p = self.off_topic.get(item_id)
        if p is None:
            return ANY
        return OFF if p >= self.OFF_AT else ON if p <= self.ON_AT else EDGE


def uses_model_strata(family: FamilyConfig) -> bool:
    """Whether calibration stratifies by the current model (no prefilter rules, and a
    classification family with an `off_topic_label` the model can score)."""
    rules = family.oracle.prefilter
    return (
        not rules.on_topic
        and not rules.off_topic
        and family.task is TaskKind.classification
        and family.oracle.off_topic_label is not None
    )


def model_scores(family: FamilyConfig, folder: Any, version: str, items: list[CorpusItem]) -> ModelScores:
    """Score the corpus with a classification adapter folder (its production version)."""
    from pulse_pipeline.core.training.models import load_adapter

    loaded = load_adapter(folder)
    labels = list(loaded.head.labels or ())
    if family.oracle.off_topic_label not in labels:
        raise CalibrationError(
            f"{family.name} {version} has no label {family.oracle.off_topic_label!r} to score off-topic items by"
        )
    column = labels.index(family.oracle.off_topic_label)
    texts = [f"{item.title}\n{item.text}" if item.title else item.text for item in items]
    probs = loaded.predict(texts, max_length=128) if texts else []
    return ModelScores(version, {item.id: float(p[column]) for item, p in zip(items, probs, strict=True)})


def stratum(family: FamilyConfig, item: CorpusItem, model: ModelScores | None = None) -> str:
    """on_topic, off_topic or edge by the prefilter rules, else by the current model's scores;
    `unstratified` when the family has neither."""
    rules = family.oracle.prefilter
    if not rules.on_topic and not rules.off_topic:
        return model.stratum(item.id) if model is not None else ANY
    text = f"{item.title or ''}\n{item.text}"
    on = any(re.search(p, text, re.IGNORECASE) for p in rules.on_topic)
    off = any(re.search(p, text, re.IGNORECASE) for p in rules.off_topic)
    return ON if on and not off else OFF if off and not on else EDGE


def is_off_topic(family: FamilyConfig, fields: dict[str, Any]) -> bool | None:
    """Whether a label says off topic; None when the family has no notion of it (a QA family, or a
    classification family without `off_topic_label`)."""
    if family.task is TaskKind.classification:
        label = family.oracle.off_topic_label
        return None if label is None else fields["label"] == label
    if family.task is TaskKind.regression:
        scores = list(fields["scores"].values())
        return sum(scores) / len(scores) <= off_topic_max(family)
    return None


def agrees_with_human(family: FamilyConfig, answer: dict[str, Any], human: dict[str, Any]) -> bool | None:
    """Whether the oracle's answer agrees with a person's label of the item; None if not comparable."""
    if family.task is TaskKind.classification and "label" in human:
        return answer["label"] == human["label"]
    if family.task is TaskKind.regression and "scores" in human:
        lo, hi = family.score_range
        tolerance = family.oracle.calibration.score_tolerance * (hi - lo)
        dims = [d for d in family.dimensions or () if d in human["scores"]]
        return bool(dims) and all(abs(answer["scores"][d] - human["scores"][d]) <= tolerance for d in dims)
    if family.task is TaskKind.chat_sft and "answer" in human:
        return _token_f1(answer["answer"], human["answer"]) >= 0.5
    return None


def _token_f1(a: str, b: str) -> float:
    ta, tb = Counter(re.findall(r"\w+", a.lower())), Counter(re.findall(r"\w+", b.lower()))
    common = sum((ta & tb).values())
    if not common:
        return 0.0
    p, r = common / sum(ta.values()), common / sum(tb.values())
    return 2 * p * r / (p + r)


# -- the sample ------------------------------------------------------------------------------------


def stratified_sample(
    family: FamilyConfig,
    items: list[CorpusItem],
    counts: dict[str, int],
    seed: int,
    exclude: set[str],
    model: ModelScores | None = None,
) -> list[tuple[CorpusItem, str]]:
    """Up to counts[stratum] items of each stratum (all counts summed when the family has no
    strata), drawn with `seed`, none of `exclude`; (item, stratum), in a stable order."""
    by_stratum: dict[str, list[CorpusItem]] = {}
    for item in sorted(items, key=lambda i: i.id):
        if item.id not in exclude:
            by_stratum.setdefault(stratum(family, item, model), []).append(item)
    if ANY in by_stratum and len(by_stratum) == 1:
        counts = {ANY: sum(counts.values())}
    rng = random.Random(seed)
    sample: list[tuple[CorpusItem, str]] = []
    for name in (ON, OFF, EDGE, ANY):
        pool = by_stratum.get(name, [])
        for item in rng.sample(pool, min(counts.get(name, 0), len(pool))):
            sample.append((item, name))
    return sample


# -- the result ------------------------------------------------------------------------------------


@dataclass
class CalibrationResult:
    phase: str  # calibration | validation
    family: str
    prompt_version: str
    prompt_source: str
    oracle: str
    seed: int
    decision: str = "REVIEW"
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    requested: dict[str, int] = field(default_factory=dict)
    at: str = ""
    calibration_seed: int | None = None  # validation: the calibration it checks
    report_key: str = ""
    strata: str = "prefilter"  # what drew the strata: prefilter | model <version> | none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _judge(
    family: FamilyConfig, item: CorpusItem, name: str, asked: Asked, basis: str = "prefilter"
) -> dict[str, Any]:
    """One item's row: what was expected, what the oracle said, whether they agree."""
    row: dict[str, Any] = {
        "id": item.id,
        "stratum": name,
        "text": item.text[:200],
        "answer": asked.fields,
        "reply": asked.reply[:200],
        "error": asked.error,
        "failed": asked.failed,
        "expected": None,
        "agrees": None,
        "off_topic_error": None,
    }
    if asked.fields is None:
        return row
    off_topic_now = is_off_topic(family, asked.fields)
    human_off = is_off_topic(family, item.human) if item.human and _has_shape(family, item.human) else None
    if item.human and (agree := agrees_with_human(family, asked.fields, item.human)) is not None:
        row.update(expected={"human": item.human}, agrees=agree)
    elif name in (ON, OFF) and off_topic_now is not None:
        row.update(expected={basis: name}, agrees=off_topic_now == (name == OFF))
    truly_off = human_off if human_off is not None else (name == OFF)
    if truly_off and off_topic_now is not None:
        row["off_topic_error"] = not off_topic_now
    return row


def _has_shape(family: FamilyConfig, human: dict[str, Any]) -> bool:
    if family.task is TaskKind.classification:
        return "label" in human
    if family.task is TaskKind.regression:
        return "scores" in human and all(d in human["scores"] for d in family.dimensions or ())
    return False


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _decide(family: FamilyConfig, result: CalibrationResult, previous: dict[str, Any] | None) -> None:
    cfg = family.oracle.calibration
    rows = result.items
    n = len(rows)
    failed = sum(1 for r in rows if r["failed"])
    unparsed = sum(1 for r in rows if r["answer"] is None and not r["failed"])
    judged = [r for r in rows if r["agrees"] is not None]
    agreed = sum(1 for r in judged if r["agrees"])
    off = [r for r in rows if r["off_topic_error"] is not None]
    off_errors = sum(1 for r in off if r["off_topic_error"])
    agreement = agreed / len(judged) if judged else None
    interval = wilson(agreed, len(judged)) if judged else None
    by_stratum = Counter(r["stratum"] for r in rows)
    result.metrics = {
        "sampled": n,
        "by_stratum": dict(by_stratum),
        "failed_calls": failed,
        "unparsed": unparsed,
        "unparsed_share": (unparsed / (n - failed)) if n - failed else None,
        "judged": len(judged),
        "agreed": agreed,
        "agreement": agreement,
        "agreement_interval": list(interval) if interval else None,
        "off_topic_items": len(off),
        "off_topic_errors": off_errors,
        "off_topic_error_share": off_errors / len(off) if off else None,
        "answers": _answer_summary(family, rows),
    }
    fail, review = [], []
    if n == 0:
        raise CalibrationError("the sample is empty: the corpus has no item left to draw")
    if failed == n:
        fail.append(f"every call to the oracle failed; first: {rows[0]['error']}")
    elif failed:
        review.append(
            f"{failed} of {n} calls to the oracle failed; first: {next(r['error'] for r in rows if r['failed'])}"
        )
    share = result.metrics["unparsed_share"]
    if share is not None and share > cfg.max_unparsed:
        fail.append(
            f"{unparsed} of {n - failed} answers could not be parsed ({_pct(share)} > {_pct(cfg.max_unparsed)})"
        )
    if off and off_errors / len(off) > cfg.max_off_topic_errors:
        example = next(r for r in off if r["off_topic_error"])
        fail.append(
            f"{off_errors} of {len(off)} off-topic items were rated on topic ({_pct(off_errors / len(off))} > "
            f"{_pct(cfg.max_off_topic_errors)}), e.g. {example['text'][:80]!r} -> {_show(example['answer'])}"
        )
    if agreement is not None:
        lo, hi = interval or (0.0, 1.0)
        said = f"agreement {_pct(agreement)} [{_pct(lo)}, {_pct(hi)}] on {len(judged)} items"
        if agreement < cfg.review_agreement:
            fail.append(f"{said}, below {_pct(cfg.review_agreement)}")
        elif agreement < cfg.pass_agreement:
            review.append(f"{said}, below {_pct(cfg.pass_agreement)}")
        else:
            result.reasons.append(said)
    if len(judged) < cfg.min_items:
        review.append(
            f"only {len(judged)} item(s) could be checked against a person's label, the prefilter or the "
            f"current model (at least {cfg.min_items}): add labelled items or prefilter rules"
        )
    if (
        previous is not None
        and agreement is not None
        and previous.get("metrics", {}).get("agreement") is not None
    ):
        before = previous["metrics"]["agreement"]
        if agreement < before - cfg.overfit_drop:
            warning = (
                f"overfitting: validation agreement {_pct(agreement)} is clearly below calibration's "
                f"{_pct(before)} (by more than {_pct(cfg.overfit_drop)}); the prompt may be tuned to the "
                "calibration sample"
            )
            result.warnings.append(warning)
            review.append(warning)
    result.decision = "FAIL" if fail else "REVIEW" if review else "PASS"
    result.reasons = fail + review + result.reasons
    if off and not off_errors:
        result.reasons.append(f"0 of {len(off)} off-topic items rated on topic")


def _answer_summary(family: FamilyConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stratum: label counts (classification) or the mean of mean scores (regression)."""
    out: dict[str, Any] = {}
    for name in sorted({r["stratum"] for r in rows}):
        answers = [r["answer"] for r in rows if r["stratum"] == name and r["answer"] is not None]
        if family.task is TaskKind.classification:
            out[name] = dict(Counter(a["label"] for a in answers).most_common())
        elif family.task is TaskKind.regression and answers:
            means = [sum(a["scores"].values()) / len(a["scores"]) for a in answers]
            out[name] = {"mean_score": round(sum(means) / len(means), 3), "answers": len(means)}
    return out


def _show(answer: dict[str, Any] | None) -> str:
    if answer is None:
        return "(no answer)"
    if "label" in answer:
        return answer["label"]
    if "scores" in answer:
        return json.dumps(answer["scores"])
    return repr(answer.get("answer", "")[:60])


# -- running ------------------------------------------------------------------------------------------


def read_result(artifacts: ArtifactStore, family: str, version: str, phase: str) -> dict[str, Any] | None:
    key = f"{folder(family, version)}/{phase}.json"
    return json.loads(artifacts.read_text(key)) if artifacts.exists(key) else None


def calibrate(
    family: FamilyConfig,
    prompt: OraclePrompt,
    oracle: Oracle,
    items: list[CorpusItem],
    artifacts: ArtifactStore,
    *,
    counts: dict[str, int],
    seed: int,
    validate: bool = False,
    now: dt.datetime | None = None,
    model: ModelScores | None = None,
) -> CalibrationResult:
    """Run calibration (or validation) of the prompt on a sample of `items`; store and return it.
    `counts`: {"on_topic": n, "off_topic": n, "edge": n}; `model`: the current model's scores,
    which draw the strata (and say what to expect) when the family has no prefilter rules."""
    phase = "validation" if validate else "calibration"
    previous = None
    exclude: set[str] = set()
    if validate:
        previous = read_result(artifacts, family.name, prompt.version, "calibration")
        if previous is None:
            raise CalibrationError(
                f"prompt version {prompt.version} of {family.name} has no calibration yet: run "
                f"`pulse calibrate --family {family.name} --input CORPUS` first"
            )
        if previous["seed"] == seed:
            raise CalibrationError(
                f"validation needs a fresh sample: --seed {seed} is the calibration's; pick another"
            )
        exclude = {row["id"] for row in previous["items"]}
    rules = family.oracle.prefilter
    if rules.on_topic or rules.off_topic:
        model, strata = None, "prefilter"
    else:
        strata = f"model {model.version}" if model is not None else "none"
    sample = stratified_sample(family, items, counts, seed, exclude, model)
    if not sample:
        raise CalibrationError(
            f"no item to sample: the corpus has {len(items)} item(s)"
            + (f", all {len(exclude)} of them in the calibration's sample" if exclude else "")
        )
    asked = ask_many(
        oracle,
        prompt,
        family,
        [item for item, _ in sample],
        retries=family.oracle.parse_retries,
        max_tokens=family.oracle.max_new_tokens,
    )
    result = CalibrationResult(
        phase=phase,
        family=family.name,
        prompt_version=prompt.version,
        prompt_source=prompt.source,
        oracle=oracle.name,
        seed=seed,
        requested=dict(counts),
        at=(now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        calibration_seed=previous["seed"] if previous else None,
        strata=strata,
    )
    basis = "model" if model is not None else "prefilter"
    result.items = [
        _judge(family, item, name, a, basis) for (item, name), a in zip(sample, asked, strict=True)
    ]
    _decide(family, result, previous)
    result.metrics.update(
        prompt_tokens=sum(a.prompt_tokens for a in asked),
        completion_tokens=sum(a.completion_tokens for a in asked),
        cost=round(sum(a.cost for a in asked), 6),
    )
    base = folder(family.name, prompt.version)
    result.report_key = f"{base}/{phase}_report.md"
    artifacts.write_text(f"{base}/prompt.txt", prompt.template)
    artifacts.write_text(result.report_key, report(result, prompt))
    artifacts.write_text(f"{base}/{phase}.json", json.dumps(result.to_dict(), indent=2))
    return result


@dataclass(frozen=True)
class PromptState:
    """Whether a prompt version may label: both phases PASS, validation of the latest calibration."""

    version: str
    calibration: str | None  # its decision, or None when never run
    validation: str | None

    @property
    def ready(self) -> bool:
        return self.calibration == "PASS" and self.validation == "PASS"

    def describe(self) -> str:
        return f"calibration: {self.calibration or 'not run'}, validation: {self.validation or 'not run'}"


def prompt_state(artifacts: ArtifactStore, family: str, version: str) -> PromptState:
    cal = read_result(artifacts, family, version, "calibration")
    val = read_result(artifacts, family, version, "validation")
    if val is not None and (cal is None or val.get("calibration_seed") != cal["seed"]):
        val = None  # it validated an earlier calibration
    return PromptState(version, cal and cal["decision"], val and val["decision"])


# -- the report ---------------------------------------------------------------------------------------


def report(result: CalibrationResult, prompt: OraclePrompt) -> str:
    m = result.metrics
    lines = [
        f"# Oracle {result.phase}: {result.family}, prompt {result.prompt_version}",
        "",
        f"**{result.decision}**",
        "",
        *[f"- {reason}" for reason in result.reasons],
        "",
        "| | |",
        "|---|---|",
        f"| oracle | {result.oracle} |",
        f"| prompt | {result.prompt_version} ({prompt.source}) |",
        f"| seed | {result.seed}"
        + (f" (calibration's: {result.calibration_seed})" if result.calibration_seed is not None else "")
        + " |",
        f"| sampled | {m['sampled']}: "
        + ", ".join(f"{n} {s}" for s, n in sorted(m["by_stratum"].items()))
        + " |",
        "| requested | " + ", ".join(f"{n} {s}" for s, n in result.requested.items()) + " |",
        f"| strata by | {result.strata} |",
        f"| checked against a label, the prefilter or the model | {m['judged']} (agreed {m['agreed']}) |",
        f"| unparsed answers | {m['unparsed']} |",
        f"| failed calls | {m['failed_calls']} |",
        f"| off-topic items rated on topic | {m['off_topic_errors']} of {m['off_topic_items']} |",
        f"| tokens | {m.get('prompt_tokens', 0):,} in, {m.get('completion_tokens', 0):,} out |",
        f"| cost | {m.get('cost', 0):g} |",
        f"| at | {result.at} |",
        "",
    ]
    if result.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in result.warnings], ""]
    if m["answers"]:
        lines += ["## Answers by stratum", ""]
        lines += [f"- {name}: {json.dumps(summary)}" for name, summary in m["answers"].items()]
        lines.append("")
    wrong = [r for r in result.items if r["agrees"] is False or r["off_topic_error"] or r["answer"] is None]
    if wrong:
        lines += [
            f"## Disagreements and unparsed answers (first {min(len(wrong), SHOWN_DISAGREEMENTS)} of {len(wrong)})",
            "",
            "| item | stratum | expected | answer | text |",
            "|---|---|---|---|---|",
        ]
        for r in wrong[:SHOWN_DISAGREEMENTS]:
            expected = json.dumps(r["expected"]) if r["expected"] else "-"
            answer = _show(r["answer"]) if r["answer"] is not None else f"({r['error']})"
            lines.append(
                f"| {r['id']} | {r['stratum']} | {_cell(expected)} | {_cell(answer)} | {_cell(r['text'][:100])} |"
            )
        lines.append("")
    lines += ["## The prompt", "", "```text", prompt.template.rstrip(), "```", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
