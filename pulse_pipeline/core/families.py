"""Adapter families: the typed form of `pulse.yaml`, and the errors a user gets for a bad file."""

from __future__ import annotations

import datetime as dt
import difflib
import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pulse_pipeline.core.evaluation.config import EvaluationConfig


class TaskKind(StrEnum):
    chat_sft = "chat_sft"
    classification = "classification"
    regression = "regression"


class AnnotationKind(StrEnum):
    call_correction = "call_correction"
    segment_review = "segment_review"
    intent_label = "intent_label"
    score_label = "score_label"
    qa_pair = "qa_pair"
    feedback = "feedback"
    interaction = "interaction"


# Kinds every family accepts, whatever it learns from: what production logs through the capture
# service (each model call, and the users' feedback on it). A family learns from them only when
# they are among its `annotation_kinds` (feedback), or, for classification families that learn from
# intent labels, from an interaction's predicted label once triage approves it.
LOGGED_KINDS = frozenset({AnnotationKind.interaction, AnnotationKind.feedback})
# Which annotation kinds can feed which task kind.
KINDS_FOR_TASK: dict[TaskKind, frozenset[AnnotationKind]] = {
    TaskKind.chat_sft: frozenset(
        {
            AnnotationKind.call_correction,
            AnnotationKind.segment_review,
            AnnotationKind.qa_pair,
            AnnotationKind.feedback,
        }
    ),
    TaskKind.classification: frozenset({AnnotationKind.intent_label}),
    TaskKind.regression: frozenset({AnnotationKind.score_label}),
}

# Placeholders each chat prompt template may use.
PROMPT_FIELDS: dict[str, set[str]] = {
    "call_correction": {"transcript", "call_id"},
    "segment_review": {"segment_heading", "segment_text", "segment_type", "call_id"},
    "qa_pair": {"question"},
    "feedback": {"query"},
}

