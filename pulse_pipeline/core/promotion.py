"""Promotion, rollback and cleanup end to end: the registry pointer first, then the serving
engine, the version records and audit trail, and the MLflow aliases.

The pointer (`current.json`, written atomically by `registry`) is the source of truth and moves
first; everything after it follows it and reports, without undoing it, when it could not:
a vLLM server that is down leaves serving "not updated: ...", and promoting the current
version again (a no-op for the registry) retries serving, the records and the aliases.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from pulse_pipeline.core import adapters, registry
from pulse_pipeline.core.artifacts import ArtifactStore


@dataclass
class Outcome:
    """What a promotion, rollback or cleanup did, for the CLI and the Dagster metadata."""

    family: str
    action: str  # promote, canary, force_promote, rollback, cleanup
    version: str | None  # production after the change
    previous_version: str | None
    challenger: str | None = None  # a canary's challenger
    traffic: list[dict[str, Any]] = field(default_factory=list)
    changed: bool = True
    serving: str = "not configured"
    mlflow: str = "not configured"
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the registry wants the user to know


@dataclass
class Targets:
    """Where a change is reflected besides the registry: the store (records, audit), MLflow and vLLM."""

    store: Any  # core.store.Store
    tracking_uri: str | None = None
    server: Any = None  # core.serving.VllmServer, or None: serving not configured
    max_loaded: int = 4  # adapters of a family kept loaded on the server
    adapter_root: str | None = None  # the artifact store's root as the vLLM server sees it (default: ours)


def promote(
    artifacts: ArtifactStore, family: str, version: str, targets: Targets, *, by: str, reason: str = "",
    traffic_share: float = 1.0, force: bool = False,
) -> Outcome:  # fmt: skip
    """Make `version` production (`traffic_share` 1.0) or start a canary with it (< 1.0)."""
    before = registry.read_current(artifacts, family)
    done = registry.promote(
        artifacts, family, version, by=by, reason=reason, traffic_share=traffic_share, force=force
    )
    action = "force_promote" if done.forced else "canary" if done.action == "canary" else "promote"
    out = _follow(
        artifacts, family, before, done.current, targets, action, by, reason, done.changed, done.forced
    )
    out.notes = list(done.notes)
    return out


def rollback(
    artifacts: ArtifactStore, family: str, targets: Targets, *, by: str, reason: str = ""
) -> Outcome:
    """Make the previous production version current again (a second rollback rolls forward)."""
    before = registry.read_current(artifacts, family)
    done = registry.rollback(artifacts, family, by=by, reason=reason)
    out = _follow(artifacts, family, before, done.current, targets, "rollback", by, reason, True, False)
    out.notes = list(done.notes)
    return out


def cleanup(artifacts: ArtifactStore, family: str, targets: Targets, *, keep: int, by: str) -> Outcome:
    """Remove all but the newest `keep` versions (never production, previous or a canary)."""
    result = registry.cleanup(artifacts, family, keep=keep)
    current = registry.read_current(artifacts, family) or {}
    out = Outcome(family, "cleanup", current.get("version"), current.get("previous_version"))
    out.removed, out.kept, out.changed = list(result.removed), list(result.kept), bool(result.removed)
    now = dt.datetime.now(dt.UTC)
    for version in result.removed:
        targets.store.update_version(family, version, removed_at=now, traffic_share=0.0)
    if targets.server is not None:
        from pulse_pipeline.core.serving import ServingError, served_name

        failed = []
        for version in result.removed:  # each on its own: one failure does not keep the others loaded
            try:
                targets.server.unload_adapter(served_name(family, version))
            except ServingError as exc:
                failed.append(f"{version}: {exc}")
        out.serving = f"not updated: {'; '.join(failed)}" if failed else "updated"
    out.mlflow = _mlflow(artifacts, targets, family, current, forget=result.removed)
    if result.removed:
        targets.store.record_deployment(
            family, "cleanup", by=by, reason=f"removed {', '.join(result.removed)}", serving=out.serving
        )
    return out


def _follow(
    artifacts: ArtifactStore, family: str, before: dict[str, Any] | None, current: dict[str, Any],
    targets: Targets, action: str, by: str, reason: str, changed: bool, forced: bool,
) -> Outcome:  # fmt: skip
    """Serving, records, audit and aliases after the pointer moved from `before` to `current`."""
    traffic = list(current.get("traffic") or [{"version": current["version"], "share": 1.0}])
    challenger = _challenger(current)
    out = Outcome(
        family, action, current["version"], current.get("previous_version"), challenger, traffic, changed
    )
    out.serving = _serve(artifacts, family, current, challenger, targets)
    source, target = _moved(before, current)
    _records(artifacts, family, traffic, targets.store, rolled_back=source if action == "rollback" else None)
    if changed:
        share = next((t["share"] for t in traffic if t["version"] == target), 1.0)
        targets.store.record_deployment(
            family, action, by=by, reason=reason, forced=forced, serving=out.serving[:32],
            from_version=source, to_version=target, traffic_share=share,
        )  # fmt: skip
    out.mlflow = _mlflow(artifacts, targets, family, current)
    return out


def _challenger(pointer: dict[str, Any] | None) -> str | None:
    """A canary's challenger in a current.json, if any."""
    traffic = (pointer or {}).get("traffic") or []
    return next((t["version"] for t in traffic if t["version"] != pointer["version"]), None)


