"""The adapter registry's pointers: which version of a family is in production, and changing it.

`adapters/<family>/current.json` is the source of truth on every store. Besides the contract's
fields it records the previous production version (what a rollback returns to), the traffic
split (one entry normally; champion and challenger during a canary) and who changed it, why,
and whether the promotion gate was overridden:

    {"version", "promoted_at", "trained_at", "samples_used", "training_loss", "dataset_version",
     "previous_version", "traffic": [{"version", "share"}], "promoted_by", "reason", "forced",
     "changed_at"}

`version`, `promoted_at` (when it became production) and the training fields describe the
production version (the champion); `promoted_by`, `reason`, `forced` and `changed_at` describe
the pointer's latest change (a promotion, a canary, a rollback). On a local store the
`adapters/<family>/current` symlink names the production version's folder (relatively, so the
tree can move) and is swapped after current.json is written; both writes are atomic, so a
reader sees the old pointer or the new one, never half of one.

This module is domain logic only: it returns what changed (`Promotion`, `CleanupResult`) and
the caller records versions and deployments in the database, MLflow and vLLM.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from pulse_pipeline.core import adapters
from pulse_pipeline.core.artifacts import ArtifactStore, LocalArtifactStore

EVAL_RESULTS = "eval/results.json"
_FAMILY = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_LABEL = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
NEW_EXAMPLES_MINOR = 0.10  # more new examples than this share bumps the minor label


class RegistryError(RuntimeError):
    """A registry change cannot be made; the one-line message names family and version."""


@dataclass(frozen=True)
class Promotion:
    """What a promote or rollback did.

    version: the version acted on (promoted, canary challenger, or rolled back to).
    previous_version: the production version before this change (None on the first promotion).
    current: the current.json written (or the unchanged one when `changed` is False).
    action: "promote", "canary", "end_canary", "rollback" or "none".
    decision: the promotion gate's DEPLOY / REVIEW / FAIL, None when never evaluated (or rollback).
    notes: things the caller should tell the user (never evaluated, hashes not recorded, ...).
    """

    family: str
    version: str
    previous_version: str | None
    current: dict[str, Any]
    canary: bool
    forced: bool
    action: str
    decision: str | None = None
    changed: bool = True
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CleanupResult:
    """Versions removed and kept by `cleanup`, oldest first."""

    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def current_key(family: str) -> str:
    return f"adapters/{family}/current.json"


def link_key(family: str) -> str:
    return f"adapters/{family}/current"


def read_current(artifacts: ArtifactStore, family: str) -> dict[str, Any] | None:
    """The current.json object, or None before the family's first promotion."""
    try:
        data = artifacts.read_bytes(current_key(family))
    except KeyError:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise RegistryError(f"{family}: {current_key(family)} is not readable JSON") from None


def write_current(artifacts: ArtifactStore, family: str, current: dict[str, Any]) -> None:
    """Write current.json whole (temporary file + rename locally, one PUT on S3), then, on a
    local store, swap the `current` symlink to the production version's folder."""
    _check_family(family)
    version = current.get("version")
    adapters.prefix(family, str(version))  # a pointer only ever names a well-formed version
    artifacts.write_bytes(current_key(family), orjson.dumps(current, option=orjson.OPT_INDENT_2) + b"\n")
    if isinstance(artifacts, LocalArtifactStore):
        artifacts.replace_symlink(link_key(family), str(version))


def sync_link(artifacts: ArtifactStore, family: str) -> bool:
    """Point a local store's `current` symlink at current.json's version when they disagree
    (after a crash between the two writes); True when it was changed."""
    current = read_current(artifacts, family)
    if not isinstance(artifacts, LocalArtifactStore) or current is None:
        return False
    if artifacts.read_symlink(link_key(family)) == current["version"]:
        return False
    adapters.prefix(family, current["version"])
    artifacts.replace_symlink(link_key(family), current["version"])
    return True


def gate_decision(artifacts: ArtifactStore, family: str, version: str) -> tuple[str | None, list[str]]:
    """The promotion gate's decision and reasons from the version's eval/results.json;
    (None, []) when the version was never evaluated."""
    key = f"{adapters.prefix(family, version)}/{EVAL_RESULTS}"
    try:
        results = orjson.loads(artifacts.read_bytes(key))
    except KeyError:
        return None, []
    except orjson.JSONDecodeError:
        raise RegistryError(
            f"{family} {version}: {EVAL_RESULTS} is not readable JSON; run `pulse evaluate` again"
        ) from None
    gate = results.get("gate") if isinstance(results, dict) else None
    if not isinstance(gate, dict) or "decision" not in gate:
        return None, []
    return str(gate["decision"]), [str(r) for r in gate.get("reasons") or []]


