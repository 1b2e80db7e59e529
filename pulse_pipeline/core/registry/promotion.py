"""Promotion, rollback and cleanup end to end: the checks, vLLM, then the pointer, the records, the
audit trail and the MLflow aliases.

Every change runs inside the family's registry section (`Registry.serialized`: one change of a
family at a time, across processes) and follows the same order. The checks first (a record, the
lifecycle, the gate's decision or a forced reason, the files' hashes); then the rollout on every
vLLM replica (rollout.py: each version the change serves loaded under its immutable name and
answering the family's smoke prompts); then the pointer (`current.json`, written atomically, and
the local `current` link), which is the source of truth for serving; then the records' states and
traffic shares, moved to match the pointer through the lifecycle; then one audit entry, which
says what serving did; then spare versions unloaded from the replicas, and the MLflow aliases.

A replica that fails to load or to answer stops the change there: the names the rollout loaded
are unloaded again, so every replica keeps serving what it served, and nothing else moves
(current.json, the records, MLflow). The outcome is `partial`, with each replica's error, and
the audit trail records the attempt (action `partial`). Promoting the same version again retries.
A version is never reloaded under a name already in use (rollout.py says why). MLflow reports,
without undoing anything, when it could not follow; promoting the current version again (which
changes nothing in the registry) re-syncs serving and the aliases. A crash after the pointer moved
and before its audit entry is found by reconcile, which records the change from current.json
(who, why, forced).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pulse_pipeline.core.evaluation.config import Decision
from pulse_pipeline.core.registry import files, pointer, rollout
from pulse_pipeline.core.registry.errors import ModelRegistryError, RegistryError, VersionFilesError
from pulse_pipeline.core.registry.lifecycle import SERVED, VISIBLE, State, promotion_refusal
from pulse_pipeline.core.registry.names import check_version, is_family, order
from pulse_pipeline.core.registry.rollout import Rollout

if TYPE_CHECKING:
    from pulse_pipeline.core.registry.records import VersionRecord
    from pulse_pipeline.core.registry.registry import Registry


@dataclass(frozen=True)
class Expected:
    """What production must still be for a promotion to go ahead (None: nothing in production):
    the version the evaluation compared the candidate with."""

    production: str | None


@dataclass
class Outcome:
    """What a promotion, rollback or cleanup did, for the CLI and the Dagster metadata."""

    family: str
    action: str  # promote, canary, force_promote, rollback, cleanup, partial (nothing moved), none
    version: str | None  # production after the change
    previous_version: str | None
    challenger: str | None = None  # a canary's challenger
    traffic: list[dict[str, Any]] = field(default_factory=list)
    changed: bool = True
    forced: bool = False
    decision: str | None = None  # the gate's decision of the version acted on
    serving: str = "not configured"
    mlflow: str = "not configured"
    partial: bool = False  # a vLLM replica failed: nothing moved (each replica's error in `replicas`)
    attempted: str | None = None  # a partial change: the version it was to serve
    replicas: list[dict[str, str]] = field(default_factory=list)  # {"url", "status"} per vLLM replica
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user should know


def promote(
    registry: Registry, family: str, version: str, *, by: str, reason: str = "",
    traffic_share: float = 1.0, force: bool = False, expect: Expected | None = None,
) -> Outcome:  # fmt: skip
    """Make `version` production (`traffic_share` 1.0) or a canary challenger beside the champion."""
    check_version(family, version)
    if not (isinstance(traffic_share, int | float) and math.isfinite(traffic_share) and 0 < traffic_share <= 1):
        raise RegistryError(f"{family} {version}: traffic share must be above 0 and at most 1, not {traffic_share}")
    record = registry.require(family, version)
    old = registry.current(family)
    if expect is not None and (old or {}).get("version") != expect.production:
        raise RegistryError(
            f"{family} {version}: production is {(old or {}).get('version') or 'none'} now, not "
            f"{expect.production or 'none'} as when it was evaluated; evaluate it again before promoting it"
        )
    # Production already: all the traffic to it again (ending a canary, or re-syncing serving) asks
    # the gate nothing; so does the share a version is already served at.
    is_champion = old is not None and old["version"] == version and traffic_share == 1.0
    served_now = is_champion or pointer.shares(old).get(version) == traffic_share
    refusal = None if served_now else promotion_refusal(
        family, version, record.state, record.decision, force=force, reason=reason
    )  # fmt: skip
    if refusal:
        why = _gate_reasons(registry, family, version)
        raise RegistryError(f"{refusal} (the gate: {why})" if why and record.decision else refusal)
    forced = not served_now and record.decision != Decision.DEPLOY
    notes = _verify(registry, family, version)
    at = pointer.stamp()
    change = pointer.change(by, reason, forced, at)
    if traffic_share < 1.0:
        if old is None:
            raise RegistryError(
                f"{family} {version}: a canary needs a production version to share traffic with; "
                "promote with traffic share 1.0 first"
            )
        if old["version"] == version:
            raise RegistryError(f"{family} {version} is already production: a canary needs a different version")
        traffic = [
            {"version": old["version"], "share": round(1.0 - traffic_share, 6)},
            {"version": version, "share": traffic_share},
        ]
        replaced = pointer.challenger(old)
        if replaced not in (None, version):
            notes.append(f"{family} {version} replaces {replaced} as the canary challenger")
        new = {**old, "traffic": traffic, **change} if old.get("traffic") != traffic else old
        action = "force_promote" if forced else "canary"
    elif old is not None and old["version"] == version:
        new = _champion_only(old, change)
        action = "promote"
        if new is old:
            pointer.sync_link(registry.artifacts, family)  # repairs a link left behind by a crash
            notes.append(f"{family} {version} is already production with all the traffic")
    else:
        meta = registry.metadata(family, version)
        new = {**pointer.production(meta, version, old["version"] if old else None, at), **change}
        action = "force_promote" if forced else "promote"
    if forced:
        notes.append(f"{family} {version} {_judged(record)} and was promoted with --force: {reason}")
    out = _apply(registry, family, old, new, action, by, reason, forced, record.decision)
    out.notes[:0] = notes
    return out


def rollback(registry: Registry, family: str, *, by: str, reason: str = "") -> Outcome:
    """Undo the pointer's last move. During a canary: end it (the champion gets all the traffic).
    Otherwise: make `previous_version` production again; the version rolled back from becomes the
    new `previous_version`, so a second rollback rolls forward. The target must have a record and
    whole files; the gate is not asked again: it was production before. On vLLM the target is
    served under its own name, as it was (still loaded: the previous version is never a spare),
    never by loading its weights again under production's name."""
    if not is_family(family):
        raise RegistryError(f"{family!r} is not a family name (lowercase letters, digits and dashes)")
    old = registry.current(family)
    if old is None:
        raise RegistryError(f"{family} has no production version yet: nothing to roll back")
    change = pointer.change(by, reason, False, pointer.stamp())
    if pointer.challenger(old) is not None:
        new = _champion_only(old, change)
        return _apply(registry, family, old, new, "rollback", by, reason, False, None)
    target = old.get("previous_version")
    if not target:
        raise RegistryError(f"{family} {old['version']} has no previous version to roll back to")
    try:
        record = registry.require(family, target)
        notes = _verify(registry, family, target)
    except RegistryError as exc:
        raise RegistryError(f"cannot roll {family} back to {target}: {exc}") from None
    meta = registry.metadata(family, target)
    new = {**pointer.production(meta, target, old["version"], pointer.stamp()), **change}
    out = _apply(registry, family, old, new, "rollback", by, reason, False, record.decision)
    out.notes[:0] = notes
    return out