_FAMILY_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ConfigError(ValueError):
    """A `pulse.yaml` the user must fix; the message names the file, the family and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TriageConfig(_Strict):
    """Routing of captured predictions (records with a confidence and no annotator)."""

    auto_approve_above: float = Field(
        0.85, ge=0, le=1, description="Primary-provider confidence above which a capture is approved."
    )
    review_below: float = Field(0.70, ge=0, le=1, description="Confidence below which review is a priority.")
    primary_provider: str = Field(
        "encoder", description="The provider whose confident predictions are trusted."
    )

    @model_validator(mode="after")
    def _ordered(self) -> TriageConfig:
        if self.review_below > self.auto_approve_above:
            raise ValueError("'review_below' must not exceed 'auto_approve_above'")
        return self


class RedactionConfig(_Strict):
    """PII redaction of every text that leaves the store for training or export."""

    enabled: bool = Field(
        True, description="Replace e-mails, phones, cards and IBANs with [EMAIL], [PHONE] ..."
    )
    extra_patterns: dict[str, str] = Field(
        default_factory=dict, description="More patterns: placeholder name -> regular expression."
    )

    @field_validator("extra_patterns")
    @classmethod
    def _compiles(cls, v: dict[str, str]) -> dict[str, str]:
        for name, rx in v.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"placeholder name {name!r} must be a word (letters, digits, _)")
            try:
                re.compile(rx)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regular expression: {exc}") from None
        return v


class SplitConfig(_Strict):
    """How a snapshot divides its examples (stratified, group-aware, deterministic)."""

    train: float = Field(0.8, gt=0, lt=1, description="Share of examples in train.")
    val: float = Field(0.1, ge=0, lt=1, description="Share in validation.")
    test: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share in test; 0 only with `evaluation.test_file` (then the default is train 0.9, "
        "val 0.1, test 0).",
    )
    seed: int = Field(13, description="Seed of the deterministic assignment of groups to splits.")
    min_examples_per_label: int = Field(5, ge=1, description="A label with fewer train examples is flagged.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        return self


class DriftConfig(_Strict):
    """When the data has moved away from what the production adapter was trained on
    (`<family>/drift_report`, fields explained in pulse_pipeline/core/drift/)."""

    enabled: bool = Field(True, description="Build `<family>/drift_report` and watch it with `drift_<family>`.")
    window_days: int = Field(30, ge=1, description="Recent annotations: those created in the last N days.")
    encoder: str = Field(
        "minilm-l6", description="Sentence encoder whose mean-pooled embeddings are compared (a base_model name)."
    )
    threshold: float = Field(
        0.75, gt=0.5, le=1, description="Drift score (domain-classifier AUC, 0.5 = no drift) that asks for a retrain."
    )
    distribution_threshold: float = Field(
        0.2, gt=0, description="Label/score distribution drift (PSI) that asks for a retrain."
    )
    significance: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="A score or PSI over its threshold counts only when its permutation p-value is below this "
        "(small samples inflate PSI and vary the AUC; 200 permutations resolve p down to 0.005).",
    )
    min_new_annotations: int = Field(
        20, ge=1, description="New trainable annotations a drift-started retrain needs at least."
    )
    min_samples: int = Field(
        20, ge=5, description="Per side: with fewer examples the report says there is too little to compare."
    )
    max_samples: int = Field(
        2000, ge=50, description="Per side: larger sides are sampled (by a seeded hash of the example id)."
    )
    seed: int = Field(0, description="Seed of the sampling, the permutation tests and the cross-validation folds.")

    @model_validator(mode="after")
    def _sample_bounds(self) -> DriftConfig:
        if self.min_samples > self.max_samples:
            raise ValueError("'min_samples' must not exceed 'max_samples'")
        return self


class ScheduleConfig(_Strict):
    """Which scheduled retrains include this family."""

    nightly: bool = Field(True, description="`nightly_retrain` (02:00 UTC) retrains when enough is new.")
    weekly: bool = Field(True, description="`weekly_retrain` (Sunday 03:00 UTC) retrains on any new data.")
    quarterly: bool = Field(
        False, description="`quarterly_retrain` (first day of a quarter, 04:00 UTC) retrains even with nothing new."
    )


class ProductionWatchConfig(_Strict):
    """Accuracy on live traffic (reviewed annotations carrying `model_version`) vs the test accuracy
    (what counts as right per annotation kind, and the alert rule: core/production_accuracy.py)."""

    margin: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Alert when live accuracy falls more than this below test "
        "(and the test accuracy lies above the live 95% interval).",
    )
    min_reviews: int = Field(
        30, ge=1, description="Judged live outputs a version needs before it is compared."
    )
    rollback: bool = Field(False, description="Also roll back to the previous version on an alert.")
    metric: str | None = Field(
        None,
        description="The evaluation metric live accuracy is compared with (default per task: "
        "classification accuracy, call-analysis field_accuracy, question answering answer_accuracy; "
        "regression has none).",
    )
    eval_set: str = Field(
        "test", description="The evaluation set (in eval/results.json) the metric is read from."
    )


class PreferencesConfig(_Strict):
    """Preference data built from a chat family's feedback (core/preferences.py)."""

    desirable_min_rating: int = Field(
        4, ge=2, le=5, description="A rating at or above this (or a thumbs up) is a desirable KTO example."
    )
    undesirable_max_rating: int = Field(
        2, ge=1, le=4, description="A rating at or below this (or a thumbs down) is an undesirable one."
    )
    max_pairs_per_prompt: int = Field(
        10, ge=1, description="DPO pairs made from several rated responses to one prompt, at most."
    )

    @model_validator(mode="after")
    def _apart(self) -> PreferencesConfig:
        if self.undesirable_max_rating >= self.desirable_min_rating:
            raise ValueError("'undesirable_max_rating' must be below 'desirable_min_rating'")
        return self


