"""Adapter families: the typed form of `pulse.yaml`, and the errors a user gets for a bad file."""

from __future__ import annotations

import datetime as dt
import difflib
import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


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

_FAMILY_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ConfigError(ValueError):
    """A `pulse.yaml` the user must fix; the message names the file, the family and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        lo, hi = self.score_range
        if lo >= hi:
            raise ValueError(f"'score_range' [{lo}, {hi}] must have min < max")
        return self

    @property
    def snake(self) -> str:
        """The name as a Python identifier, for job and sensor names (`call_analysis`)."""
        return self.name.replace("-", "_")

    @cached_property
    def label_set(self) -> frozenset[str]:
        return frozenset(self.labels or ())


class PulseConfig(_Strict):
    """The whole `pulse.yaml`."""

    annotations_start_date: dt.date = Field(
        dt.date(2025, 1, 1), description="First day of the daily annotation partitions."
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