def cleanup(registry: Registry, family: str, *, keep: int, by: str) -> Outcome:
    """Remove all but the newest `keep` available versions, never production, the previous
    production version or a canary challenger. Each version's record says `removed` before its
    files go (metadata first), so a half-removed folder is never served. Unrecorded folders are
    reconcile's to judge, not cleanup's."""
    if not is_family(family):
        raise RegistryError(f"{family!r} is not a family name (lowercase letters, digits and dashes)")
    if keep < 0:
        raise RegistryError(f"{family}: --keep must be 0 or more, not {keep}")
    current = registry.current(family)
    follow_pointer(registry, family, current)  # states as current.json says, before anything goes
    found = registry.available(family)
    protected = pointer.protected(current)
    newest = set(found[-keep:]) if keep else set()
    kept = [v for v in found if v in newest or v in protected]
    removed = [v for v in found if v not in kept]
    at = dt.datetime.now(dt.UTC)
    for version in removed:
        record = registry.records.get(family, version)
        if record is not None and record.state is not State.REMOVED:
            registry.records.move(record, State.REMOVED, removed_at=at, traffic_share=0.0)
        files.remove(registry.artifacts, family, version)
    out = Outcome(family, "cleanup", (current or {}).get("version"), (current or {}).get("previous_version"))
    out.removed, out.kept, out.changed = removed, kept, bool(removed)
    out.serving = _unload(registry, family, removed)
    out.mlflow = sync_mlflow(registry, family, forget=removed)
    if removed:
        registry.audit.append(family, "cleanup", by=by, reason=f"removed {', '.join(removed)}", serving=out.serving)
    return out