def _moved(before: dict[str, Any] | None, after: dict[str, Any]) -> tuple[str | None, str]:
    """(from, to) of a pointer change, for the audit trail: a canary goes from the champion to
    the challenger; ending a canary (rollback or promoting the champion) goes from the dropped
    challenger back to the champion; otherwise from the old production version to the new."""
    old_challenger, new_challenger = _challenger(before), _challenger(after)
    if new_challenger:
        return after["version"], new_challenger
    if before and old_challenger and before["version"] == after["version"]:
        return old_challenger, after["version"]
    return (before or {}).get("version"), after["version"]


def _serve(
    artifacts: ArtifactStore, family: str, current: dict[str, Any], challenger: str | None, targets: Targets
) -> str:
    from pulse_pipeline.core.serving import sync_family

    if targets.server is None:
        return "not configured"

    def path(version: str) -> str:
        if targets.adapter_root:
            return f"{targets.adapter_root.rstrip('/')}/{adapters.prefix(family, version)}"
        return str(artifacts.uri(adapters.prefix(family, version)))

    if "://" in path(current["version"]):
        return (
            "not updated: vLLM loads adapters from its own file system, not "
            f"{path(current['version']).split('://')[0]}://; set PULSE_VLLM_ADAPTER_ROOT to where the "
            "server sees the artifact store"
        )
    serve = {v: path(v) for v in (current["version"], challenger) if v}
    keep = {v for v in (current["version"], current.get("previous_version"), challenger) if v}
    done = sync_family(
        targets.server, family, serve=serve, keep=keep, order=adapters.versions(artifacts, family),
        max_loaded=targets.max_loaded,
    )  # fmt: skip
    return done.status


def _records(
    artifacts: ArtifactStore, family: str, traffic: list[dict[str, Any]], store: Any, rolled_back: str | None
) -> None:
    """Statuses and traffic shares of every recorded version of the family, from the pointer."""
    shares = {t["version"]: float(t["share"]) for t in traffic}
    for row in store.version_records(family):
        v = row["version"]
        if v in shares:
            status = "deployed"
        elif v == rolled_back:
            status = "rolled_back"
        elif row["status"] == "deployed":
            status = "archived"
        else:
            status = row["status"]
        if status != row["status"] or shares.get(v, 0.0) != row["traffic_share"]:
            store.update_version(family, v, status=status, traffic_share=shares.get(v, 0.0))
    for v in shares:  # a version promoted before it was recorded (e.g. trained elsewhere)
        if store.version_record(family, v) is None:
            record_trained(store, artifacts, family, v)
            store.update_version(family, v, status="deployed", traffic_share=shares[v])