def promote(
    artifacts: ArtifactStore,
    family: str,
    version: str,
    *,
    by: str,
    reason: str = "",
    traffic_share: float = 1.0,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Promotion:
    """Make `version` the production version (traffic_share 1.0) or a canary challenger beside
    the current champion (0 < traffic_share < 1).

    Checks, in order: the version name, completeness (files present, hashes match), and the
    promotion gate: a version judged FAIL is refused unless `force`, which is recorded as
    `forced`. A version never evaluated is allowed (decision None). Promoting the version that
    is already production with all the traffic changes nothing (`changed` False)."""
    _check_family(family)
    adapters.prefix(family, version)
    _check_share(family, version, traffic_share)
    notes = list(_verify(artifacts, family, version))
    decision, reasons = gate_decision(artifacts, family, version)
    forced = _gate_allows(family, version, decision, reasons, force, notes)
    old = read_current(artifacts, family)
    stamp = _stamp(now)
    if traffic_share < 1.0:
        return _canary(
            artifacts, family, version, old, traffic_share, by, reason, forced, decision, notes, stamp
        )
    if old is not None and old["version"] == version:
        return _champion_only(artifacts, old, family, by, reason, forced, decision, notes, stamp, "promote")
    meta = adapters.read_metadata(artifacts, family, version)
    new = _record(meta, version, old["version"] if old else None, [_share(version, 1.0)], stamp)
    new.update(_change(by, reason, forced, stamp))
    write_current(artifacts, family, new)
    previous = old["version"] if old else None
    return Promotion(family, version, previous, new, False, forced, "promote", decision, True, tuple(notes))


def rollback(
    artifacts: ArtifactStore, family: str, *, by: str, reason: str = "", now: dt.datetime | None = None
) -> Promotion:
    """Undo the pointer's last move.

    During a canary: end it (the champion gets all the traffic; production does not change).
    Otherwise: make `previous_version` production again; the version rolled back from becomes
    the new `previous_version`, so a second rollback rolls forward again. The target is checked
    for completeness (files and hashes), not against the gate: it was production before."""
    _check_family(family)
    old = read_current(artifacts, family)
    if old is None:
        raise RegistryError(f"{family} has no production version yet: nothing to roll back")
    stamp = _stamp(now)
    if _challenger(old) is not None:
        return _champion_only(artifacts, old, family, by, reason, False, None, [], stamp, "rollback")
    target = old.get("previous_version")
    if not target:
        raise RegistryError(f"{family} {old['version']} has no previous version to roll back to")
    try:
        notes = _verify(artifacts, family, target)
    except adapters.AdapterError as exc:
        raise RegistryError(f"cannot roll {family} back to {target}: {exc}") from None
    meta = adapters.read_metadata(artifacts, family, target)
    new = _record(meta, target, old["version"], [_share(target, 1.0)], stamp)
    new.update(_change(by, reason, False, stamp))
    write_current(artifacts, family, new)
    return Promotion(family, target, old["version"], new, False, False, "rollback", None, True, tuple(notes))


def cleanup(artifacts: ArtifactStore, family: str, *, keep: int = 5) -> CleanupResult:
    """Remove all but the newest `keep` complete versions, never the production version, the
    previous production version or a canary challenger. Folders without metadata (unfinished,
    or not versions) are left alone. Each removal takes the metadata first (S3) or renames the
    folder away in one step (local), so a half-removed version is never listed."""
    _check_family(family)
    if keep < 0:
        raise RegistryError(f"{family}: --keep must be 0 or more, not {keep}")
    found = adapters.versions(artifacts, family)
    protected = _protected(read_current(artifacts, family))
    newest = set(found[-keep:]) if keep else set()
    kept = [v for v in found if v in newest or v in protected]
    removed = [v for v in found if v not in kept]
    for version in removed:
        adapters.remove(artifacts, family, version)
    return CleanupResult(removed=removed, kept=kept)


def semantic_label(
    previous_meta: dict[str, Any] | None, meta: dict[str, Any], new_example_share: float
) -> str:
    """The ACCESS-style MAJOR.MINOR.PATCH label of a new version: "1.0.0" for the first; major
    when the base model changes, minor when more than 10 % of the examples are new, patch
    otherwise. The previous label is read from `previous_meta["semantic_version"]` ("1.0.0" when
    it has none)."""
    if not 0.0 <= new_example_share <= 1.0 or math.isnan(new_example_share):
        raise RegistryError(f"new example share must be between 0 and 1, not {new_example_share}")
    if previous_meta is None:
        return "1.0.0"
    label = str(previous_meta.get("semantic_version") or "1.0.0")
    m = _LABEL.match(label)
    if not m:
        raise RegistryError(f"previous version's semantic_version {label!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch = (int(g) for g in m.groups())
    if meta.get("base_model") != previous_meta.get("base_model"):
        return f"{major + 1}.0.0"
    if new_example_share > NEW_EXAMPLES_MINOR:
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


# --- the steps -------------------------------------------------------------------------------


def _canary(
    artifacts: ArtifactStore, family: str, version: str, old: dict[str, Any] | None, share: float,
    by: str, reason: str, forced: bool, decision: str | None, notes: list[str], stamp: str,
) -> Promotion:  # fmt: skip
    """Serve `version` to `share` of the traffic beside the champion; production stays."""
    if old is None:
        raise RegistryError(
            f"{family} {version}: a canary needs a production version to share traffic with; "
            "promote with traffic share 1.0 first"
        )
    champion = old["version"]
    if champion == version:
        raise RegistryError(f"{family} {version} is already production: a canary needs a different version")
    traffic = [_share(champion, round(1.0 - share, 6)), _share(version, share)]
    if old.get("traffic") == traffic:
        return Promotion(family, version, champion, old, True, forced, "none", decision, False, tuple(notes))
    replaced = _challenger(old)
    if replaced not in (None, version):
        notes = [*notes, f"{family} {version} replaces {replaced} as the canary challenger"]
    new = {**old, "traffic": traffic, **_change(by, reason, forced, stamp)}
    write_current(artifacts, family, new)
    return Promotion(family, version, champion, new, True, forced, "canary", decision, True, tuple(notes))


def _champion_only(
    artifacts: ArtifactStore, old: dict[str, Any], family: str, by: str, reason: str, forced: bool,
    decision: str | None, notes: list[str], stamp: str, action: str,
) -> Promotion:  # fmt: skip
    """Production keeps all the traffic: ends a canary, or changes nothing when none runs."""
    champion = old["version"]
    if _challenger(old) is None:
        sync_link(artifacts, family)  # repairs a link left behind by a crash
        notes = [*notes, f"{family} {champion} is already production with all the traffic"]
        return Promotion(family, champion, champion, old, False, False, "none", decision, False, tuple(notes))
    new = {**old, "traffic": [_share(champion, 1.0)], **_change(by, reason, forced, stamp)}
    write_current(artifacts, family, new)
    kind = "rollback" if action == "rollback" else "end_canary"
    return Promotion(family, champion, champion, new, False, forced, kind, decision, True, tuple(notes))


def _record(
    meta: dict[str, Any], version: str, previous: str | None, traffic: list[dict[str, Any]], stamp: str
) -> dict[str, Any]:
    """current.json for a new production version, from its training metadata."""
    return {
        "version": version,
        "promoted_at": stamp,
        "trained_at": meta.get("trained_at"),
        "samples_used": meta.get("samples_used"),
        "training_loss": meta.get("training_loss"),
        "dataset_version": meta.get("dataset_version"),
        "previous_version": previous,
        "traffic": traffic,
    }


def _change(by: str, reason: str, forced: bool, stamp: str) -> dict[str, Any]:
    return {"promoted_by": by, "reason": reason, "forced": forced, "changed_at": stamp}


def _share(version: str, share: float) -> dict[str, Any]:
    return {"version": version, "share": share}


def _challenger(current: dict[str, Any]) -> str | None:
    """The canary challenger in a current.json, if one is served."""
    others = [t["version"] for t in current.get("traffic") or [] if t.get("version") != current["version"]]
    return others[0] if others else None


def _protected(current: dict[str, Any] | None) -> set[str]:
    if current is None:
        return set()
    names = {current.get("version"), current.get("previous_version"), _challenger(current)}
    return {n for n in names if n}


def _verify(artifacts: ArtifactStore, family: str, version: str) -> list[str]:
    check = adapters.verify(artifacts, family, version)
    return [check.note] if check.note else []


def _gate_allows(
    family: str, version: str, decision: str | None, reasons: list[str], force: bool, notes: list[str]
) -> bool:
    """Whether the gate was overridden (FAIL with force); raises on FAIL without force."""
    if decision is None:
        notes.append(f"{family} {version} was never evaluated: no gate decision")
        return False
    if decision != "FAIL":
        if decision != "DEPLOY":
            notes.append(f"{family} {version} was judged {decision} by the promotion gate")
        return False
    if not force:
        why = "; ".join(reasons) or "no reasons recorded"
        raise RegistryError(
            f"{family} {version} was judged FAIL by the promotion gate ({why}); "
            "--force promotes anyway, and it is recorded"
        )
    notes.append(f"{family} {version} was judged FAIL and promoted with --force")
    return True


def _check_family(family: str) -> None:
    if not _FAMILY.match(family):
        raise RegistryError(f"{family!r} is not a family name (lowercase letters, digits and dashes)")


def _check_share(family: str, version: str, share: float) -> None:
    if not (isinstance(share, int | float) and math.isfinite(share) and 0.0 < share <= 1.0):
        raise RegistryError(f"{family} {version}: traffic share must be above 0 and at most 1, not {share}")


def _stamp(now: dt.datetime | None) -> str:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