class OracleCalibrationConfig(_Strict):
    """When an oracle prompt passes calibration and validation (core/oracle/calibration.py)."""

    pass_agreement: float = Field(
        0.8, gt=0, le=1, description="Agreement (with human labels, else the prefilter) at or above this: PASS."
    )
    review_agreement: float = Field(0.6, ge=0, le=1, description="Agreement below this: FAIL; between: REVIEW.")
    max_off_topic_errors: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of the prefilter's off-topic items the oracle rates as on-topic above which: FAIL.",
    )
    max_unparsed: float = Field(0.1, ge=0, le=1, description="Share of unparseable answers above which: FAIL.")
    score_tolerance: float = Field(
        0.1, gt=0, le=1, description="Regression: a score within this share of the range of the human's agrees."
    )
    overfit_drop: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Validation agreement this far below calibration's is overfitting: a warning and REVIEW.",
    )
    min_items: int = Field(10, ge=1, description="Fewer judged items than this: REVIEW (too few to tell).")

    @model_validator(mode="after")
    def _ordered(self) -> OracleCalibrationConfig:
        if self.review_agreement > self.pass_agreement:
            raise ValueError("'review_agreement' must not be above 'pass_agreement'")
        return self


class PrefilterConfig(_Strict):
    """Rules that tell on-topic from off-topic items before any oracle sees them."""

    on_topic: tuple[str, ...] = Field(
        (), description="Regular expressions (case-insensitive); an item matching one is on topic."
    )
    off_topic: tuple[str, ...] = Field(
        (), description="Regular expressions; an item matching one (and no on-topic one) is off topic."
    )

    @field_validator("on_topic", "off_topic")
    @classmethod
    def _compiles(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is no regular expression: {exc}") from None
        return v


class QaGenerationConfig(_Strict):
    """QA pairs generated from documents (`pulse generate-qa`, core/oracle/qa_generation.py)."""

    prompt: Path | None = Field(
        None,
        description="The generation prompt template (relative to pulse.yaml; placeholders {{passage}}, "
        "{{title}}, {{n}}). Default: the built-in self-instruct prompt.",
    )
    per_passage: int = Field(2, ge=1, le=20, description="Question-answer pairs asked for per passage.")
    passage_chars: int = Field(
        1200, ge=200, description="A passage: paragraphs of one document merged up to this many characters."
    )
    min_grounding: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Share of an answer's content words that must occur in its passage; below: quarantined.",
    )
    max_new_tokens: int = Field(320, ge=16, description="Tokens one passage's answer may take.")


class OracleConfig(_Strict):
    """Labelling new data with an LLM (core/oracle/): the prompt, what off topic means, the gates."""

    prompt: Path | None = Field(
        None,
        description="The prompt template file (relative to pulse.yaml); its content hash is the prompt "
        "version. Default: the built-in prompt of the family's task.",
    )
    prefilter: PrefilterConfig = Field(default_factory=PrefilterConfig, description="On- and off-topic rules.")
    off_topic_label: str | None = Field(
        None, description="Classification: the label an off-topic item must get (e.g. 'oos')."
    )
    off_topic_max_score: float | None = Field(
        None,
        description="Regression: the highest mean score an off-topic item may get (default: the bottom "
        "30 % of score_range).",
    )
    calibration: OracleCalibrationConfig = Field(
        default_factory=OracleCalibrationConfig, description="PASS / REVIEW / FAIL thresholds."
    )
    weight: float = Field(
        1.0, ge=0, description="Sample weight of oracle labels, times the kind's weight (humans' stay 1.0)."
    )
    parse_retries: int = Field(
        2, ge=0, description="Retries (sampled, temperature 0.7) of an unparseable answer before quarantine."
    )
    max_new_tokens: int = Field(96, ge=1, description="Tokens an oracle answer may take.")
    max_cost: float | None = Field(
        None, ge=0, description="Default cost cap of a labelling job (`pulse label --max-cost`); None: no cap."
    )
    generate_qa: QaGenerationConfig = Field(
        default_factory=QaGenerationConfig, description="QA pairs from documents (`pulse generate-qa`)."
    )


