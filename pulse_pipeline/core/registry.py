"""The adapter registry's pointers: which version of a family is in production.

`adapters/<family>/current.json` (the contract: version, promoted_at, trained_at,
samples_used, training_loss, dataset_version) is the source of truth on every store.
"""

from __future__ import annotations

from typing import Any

import orjson

from pulse_pipeline.core.artifacts import ArtifactStore


def current_key(family: str) -> str:
    return f"adapters/{family}/current.json"


def read_current(artifacts: ArtifactStore, family: str) -> dict[str, Any] | None:
    """The current.json object, or None before the family's first promotion."""
    try:
        return orjson.loads(artifacts.read_bytes(current_key(family)))
    except KeyError:
        return None
