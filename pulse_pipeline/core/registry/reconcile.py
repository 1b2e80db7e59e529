"""Reconcile a family's files with its records after a crash, a kill or a lost database.

Run by `pulse registry reconcile` and before every training (with the family's training lock
held, so no other training of it is alive). What it does, in order:

1. A record still in `training` whose training is not alive: its staged folder, when complete and
   intact, is published (the training finished and only the record's move was lost); otherwise
   the record becomes `failed` and the staged files go.
2. A visible record whose folder is still staged (a crash between the record's move and the
   reveal): the folder is revealed.
3. A visible record whose files are gone (deleted by hand): the record becomes `removed` (a
   served one is a problem for a person: production must move first).
4. A complete folder without a record (trained before records existed, or restored from a
   backup): adopted as `published` when its hashes verify, so it must be evaluated before it can
   be promoted; removed when it is damaged.
5. A staged folder, or an incomplete one (no metadata: an upload cut short), without a live
   record, and a folder of a failed or removed version (a removal cut short): removed.
6. Records' states and traffic shares follow current.json (the source of truth for serving), and
   a local `current` symlink follows current.json.

Every change is one line of the result and, when anything changed, one `reconcile` entry in the
deployments audit trail; a repair that fails is a problem line and the others still run.
`dry_run` says what would change and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pulse_pipeline.core.registry import files, pointer
from pulse_pipeline.core.registry.errors import RegistryError, VersionFilesError
from pulse_pipeline.core.registry.lifecycle import SERVED, VISIBLE, State

if TYPE_CHECKING:
    from pulse_pipeline.core.registry.registry import Registry


@dataclass
class Reconciliation:
    family: str
    dry_run: bool = False
    changes: list[str] = field(default_factory=list)  # one line per change (or would-be change)
    problems: list[str] = field(default_factory=list)  # what needs a person

    @property
    def changed(self) -> bool:
        return bool(self.changes) and not self.dry_run


def reconcile(
    registry: Registry, family: str, *, by: str, training_alive: bool = False, dry_run: bool = False
) -> Reconciliation:
    out = Reconciliation(family, dry_run)
    artifacts = registry.artifacts
    records = {r.version: r for r in registry.records.list(family)}
    folders = set(files.complete_folders(artifacts, family))
    staged = set(files.staged_versions(artifacts, family))

    def do(line: str, action: Any) -> None:
        """One repair; one that fails (a folder gone meanwhile, a race) is a problem, not the end."""
        if dry_run:
            out.changes.append(line)
            return
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - the other repairs still run; a person reads why
            out.problems.append(f"{line.split(': ', 1)[0]}: could not repair ({line.split(': ', 1)[1]}): {exc}")
        else:
            out.changes.append(line)

    for version, record in records.items():
        if record.state is State.TRAINING and not training_alive:
            if version in staged and _intact_staging(artifacts, family, version):
                do(f"{version}: training finished but its record was not moved: published",
                   lambda r=record: registry.publish_staged(r))  # fmt: skip
            else:
                do(f"{version}: training never finished (no run holds the lock): failed",
                   lambda r=record: registry.abandon(r))  # fmt: skip
        elif record.state in VISIBLE and version not in folders:
            if version in staged:
                do(f"{version}: {record.state} but still staged: revealed",
                   lambda v=version: files.reveal(artifacts, family, v))  # fmt: skip
            elif record.state in SERVED:
                out.problems.append(
                    f"{version} is {record.state} but its files are gone: promote another version "
                    f"(`pulse promote --family {family} --previous` or `--version ...`)"
                )
            elif not _present(artifacts, family, version):  # looked again: a reveal may just have ended
                do(f"{version}: {record.state} but its files are gone: removed",
                   lambda r=record: registry.records.move(r, State.REMOVED, traffic_share=0.0))  # fmt: skip
    for version in sorted(folders & set(records)):
        if records[version].state in (State.FAILED, State.REMOVED):  # a removal cut short
            do(f"{version}: a {records[version].state} version's folder: removed",
               lambda v=version: files.remove(artifacts, family, v))  # fmt: skip
    for version in sorted(folders - set(records)):
        try:
            files.verify(artifacts, family, version)
        except VersionFilesError as exc:
            do(f"{version}: a folder without a record, damaged ({exc}): removed",
               lambda v=version: files.remove(artifacts, family, v))  # fmt: skip
            continue
        do(f"{version}: a folder without a record: adopted as published (evaluate it before promoting it)",
           lambda v=version: _adopt(registry, family, v, by))  # fmt: skip
    for version in files.incomplete_folders(artifacts, family):
        if version in staged:
            continue  # a reveal cut short: finished above, or by the training that owns it
        record = records.get(version)
        if record is None or record.state in (State.FAILED, State.REMOVED):
            do(f"{version}: an incomplete folder without a live record: removed",
               lambda v=version: files.remove(artifacts, family, v))  # fmt: skip
        else:
            out.problems.append(f"{version} is {record.state} but its folder is incomplete: its files are damaged")
    for version in sorted(staged - set(records)):
        do(f"{version}: a staged folder without a record: removed",
           lambda v=version: files.discard_staged(artifacts, family, v))  # fmt: skip
    for version in sorted(staged & set(records)):
        if records[version].state in (State.FAILED, State.REMOVED):
            do(f"{version}: a staged folder of a {records[version].state} version: removed",
               lambda v=version: files.discard_staged(artifacts, family, v))  # fmt: skip
    _follow(registry, family, out, dry_run)
    if out.changed:
        forced = any(line.startswith("current.json changed") and "(forced)" in line for line in out.changes)
        registry.audit.append(family, "reconcile", by=by, reason="; ".join(out.changes)[:2000], forced=forced)
    return out


def _follow(registry: Registry, family: str, out: Reconciliation, dry_run: bool) -> None:
    """States after the pointer, and a problem line for a pointer naming a version that is not served."""
    current = registry.current(family)
    if current is None:
        return
    for version in pointer.shares(current):
        record = registry.records.get(family, version)
        if record is None or record.state not in VISIBLE:
            out.problems.append(
                f"current.json serves {version}, which has "
                + ("no record" if record is None else f"state {record.state}")
                + f": promote a recorded version (`pulse promote --family {family} --version ...`)"
            )
    unlogged = _unlogged_change(registry, family, current)
    if unlogged:
        out.changes.append(unlogged)
    if dry_run:
        return
    try:
        out.changes += [f"{line} (after current.json)" for line in _follow_pointer(registry, family, current)]
    except RegistryError as exc:
        out.problems.append(str(exc))
    if pointer.sync_link(registry.artifacts, family):
        out.changes.append("current symlink pointed again at current.json's version")


def _unlogged_change(registry: Registry, family: str, current: pointer.Pointer) -> str | None:
    """current.json changed after the newest audit entry (a crash between the pointer and the
    entry): the change, as the reconcile entry will record it."""
    import datetime as dt

    changed = current.get("changed_at")
    if not changed:
        return None
    try:
        at = dt.datetime.fromisoformat(changed)
    except ValueError:
        return None
    since = at - dt.timedelta(seconds=1)  # current.json keeps whole seconds
    pointer_moves = ("promote", "canary", "force_promote", "rollback", "reconcile")
    for entry in registry.audit.list(family, limit=20):  # newest first
        if entry.at < since:
            break
        if entry.action in pointer_moves:
            return None
    forced = " (forced)" if current.get("forced") else ""
    return (
        f"current.json changed at {changed} by {current.get('promoted_by') or 'someone'}{forced} to serve "
        f"{', '.join(pointer.shares(current))} without an audit entry: {current.get('reason') or 'no reason given'}"
    )


def _follow_pointer(registry: Registry, family: str, current: pointer.Pointer) -> list[str]:
    from pulse_pipeline.core.registry.promotion import follow_pointer

    return follow_pointer(registry, family, current)


def _intact_staging(artifacts: Any, family: str, version: str) -> bool:
    """The staged folder holds every file its metadata lists, with the recorded hashes."""
    try:
        files.verify(artifacts, family, version, staged=True)
    except VersionFilesError:
        return False
    return True


def _present(artifacts: Any, family: str, version: str) -> bool:
    return artifacts.exists(f"{files.key(family, version)}/{files.METADATA}") or files.is_staged(
        artifacts, family, version
    )


def _adopt(registry: Registry, family: str, version: str, by: str) -> None:
    meta = registry.metadata(family, version)
    registry.records.adopt(
        family,
        version,
        {
            "base_model": str(meta.get("base_model") or "unknown"),
            "dataset_version": str(meta.get("dataset_version") or "unknown"),
            "training_config": meta.get("resolved_config") or {},
            "created_by": f"reconcile ({by}); trained by {meta.get('created_by') or 'unknown'}",
            "semantic_version": str(meta.get("semantic_version") or "0.0.0"),
            "run_id": (meta.get("dagster") or {}).get("run_id"),
            "watermark": _watermark(registry.artifacts, family, meta.get("dataset_version")),
        },
    )


def _watermark(artifacts: Any, family: str, dataset: str | None) -> int | None:
    from pulse_pipeline.core.snapshots import read_manifest

    manifest = read_manifest(artifacts, family, dataset) if dataset else None
    return int(manifest["watermark"]["seq"]) if manifest and "watermark" in manifest else None