class NegativeFeedbackConfig(_Strict):
    """Users' negative verdicts on the production version (core/negative_feedback.py)."""

    enabled: bool = Field(True, description="Watch them with the `negative_feedback_<family>` sensor.")
    threshold: int = Field(
        10, ge=1, description="Negative feedback on the production version within the window that acts."
    )
    window_hours: float = Field(24, gt=0, description="The window: feedback created in the last N hours.")
    max_rating: int = Field(
        2, ge=1, le=4, description="A rating at or below this is negative (so are thumbs down and corrections)."
    )
    action: Literal["retrain", "alert"] = Field(
        "retrain", description="retrain: start the family's retrain (and alert); alert: only post an alert."
    )


class AutomationConfig(_Strict):
    """Sensors, schedules and run limits of one family."""

    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift report and sensor.")
    schedules: ScheduleConfig = Field(default_factory=ScheduleConfig, description="Scheduled retrains.")
    production_watch: ProductionWatchConfig = Field(
        default_factory=ProductionWatchConfig, description="Live accuracy watch and optional rollback."
    )
    negative_feedback: NegativeFeedbackConfig = Field(
        default_factory=NegativeFeedbackConfig,
        description="Retrain (or alert) on users' negative feedback on the production version.",
    )
    max_run_minutes: int = Field(90, ge=1, description="A retrain run is stopped after this long.")
    new_annotations_interval_seconds: int = Field(
        300, ge=5, description="Seconds between two ticks of the family's new-annotations sensor."
    )
    keep_versions: int = Field(5, ge=1, description="Adapter versions `cleanup_adapters` keeps by default.")


class ResourcesConfig(_Strict):
    """Where the family's training runs and in how many processes (the `<family>/adapter` step)."""

    launcher: Literal["in_process", "subprocess", "kubernetes"] = Field(
        "in_process",
        description="in_process: the adapter step trains in its own process (the embedded default); "
        "subprocess: the step starts `python -m pulse_pipeline.core.training` (under torchrun when "
        "processes_per_node > 1) through Dagster Pipes, which streams its progress back; kubernetes: "
        "the same command in a pod of its own (dagster-k8s PipesK8sClient).",
    )
    processes_per_node: int = Field(
        1, ge=1, le=64, description="Training processes (DDP ranks) per machine: one per GPU on CUDA."
    )
    nodes: int = Field(1, ge=1, le=1, description="Machines; one for now (a pod or this machine).")
    gpus_per_node: int | None = Field(
        None, ge=0, description="kubernetes: GPUs the pod asks for (default: processes_per_node)."
    )
    image: str | None = Field(
        None, description="kubernetes: the training pod's image (default: PULSE_TRAINING_IMAGE)."
    )
    namespace: str | None = Field(None, description="kubernetes: the pod's namespace (default: the run's).")

    @model_validator(mode="after")
    def _launcher_fits(self) -> ResourcesConfig:
        if self.processes_per_node > 1 and self.launcher == "in_process":
            raise ValueError(
                "processes_per_node > 1 needs launcher: subprocess (torchrun on this machine) or kubernetes"
            )
        return self


