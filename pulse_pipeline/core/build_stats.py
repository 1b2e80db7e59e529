"""What an examples build counted (`BuildStats`): the chat and the text paths fill the same record.

`examples.build_examples` returns one with the examples table; the snapshot stores it as JSON
beside the dataset (`to_json` / `from_json`).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import orjson


@dataclass
class BuildStats:
    annotations: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    negatives: int = 0  # low ratings with no corrected response
    feedback_not_used: int = 0  # ratings of 3 and above: no example
    exact_duplicates: int = 0
    normalized_duplicates: int = 0
    redactions: Counter[str] = field(default_factory=Counter)
    watermark: int = 0  # newest store sequence number read (invalidated rows included: never goes back)
    newest_ingested_at: dt.datetime | None = None
    invalidations: int = 0  # the family's newest invalidations id at the build: moves with every data fix

    def to_json(self) -> bytes:
        body = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}
        body["by_status"] = {str(k): n for k, n in self.by_status.items()}
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, data: bytes) -> BuildStats:
        body = orjson.loads(data)
        stats = cls(
            **{k: v for k, v in body.items() if k not in ("by_status", "redactions", "newest_ingested_at")}
        )
        stats.by_status = Counter(body["by_status"])
        stats.redactions = Counter(body["redactions"])
        if body["newest_ingested_at"]:
            stats.newest_ingested_at = dt.datetime.fromisoformat(body["newest_ingested_at"])
        return stats
