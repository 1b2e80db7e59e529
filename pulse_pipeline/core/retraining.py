"""New annotations: the one count behind every "is there enough new judgment to retrain?".

A family's *new annotations* are its trainable annotations (valid, and approved or reviewed by a
person: `core/triage.py`) that arrived in the store after the snapshot of the family's newest
trained version was built (its watermark: the store seq the snapshot read up to); before a
family's first training, all of them. A snapshot built without a training does not count them
as seen, and a training that failed before publishing does not either; a version the gate judged
FAIL does (its data was trained on). Sensors, schedules, `pulse train`, `pulse status`, the drift
report and the daily capture report all use `new_annotations` or, incrementally, `count_new`.

`NewAnnotations` is the sensor's cursor: the watermark it counts from, the newest store seq it has
read, the count so far, and the family's newest data fix. Each tick reads only what arrived since
the last one, so its work follows what is new, not the size of the table; a new training (a new
watermark) or a data fix (`pulse annotations invalidate`, `--replace-day`) starts the count again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.core.store import Store
from pulse_pipeline.core.triage import TRAINABLE, triage


@dataclass(frozen=True)
class NewAnnotations:
    watermark: int  # store seq of the newest trained version's snapshot (0: never trained)
    read_up_to: int  # newest store seq counted
    count: int  # trainable annotations in (watermark, read_up_to]
    invalidations: int = 0  # the family's newest data fix when counted: a fix means count again

    def to_cursor(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_cursor(cls, cursor: str | None) -> NewAnnotations | None:
        if not cursor:
            return None
        try:
            return cls(**orjson.loads(cursor))
        except (orjson.JSONDecodeError, TypeError):
            return None  # an old or foreign cursor: count again from the watermark


def training_watermark(store: Store, artifacts: ArtifactStore, family: str) -> int:
    """The store seq the snapshot of `family`'s newest trained version was built up to (0 before
    its first training): annotations after it are new."""
    from pulse_pipeline.core.registry import Registry

    return Registry(store, artifacts).trained_watermark(family)


def count_new(
    store: Store, family: FamilyConfig, watermark: int, previous: NewAnnotations | None = None
) -> NewAnnotations:
    """Trainable annotations of `family` newer than `watermark`, continuing `previous` when it
    counted from the same watermark and no data fix (an invalidation or a restored record, below
    what it read) happened since."""
    fixes = store.fixes.latest_invalidation(family.name)
    if previous is None or previous.watermark != watermark or previous.invalidations != fixes:
        previous = NewAnnotations(watermark, watermark, 0, fixes)
    count, newest = previous.count, previous.read_up_to
    for row in store.annotations.iter_family(family.name, after=previous.read_up_to):
        newest = row.seq
        if triage(row.kind, row.payload, family) in TRAINABLE:
            count += 1
    return NewAnnotations(watermark, newest, count, fixes)


def new_annotations(
    store: Store, artifacts: ArtifactStore, family: FamilyConfig, previous: NewAnnotations | None = None
) -> NewAnnotations:
    """The family's new annotations (the module's definition), continuing `previous` when it can."""
    return count_new(store, family, training_watermark(store, artifacts, family.name), previous)