class FamilyConfig(_Strict):
    """One line of fine-tuned adapters: its data, base model, task kind and thresholds."""

    name: str = Field(description="Family name; the Dagster asset key prefix.")
    task: TaskKind = Field(description="chat_sft, classification or regression.")
    annotation_kinds: tuple[AnnotationKind, ...] = Field(
        description="Annotation kinds this family learns from."
    )
    base_model: str = Field(description="'tiny', 'smollm2-135m', 'minilm-l6', a local folder or a hub name.")
    description: str = Field("", description="One line for people reading the UI.")
    labels: tuple[str, ...] | None = Field(None, description="Classification label set.")
    labels_file: Path | None = Field(
        None, description="A text file with one label a line, relative to pulse.yaml (instead of labels)."
    )
    dimensions: tuple[str, ...] | None = Field(None, description="Regression dimension names.")
    score_range: tuple[float, float] = Field((0.0, 10.0), description="Allowed [min, max] of a score.")
    min_new_annotations: int = Field(50, ge=1, description="New annotations that start a retrain.")
    weights: dict[AnnotationKind, float] = Field(
        default_factory=dict,
        description="Sample weight per annotation kind (default 1.0; segment rules fixed).",
    )
    prompts: dict[str, str] = Field(
        default_factory=dict,
        description="Chat families: 'system' and one template per annotation kind ({transcript}, {question} ...).",
    )
    triage: TriageConfig = Field(default_factory=TriageConfig, description="Routing of captured predictions.")
    redaction: RedactionConfig = Field(default_factory=RedactionConfig, description="PII redaction.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Snapshot split settings.")
    training: dict[str, Any] = Field(
        default_factory=dict,
        description="Training settings over the task's defaults and an optional preset "
        "(fields in pulse_pipeline/core/training/config.py).",
    )
    preferences: PreferencesConfig = Field(
        default_factory=PreferencesConfig,
        description="Chat families: how feedback becomes DPO pairs and KTO examples.",
    )
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig,
        description="Evaluation sets, metrics and the promotion gate "
        "(fields in pulse_pipeline/core/evaluation/config.py).",
    )

    automation: AutomationConfig = Field(
        default_factory=AutomationConfig,
        description="Drift watch, scheduled retrains, live accuracy watch, run time limit.",
    )
    oracle: OracleConfig = Field(
        default_factory=OracleConfig, description="Labelling new data with an LLM oracle (`pulse label`)."
    )
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig,
        description="Where training runs: in the step, a subprocess through Dagster Pipes, or a pod; processes.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, v: str) -> str:
        if not _FAMILY_NAME.match(v):
            raise ValueError("must be lowercase words joined by '-', e.g. 'call-analysis'")
        return v

    @field_validator("annotation_kinds")
    @classmethod
    def _non_empty(cls, v: tuple[AnnotationKind, ...]) -> tuple[AnnotationKind, ...]:
        if not v:
            raise ValueError("must list at least one annotation kind")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> FamilyConfig:
        if self.evaluation.test_file is not None and "split" not in self.model_fields_set:
            # the user's test file is the test set (frozen model: set once, here)
            object.__setattr__(self, "split", SplitConfig(train=0.9, val=0.1, test=0.0))
        if self.split.test == 0 and self.evaluation.test_file is None:
            raise ValueError("split.test is 0: set evaluation.test_file, the test set the family is judged on")
        allowed = KINDS_FOR_TASK[self.task]
        for kind in self.annotation_kinds:
            if kind not in allowed:
                raise ValueError(
                    f"annotation kind '{kind}' cannot train a {self.task} family "
                    f"(allowed: {', '.join(sorted(allowed))})"
                )
        if self.task is TaskKind.classification:
            if (self.labels is None) == (self.labels_file is None):
                raise ValueError("a classification family needs exactly one of 'labels' or 'labels_file'")
            if self.labels is not None and len(set(self.labels)) < 2:
                raise ValueError("'labels' needs at least two distinct labels")
        elif self.labels is not None or self.labels_file is not None:
            raise ValueError(f"'labels' only applies to classification families, not {self.task}")
        if self.task is TaskKind.regression:
            if not self.dimensions:
                raise ValueError("a regression family needs 'dimensions'")
            if len(set(self.dimensions)) != len(self.dimensions):
                raise ValueError("'dimensions' has duplicates")
        elif self.dimensions is not None:
            raise ValueError(f"'dimensions' only applies to regression families, not {self.task}")
        if self.task is TaskKind.chat_sft:
            missing = [
                k for k in ("system", *self.annotation_kinds) if k != "feedback" and k not in self.prompts
            ]
            if (
                "feedback" in self.annotation_kinds
                and "qa_pair" not in self.prompts
                and "feedback" not in self.prompts
            ):
                missing.append("feedback")
            if missing:
                raise ValueError(f"a chat_sft family needs prompts for: {', '.join(missing)}")
        for kind, template in self.prompts.items():
            if kind != "system" and kind not in PROMPT_FIELDS:
                raise ValueError(
                    f"prompts.{kind}: not an annotation kind with a prompt ({', '.join(PROMPT_FIELDS)})"
                )
            unknown = set(re.findall(r"{(\w+)}", template)) - PROMPT_FIELDS.get(kind, set())
            if unknown:
                raise ValueError(f"prompts.{kind}: unknown placeholder(s) {', '.join(sorted(unknown))}")
        from pulse_pipeline.core.training.config import TrainingConfigError, resolve_training_config

        try:
            resolve_training_config(self.task.value, self.training)
        except TrainingConfigError as exc:
            raise ValueError(str(exc)) from None
        lo, hi = self.score_range
        if lo >= hi:
            raise ValueError(f"'score_range' [{lo}, {hi}] must have min < max")
        oracle = self.oracle
        if oracle.off_topic_label is not None and oracle.off_topic_label not in (self.labels or (oracle.off_topic_label,)):
            raise ValueError(f"oracle.off_topic_label {oracle.off_topic_label!r} is not one of the family's labels")
        return self

    @property
    def has_oracle(self) -> bool:
        """The family declares an `oracle:` block (even `oracle: {}`): the oracle commands and assets."""
        return "oracle" in self.model_fields_set

    @property
    def snake(self) -> str:
        """The name as a Python identifier, for job and sensor names (`call_analysis`)."""
        return self.name.replace("-", "_")

    @cached_property
    def label_set(self) -> frozenset[str]:
        return frozenset(self.labels or ())

    def accepts(self, kind: str) -> bool:
        """Whether records of `kind` belong to this family: the kinds it learns from, and the logged ones."""
        return kind in self.annotation_kinds or kind in LOGGED_KINDS


