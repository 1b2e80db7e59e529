"""When a family has enough new human judgment to retrain: counting trainable annotations newer
than the newest snapshot's watermark, incrementally.

`NewAnnotations` is the sensor's cursor: the snapshot watermark it counts from, the newest store
sequence number it has read, the count so far, and the family's newest data fix. Each tick reads
only what arrived since the last one, so its work follows what is new, not the size of the table;
a new snapshot (a new watermark) or a data fix (`pulse annotations invalidate`, `--replace-day`)
starts the count again from the watermark.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from pulse_pipeline.core.families import FamilyConfig
from pulse_pipeline.core.triage import TRAINABLE, triage


@dataclass(frozen=True)
class NewAnnotations:
    watermark: int  # store seq of the newest snapshot's last annotation (0: no snapshot yet)
    read_up_to: int  # newest store seq counted
    count: int  # trainable (accepted and approved) annotations in (watermark, read_up_to]
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


def count_new(
    store: Any, family: FamilyConfig, watermark: int, previous: NewAnnotations | None = None
) -> NewAnnotations:
    """Trainable annotations of `family` newer than `watermark`, continuing `previous` when it
    counted from the same watermark and no data fix (an invalidation or a restored record, below
    what it read) happened since."""
    fixes = store.latest_invalidation(family.name)
    if previous is None or previous.watermark != watermark or previous.invalidations != fixes:
        previous = NewAnnotations(watermark, watermark, 0, fixes)
    count, newest = previous.count, previous.read_up_to
    for row in store.iter_family(family.name, after=previous.read_up_to):
        newest = row.seq
        if triage(row.kind, row.payload, family.triage) in TRAINABLE:
            count += 1
    return NewAnnotations(watermark, newest, count, fixes)


def snapshot_watermark(artifacts: Any, family: str) -> int:
    """The store seq the family's newest snapshot was built up to (0 before the first).

    Read from the small `latest.json` pointer, not from the manifest: the manifest lists every
    example id (28 MiB for 1M annotations, ~140 ms to parse), which every sensor tick would pay.
    A pointer written before it carried the watermark falls back to the manifest.
    """
    from pulse_pipeline.core.snapshots import latest_manifest

    try:
        pointer = orjson.loads(artifacts.read_bytes(f"datasets/{family}/latest.json"))
    except KeyError:
        return 0
    if "watermark" in pointer:
        return int(pointer["watermark"]["seq"])
    manifest = latest_manifest(artifacts, family)
    return int(manifest["watermark"]["seq"]) if manifest else 0