def follow_pointer(registry: Registry, family: str, current: pointer.Pointer | None) -> list[str]:
    """Move every record to what the pointer says: the champion production, a challenger canary,
    a version served before and no longer retired; traffic shares to match. Returns what moved."""
    shares = pointer.shares(current)
    champion = (current or {}).get("version")
    moved = []
    for record in registry.records.list(family, states=VISIBLE):
        target = (
            State.PRODUCTION if record.version == champion
            else State.CANARY if record.version in shares
            else State.RETIRED if record.state in SERVED
            else record.state
        )  # fmt: skip
        share = shares.get(record.version, 0.0)
        if target is not record.state:
            registry.records.move(record, target, traffic_share=share)
            moved.append(f"{record.version}: {record.state} -> {target}")
        elif share != record.traffic_share:
            registry.records.update(family, record.version, traffic_share=share)
    return moved


def sync_mlflow(registry: Registry, family: str, forget: list[str] = ()) -> str:
    """The family's registered model in MLflow: every available version registered, `champion` on
    production, `challenger` on a canary's challenger, else on the newest version evaluated (or
    published) after production that the gate did not FAIL."""
    tracking_uri = registry.targets.tracking_uri
    if not tracking_uri:
        return "not configured"
    from pulse_pipeline.core.registry import mlflow_models

    current = registry.current(family) or {}
    try:
        for version in forget:
            mlflow_models.forget_version(tracking_uri, family, version)
        available = set(registry.available(family))
        rows = [r for r in registry.records.list(family, states=VISIBLE) if r.version in available]
        for row in rows:
            run_id = (registry.metadata(family, row.version).get("mlflow") or {}).get("run_id")
            mlflow_models.register_version(
                tracking_uri, family, row.version, source=registry.artifacts.uri(files.key(family, row.version)),
                run_id=run_id, tags={"pulse.dataset_version": row.dataset_version},
            )  # fmt: skip
        production = current.get("version")
        challenger = pointer.challenger(current)
        if challenger is None:
            since = next((r.created_at for r in rows if r.version == production), None)
            waiting = [
                r.version
                for r in rows
                if r.state in (State.PUBLISHED, State.EVALUATED)
                and r.decision != Decision.FAIL
                and (since is None or r.created_at > since)
            ]
            challenger = waiting[-1] if waiting else None
        mlflow_models.sync_aliases(tracking_uri, family, champion=production, challenger=challenger)
        return "updated"
    except (ModelRegistryError, VersionFilesError) as exc:
        return f"not updated: {exc}"


# -- the steps -------------------------------------------------------------------------------------


def _apply(
    registry: Registry, family: str, old: pointer.Pointer | None, new: pointer.Pointer, action: str,
    by: str, reason: str, forced: bool, decision: str | None,
) -> Outcome:  # fmt: skip
    """Roll the change out on every vLLM replica; then write the pointer (when it changed), move
    the records to it, log the change, unload spare versions, and MLflow follows. A replica that
    failed stops it before the pointer: a partial outcome."""
    changed = new is not old
    rolled = _roll_out(registry, family, old, new)
    if isinstance(rolled, Rollout) and rolled.partial:
        return _partial(registry, family, old, new, by, reason, forced, decision, rolled)
    if changed:
        pointer.write_current(registry.artifacts, family, new)
    follow_pointer(registry, family, new)
    challenger = pointer.challenger(new)
    traffic = list(new.get("traffic") or [{"version": new["version"], "share": 1.0}])
    if not changed:
        action = "none"
    out = Outcome(
        family, action, new["version"], new.get("previous_version"), challenger, traffic, changed, forced, decision
    )
    out.serving = rolled.status if isinstance(rolled, Rollout) else rolled
    out.replicas = rolled.report() if isinstance(rolled, Rollout) else []
    if changed:
        source, target = _moved(old, new)
        share = next((t["share"] for t in traffic if t["version"] == target), 1.0)
        registry.audit.append(
            family, action, by=by, reason=reason, forced=forced, decision=decision, serving=out.serving,
            from_version=source, to_version=target, traffic_share=share,
        )  # fmt: skip
    if isinstance(rolled, Rollout):
        out.notes += _unload_spares(registry, family, new)
    out.mlflow = sync_mlflow(registry, family)
    return out