class PulseConfig(_Strict):
    """The whole `pulse.yaml`."""

    annotations_start_date: dt.date = Field(
        dt.date(2025, 1, 1),
        description="First day of the daily annotation partitions: set it to the first day of your data "
        "(every day from it to today is a partition; records before it are in no partition).",
    )
    families: dict[str, FamilyConfig]

    def family(self, name: str) -> FamilyConfig:
        try:
            return self.families[name]
        except KeyError:
            raise ConfigError(
                f"unknown family '{name}' (declared: {', '.join(self.families) or 'none'})"
            ) from None


def load_config(path: str | Path) -> PulseConfig:
    """Read and validate `pulse.yaml`; raise ConfigError with one line per problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (set PULSE_CONFIG to point at your pulse.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    return parse_config(raw, source=str(path), base_dir=path.parent)


def parse_config(raw: Any, *, source: str = "pulse.yaml", base_dir: Path | None = None) -> PulseConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'families' key")
    families_raw = raw.get("families")
    if not isinstance(families_raw, dict) or not families_raw:
        raise ConfigError(f"{source}: 'families' must be a non-empty mapping of family name to settings")
    # The mapping key is the family name; fill it in so each block reads naturally.
    data = dict(raw)
    data["families"] = {
        name: ({"name": name, **block} if isinstance(block, dict) else block)
        for name, block in families_raw.items()
    }
    try:
        config = PulseConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(e, source) for e in exc.errors())) from None
    if base_dir is not None:
        config = _resolve_label_files(config, base_dir, source)
        config = _resolve_evaluation_files(config, base_dir, source)
    return config


def _describe(error: dict[str, Any], source: str) -> str:
    loc = [str(p) for p in error["loc"]]
    where = ".".join(loc)
    if len(loc) >= 2 and loc[0] == "families":
        where = f"family '{loc[1]}'" + (f", field '{'.'.join(loc[2:])}'" if len(loc) > 2 else "")
    elif loc:
        where = f"field '{where}'"
    if error["type"] == "extra_forbidden":
        known = _known_fields(loc)
        hint = difflib.get_close_matches(loc[-1], known, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{source}: {where}: unknown key{suggestion}"
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "enum":
        msg = f"{error.get('input')!r} is not one of: {error['ctx']['expected']}"
    return f"{source}: {where}: {msg}"


def _known_fields(loc: list[str]) -> list[str]:
    if len(loc) >= 3 and loc[0] == "families":
        sections = {
            "triage": TriageConfig,
            "redaction": RedactionConfig,
            "split": SplitConfig,
            "evaluation": EvaluationConfig,
        }
        automation = {
            "drift": DriftConfig,
            "schedules": ScheduleConfig,
            "production_watch": ProductionWatchConfig,
        }
        if len(loc) >= 5 and loc[2] == "automation" and loc[3] in automation:
            return list(automation[loc[3]].model_fields)
        if len(loc) >= 4 and loc[2] == "automation":
            return list(AutomationConfig.model_fields)
        if len(loc) >= 4 and loc[2] in sections:
            return list(sections[loc[2]].model_fields)
        return list(FamilyConfig.model_fields)
    return list(PulseConfig.model_fields)


def _resolve_label_files(config: PulseConfig, base_dir: Path, source: str) -> PulseConfig:
    families = {}
    for name, fam in config.families.items():
        if fam.labels_file is not None:
            path = fam.labels_file if fam.labels_file.is_absolute() else base_dir / fam.labels_file
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(f"{source}: family '{name}', field 'labels_file': {exc}") from None
            labels = tuple(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))
            if len(set(labels)) < 2:
                raise ConfigError(
                    f"{source}: family '{name}', field 'labels_file': {path} lists fewer than two labels"
                )
            fam = fam.model_copy(update={"labels": labels, "labels_file": path})
        families[name] = fam
    return config.model_copy(update={"families": families})


def _resolve_evaluation_files(config: PulseConfig, base_dir: Path, source: str) -> PulseConfig:
    """Golden, test-file and source-registry paths relative to pulse.yaml; `golden/<family>.jsonl`
    when present."""
    families = {}
    for name, fam in config.families.items():
        ev = fam.evaluation
        update: dict[str, Any] = {}
        if fam.oracle.prompt is not None:
            prompt = fam.oracle.prompt if fam.oracle.prompt.is_absolute() else base_dir / fam.oracle.prompt
            if not prompt.is_file():
                raise ConfigError(f"{source}: family '{name}', field 'oracle.prompt': {prompt} not found")
            fam = fam.model_copy(update={"oracle": fam.oracle.model_copy(update={"prompt": prompt.resolve()})})
        qa_prompt = fam.oracle.generate_qa.prompt
        if qa_prompt is not None:
            qa_prompt = qa_prompt if qa_prompt.is_absolute() else base_dir / qa_prompt
            if not qa_prompt.is_file():
                raise ConfigError(
                    f"{source}: family '{name}', field 'oracle.generate_qa.prompt': {qa_prompt} not found"
                )
            generate_qa = fam.oracle.generate_qa.model_copy(update={"prompt": qa_prompt.resolve()})
            fam = fam.model_copy(
                update={"oracle": fam.oracle.model_copy(update={"generate_qa": generate_qa})}
            )
        for field in ("golden_file", "sources_file", "test_file"):
            path = getattr(ev, field)
            if path is None:
                continue
            path = (path if path.is_absolute() else base_dir / path).resolve()
            if not path.is_file():
                raise ConfigError(f"{source}: family '{name}', field 'evaluation.{field}': {path} not found")
            update[field] = path
        if ev.golden_file is None and (base_dir / "golden" / f"{name}.jsonl").is_file():
            update["golden_file"] = (base_dir / "golden" / f"{name}.jsonl").resolve()
        if update:
            fam = fam.model_copy(update={"evaluation": ev.model_copy(update=update)})
        families[name] = fam
    return config.model_copy(update={"families": families})