def _mlflow(
    artifacts: ArtifactStore, targets: Targets, family: str, current: dict[str, Any], forget: list[str] = ()
) -> str:
    """Champion = production, challenger = a canary's challenger, else the newest candidate."""
    if not targets.tracking_uri:
        return "not configured"
    from pulse_pipeline.core import model_registry

    try:
        for version in forget:
            model_registry.forget_version(targets.tracking_uri, family, version)
        present = set(adapters.versions(artifacts, family))
        rows = [r for r in targets.store.version_records(family) if r["removed_at"] is None]
        rows = [r for r in rows if r["version"] in present]  # files gone (removed by hand): not registered
        for row in rows:
            _register(artifacts, targets, family, row)
        production = current.get("version")
        challenger = _challenger(current)
        if challenger is None:  # the newest candidate trained after production, not a failed one
            since = next((r["created_at"] for r in rows if r["version"] == production), None)
            candidates = [
                r["version"]
                for r in rows
                if r["status"] == "candidate" and (since is None or r["created_at"] > since)
            ]
            challenger = candidates[-1] if candidates else None
        model_registry.sync_aliases(targets.tracking_uri, family, champion=production, challenger=challenger)
        return "updated"
    except (model_registry.ModelRegistryError, adapters.AdapterError) as exc:
        return f"not updated: {exc}"


def _register(artifacts: ArtifactStore, targets: Targets, family: str, row: dict[str, Any]) -> None:
    """The version in the family's registered model; its source is the version's folder in the store."""
    from pulse_pipeline.core import model_registry

    version = row["version"]
    run_id = (adapters.read_metadata(artifacts, family, version).get("mlflow") or {}).get("run_id")
    model_registry.register_version(
        targets.tracking_uri, family, version, source=artifacts.uri(adapters.prefix(family, version)),
        run_id=run_id, tags={"pulse.dataset_version": row["dataset_version"]},
    )  # fmt: skip


def record_trained(
    store: Any, artifacts: ArtifactStore, family: str, version: str, *, created_by: str | None = None
) -> dict[str, Any]:
    """The version's record from its metadata: base model, dataset, config, who, and its
    semantic version (major: new base model; minor: over 10 % new examples; patch otherwise)."""
    meta = adapters.read_metadata(artifacts, family, version)
    older = [r for r in store.version_records(family) if r["version"] != version]
    previous = older[-1] if older else None
    previous_meta = (
        {"base_model": previous["base_model"], "semantic_version": previous["semantic_version"]}
        if previous
        else None
    )
    share = _new_example_share(artifacts, family, previous["dataset_version"] if previous else None, meta)
    row = {
        "family": family,
        "version": version,
        "base_model": meta.get("base_model", ""),
        "dataset_version": meta.get("dataset_version", ""),
        "training_config": meta.get("resolved_config") or {},
        "created_by": created_by or meta.get("created_by") or "unknown",
        "semantic_version": registry.semantic_label(previous_meta, meta, share),
    }
    store.record_version(row)
    return row


def announce_candidate(artifacts: ArtifactStore, family: str, targets: Targets) -> str:
    """After a training: register the new version in MLflow and point `challenger` at it (the
    newest candidate); `champion` stays on production. Returns what MLflow did."""
    return _mlflow(artifacts, targets, family, registry.read_current(artifacts, family) or {})


def record_evaluation(store: Any, family: str, version: str, results: dict[str, Any]) -> None:
    """Metrics and the gate's decision on the version's record; a FAIL marks it failed."""
    decision = results["gate"]["decision"]
    fields: dict[str, Any] = {
        "metrics": {name: systems["candidate"] for name, systems in results["metrics"].items()},
        "decision": decision,
    }
    record = store.version_record(family, version)
    if decision == "FAIL" and record is not None and record["status"] == "candidate":
        fields["status"] = "failed"
    store.update_version(family, version, **fields)


def _new_example_share(
    artifacts: ArtifactStore, family: str, previous_dataset: str | None, meta: dict[str, Any]
) -> float:
    """Share of this version's training examples that the previous version's snapshot lacked."""
    import orjson

    from pulse_pipeline.core import snapshots

    def ids(dataset: str) -> set[str]:
        manifest = orjson.loads(artifacts.read_bytes(f"{snapshots.prefix(family, dataset)}/manifest.json"))
        return {i for split_ids in (manifest.get("example_ids") or {}).values() for i in split_ids}

    dataset = meta.get("dataset_version")
    if not previous_dataset or not dataset:
        return 1.0
    try:
        new, old = ids(dataset), ids(previous_dataset)
    except KeyError:
        return 1.0
    return len(new - old) / len(new) if new else 0.0