def _partial(
    registry: Registry, family: str, old: pointer.Pointer | None, new: pointer.Pointer, by: str, reason: str,
    forced: bool, decision: str | None, rolled: Rollout,
) -> Outcome:  # fmt: skip
    """A replica failed: nothing moved. Production is still `old`; the audit trail keeps the attempt."""
    changed = new is not old
    source, target = _moved(old, new)
    current = old or {}
    traffic = list(current.get("traffic") or ([{"version": current["version"], "share": 1.0}] if old else []))
    out = Outcome(
        family, "partial" if changed else "none", current.get("version"), current.get("previous_version"),
        pointer.challenger(old), traffic, False, forced, decision,
    )  # fmt: skip
    out.partial, out.attempted, out.serving, out.replicas = True, target, rolled.status, rolled.report()
    out.mlflow = "unchanged"
    if changed:
        share = next((t["share"] for t in new.get("traffic") or [] if t["version"] == target), 1.0)
        why = f"{target} not served: {rolled.status}" + (f" (reason given: {reason})" if reason else "")
        registry.audit.append(
            family, "partial", by=by, reason=why, forced=forced, decision=decision, serving=rolled.summary,
            from_version=source, to_version=target, traffic_share=share,
        )  # fmt: skip
    return out


def _champion_only(old: pointer.Pointer, change: dict[str, Any]) -> pointer.Pointer:
    """Production keeps all the traffic: ends a canary (a new pointer), or `old` itself when none runs."""
    if pointer.challenger(old) is None:
        return old
    return {**old, "traffic": [{"version": old["version"], "share": 1.0}], **change}


def _moved(before: pointer.Pointer | None, after: pointer.Pointer) -> tuple[str | None, str]:
    """(from, to) of a pointer change, for the audit trail: a canary goes from the champion to
    the challenger; ending a canary goes from the dropped challenger back to the champion;
    otherwise from the old production version to the new."""
    old_challenger, new_challenger = pointer.challenger(before), pointer.challenger(after)
    if new_challenger:
        return after["version"], new_challenger
    if before and old_challenger and before["version"] == after["version"]:
        return old_challenger, after["version"]
    return (before or {}).get("version"), after["version"]


def _verify(registry: Registry, family: str, version: str) -> list[str]:
    check = files.verify(registry.artifacts, family, version)
    return [check.note] if check.note else []


def _gate_reasons(registry: Registry, family: str, version: str) -> str:
    """The gate's reasons from the version's eval/results.json, joined ('' when there are none)."""
    import json

    try:
        gate = json.loads(registry.artifacts.read_bytes(f"{files.key(family, version)}/{files.EVAL_RESULTS}"))["gate"]
        return "; ".join(str(r) for r in gate.get("reasons") or [])
    except (KeyError, ValueError, TypeError):
        return ""


def _judged(record: VersionRecord) -> str:
    return f"was judged {record.decision}" if record.decision else "was never evaluated"


def _roll_out(
    registry: Registry, family: str, old: pointer.Pointer | None, new: pointer.Pointer
) -> Rollout | str:
    """What the change does on the vLLM replicas: a Rollout, or why none was asked anything."""
    targets = registry.targets
    if not targets.servers:
        return "not configured"
    smoke = targets.smoke(family) if targets.smoke is not None else rollout.GENERIC
    if smoke is None:
        return "not on vLLM (not a chat family)"

    def folder(version: str) -> str:
        if targets.adapter_root:
            return f"{targets.adapter_root.rstrip('/')}/{files.key(family, version)}"
        return str(registry.artifacts.uri(files.key(family, version)))

    planned = rollout.plan(family, old, new, folder, smoke)
    remote = next((f for f in planned.serve.values() if "://" in f), None)
    if remote is not None:
        return rollout.refused(
            targets.servers,
            f"vLLM loads adapters from its own file system, not {remote.split('://')[0]}://; set "
            "PULSE_VLLM_ADAPTER_ROOT to where the servers see the artifact store",
        )
    return rollout.roll_out(targets.servers, planned)


def _unload_spares(registry: Registry, family: str, current: pointer.Pointer) -> list[str]:
    """Beyond `max_loaded`, the family's oldest versions leave every replica (never production, the
    previous version or a canary); a replica that could not unload one is a note, not an error."""
    from pulse_pipeline.core.serving import ServingError, unload_spares

    keep = set(pointer.shares(current)) | {v for v in [current.get("previous_version")] if v}
    versions = sorted(registry.available(family), key=order)
    notes = []
    for server in registry.targets.servers:
        try:
            unload_spares(server, family, keep=keep, order=versions, max_loaded=registry.targets.max_loaded)
        except ServingError as exc:
            notes.append(f"spare versions of {family} left loaded: {exc}")
    return notes


def _unload(registry: Registry, family: str, removed: list[str]) -> str:
    """Unload removed versions from every replica, each on its own (one failure keeps no other loaded)."""
    servers = registry.targets.servers
    if not servers:
        return "not configured"
    from pulse_pipeline.core.serving import ServingError, served_name

    failed = []
    for server in servers:
        for version in removed:
            try:
                server.unload_adapter(served_name(family, version))
            except ServingError as exc:
                failed.append(f"{version}: {exc}")
    return f"not updated: {'; '.join(failed)}" if failed else "updated"
