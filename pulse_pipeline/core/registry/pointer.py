"""current.json: which version of a family serves, and the `current` symlink beside it.

`adapters/<family>/current.json` is the source of truth for serving on every store. Besides the
contract's fields it records the previous production version (what a rollback returns to), the
traffic split (one entry normally; champion and challenger during a canary) and who changed it,
why, and whether the promotion gate was overridden:

    {"version", "promoted_at", "trained_at", "samples_used", "training_loss", "dataset_version",
     "previous_version", "traffic": [{"version", "share"}], "promoted_by", "reason", "forced",
     "changed_at"}

`version`, `promoted_at` (when it became production) and the training fields describe the
production version (the champion); `promoted_by`, `reason`, `forced` and `changed_at` describe
the pointer's latest change. On a local store the `adapters/<family>/current` symlink names the
production version's folder (relatively, so the tree can move) and is swapped after current.json
is written; both writes are atomic, so a reader sees the old pointer or the new one, never half
of one. This module reads and writes pointers; deciding a change is `promotion.py`'s.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from pulse_pipeline.core.artifacts import ArtifactStore, LocalArtifactStore
from pulse_pipeline.core.registry.errors import RegistryError
from pulse_pipeline.core.registry.names import check_version

Pointer = dict[str, Any]


def current_key(family: str) -> str:
    return f"adapters/{family}/current.json"


def link_key(family: str) -> str:
    return f"adapters/{family}/current"


def read_current(artifacts: ArtifactStore, family: str) -> Pointer | None:
    """The current.json object, or None before the family's first promotion."""
    try:
        data = artifacts.read_bytes(current_key(family))
    except KeyError:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise RegistryError(f"{family}: {current_key(family)} is not readable JSON") from None


def write_current(artifacts: ArtifactStore, family: str, current: Pointer) -> None:
    """Write current.json whole (temporary file + rename locally, one PUT on S3), then, on a
    local store, swap the `current` symlink to the production version's folder."""
    version = check_version(family, str(current.get("version")))  # only a well-formed name
    artifacts.write_bytes(current_key(family), orjson.dumps(current, option=orjson.OPT_INDENT_2) + b"\n")
    if isinstance(artifacts, LocalArtifactStore):
        artifacts.replace_symlink(link_key(family), version)


def sync_link(artifacts: ArtifactStore, family: str) -> bool:
    """Point a local store's `current` symlink at current.json's version when they disagree
    (after a crash between the two writes); True when it was changed."""
    current = read_current(artifacts, family)
    if not isinstance(artifacts, LocalArtifactStore) or current is None:
        return False
    if artifacts.read_symlink(link_key(family)) == current["version"]:
        return False
    artifacts.replace_symlink(link_key(family), check_version(family, current["version"]))
    return True


def challenger(current: Pointer | None) -> str | None:
    """The canary challenger in a current.json, if one is served."""
    if not current:
        return None
    others = [t["version"] for t in current.get("traffic") or [] if t.get("version") != current["version"]]
    return others[0] if others else None


def shares(current: Pointer | None) -> dict[str, float]:
    """version -> traffic share of every served version."""
    if not current:
        return {}
    traffic = current.get("traffic") or [{"version": current["version"], "share": 1.0}]
    return {t["version"]: float(t["share"]) for t in traffic}


def protected(current: Pointer | None) -> set[str]:
    """Versions cleanup must keep: production, the previous production version, a challenger."""
    if current is None:
        return set()
    names = {current.get("version"), current.get("previous_version"), challenger(current)}
    return {n for n in names if n}


def stamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")


def change(by: str, reason: str, forced: bool, at: str) -> dict[str, Any]:
    """The fields that describe the pointer's latest change."""
    return {"promoted_by": by, "reason": reason, "forced": forced, "changed_at": at}


def production(meta: dict[str, Any], version: str, previous: str | None, at: str) -> Pointer:
    """current.json for a new production version, from its training metadata."""
    return {
        "version": version,
        "promoted_at": at,
        "trained_at": meta.get("trained_at"),
        "samples_used": meta.get("samples_used"),
        "training_loss": meta.get("training_loss"),
        "dataset_version": meta.get("dataset_version"),
        "previous_version": previous,
        "traffic": [{"version": version, "share": 1.0}],
    }
