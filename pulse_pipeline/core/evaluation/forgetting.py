"""Forgetting at the gate: the test splits of a family's earlier snapshots ("old slices"), each
judged against production like the test set.

A candidate trained on the newest snapshot can pass its test split and still have lost what the
champion knew about older data (continual training without replay does). `old_slices` reads the
test splits of the `forgetting.snapshots` snapshots created last before the candidate's (by their
manifests' `created_at`), each an evaluation set named `old-<first 12 characters of its
dataset_version>`. Splits are sticky (snapshots.assign_splits: a group keeps its split as the
data grows), so an old test example stays in test; where it does not (a snapshot split with other
settings) an example either system trained on (the train and val splits of the candidate's
snapshot and of production's) is left out, and the paired comparison runs on examples neither
has seen. `summary` records what was judged and how, for the gate
(gate.forgetting_checks) and the report. Golden files are not versioned per snapshot: the family's
one golden set is scored on every evaluation already, so it has no old slice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pulse_pipeline.core import snapshots
from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.evaluation.config import FORGETTING_METRIC, ChangeThresholds, ForgettingConfig
from pulse_pipeline.core.evaluation.sets import EvalSet, from_snapshot
from pulse_pipeline.core.families import FamilyConfig

PREFIX = "old-"  # MLflow metric names allow letters, digits, _ - . / and spaces (':' not on Windows)


@dataclass
class OldSlice:
    eval_set: EvalSet  # named slice_name(dataset_version)
    dataset_version: str
    created_at: str | None
    left_out: int  # test examples of that snapshot that either system trained on
    same_as_test: bool  # exactly the example ids of the candidate's own test split

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.eval_set.name,
            "dataset_version": self.dataset_version,
            "created_at": self.created_at,
            "examples": len(self.eval_set),
            "left_out": self.left_out,
            "same_as_test": self.same_as_test,
        }


def slice_name(dataset_version: str) -> str:
    return f"{PREFIX}{dataset_version[:12]}"


def old_slices(
    family: FamilyConfig,
    artifacts: ArtifactStore,
    dataset: str,
    count: int,
    *,
    trained_on: Iterable[str] = (),
    taken: Iterable[str] = (),
) -> tuple[list[OldSlice], list[str]]:
    """The old slices of a candidate trained on snapshot `dataset`, newest first, and notes on the
    snapshots that gave none. `trained_on`: the snapshots whose train and val examples are left
    out (the candidate's and production's); `taken`: set names already in use."""
    manifests, why = earlier_snapshots(artifacts, family.name, dataset, count)
    notes = [why] if why else []
    seen: set[str] = set()
    for version in {dataset, *trained_on}:
        seen |= _split_ids(artifacts, family, version, ("train", "val"))
    own_test = _split_ids(artifacts, family, dataset, ("test",))
    used = set(taken)
    out = []
    for manifest in manifests:
        version = manifest["dataset_version"]
        if not (manifest.get("counts") or {}).get("test"):
            notes.append(f"snapshot {version}: its test split is empty, so it gives no old slice")
            continue
        whole = from_snapshot(family, artifacts, version, "test")
        kept = [e for e in whole.examples if e.id not in seen]
        if not kept:
            notes.append(
                f"snapshot {version}: all {len(whole)} test examples are in the train or val split of "
                "the candidate's or production's snapshot, so it gives no old slice"
            )
            continue
        name = _unused(slice_name(version), used)
        used.add(name)
        out.append(
            OldSlice(
                EvalSet(name, f"old slice: snapshot {version} test split", kept),
                version,
                manifest.get("created_at"),
                left_out=len(whole) - len(kept),
                same_as_test={e.id for e in whole.examples} == own_test,
            )
        )
    return out, notes


def earlier_snapshots(
    artifacts: ArtifactStore, family: str, dataset: str, count: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The manifests of the `count` snapshots created last before `dataset`, newest first; with
    none, why (a sentence for the report)."""
    if count <= 0:
        return [], None
    root = f"{snapshots.prefix(family, '')}"
    manifests = []
    for key in artifacts.list(root.rstrip("/")):
        version, _, name = key[len(root) :].partition("/")
        if name == "manifest.json" and (m := snapshots.read_manifest(artifacts, family, version)):
            manifests.append(m)
    mine = next((m for m in manifests if m.get("dataset_version") == dataset), None)
    if mine is None:
        return [], f"the candidate's snapshot {dataset} has no manifest, so no snapshot is known to be older"
    older = sorted((m for m in manifests if _order(m) < _order(mine)), key=_order, reverse=True)
    if not older:
        return [], f"no snapshot of {family} was created before {dataset}"
    return older[:count], None


def summary(
    config: ForgettingConfig,
    profile: str,
    change: ChangeThresholds,
    slices: list[OldSlice],
    notes: list[str],
    production: str | None,
) -> dict[str, Any]:
    """What the forgetting checks judge and how, for results.json, the gate and the report.
    `skipped` says why no slice is judged (no production version, no old slice)."""
    metric = config.metric or FORGETTING_METRIC[profile]
    out: dict[str, Any] = {
        "snapshots": config.snapshots,
        "metric": metric,
        "max_drop": config.tolerance(metric, change),
        "decision": config.decision,
        "require_significant": config.require_significant,
        "confidence": change.confidence,
        "baseline": production,
        "slices": [s.describe() for s in slices],
        "notes": list(notes),
    }
    if production is None:
        out["skipped"] = (
            "the baseline is the base model, not a production version: nothing to have forgotten yet"
        )
    elif not slices:
        out["skipped"] = "no old slice (" + ("; ".join(notes) or "none found") + ")"
    return out


def _split_ids(
    artifacts: ArtifactStore, family: FamilyConfig, version: str, splits: tuple[str, ...]
) -> set[str]:
    """Example ids of a snapshot's splits: from its manifest, else from the split files (none when
    the snapshot is not there)."""
    manifest = snapshots.read_manifest(artifacts, family.name, version) or {}
    listed = manifest.get("example_ids")
    if isinstance(listed, dict) and all(s in listed for s in splits):
        return {i for s in splits for i in listed[s]}
    out: set[str] = set()
    for split in splits:
        try:
            data = artifacts.read_bytes(f"{snapshots.prefix(family.name, version)}/{split}.parquet")
        except KeyError:
            continue
        out |= set(snapshots.from_parquet(data)["id"].to_pylist())
    return out


def _order(manifest: dict[str, Any]) -> tuple[dt.datetime, str]:
    """Creation order: `created_at` (timezone-aware ISO), ties by version."""
    try:
        when = dt.datetime.fromisoformat(str(manifest.get("created_at")))
    except ValueError:
        when = dt.datetime.min
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when, str(manifest.get("dataset_version"))


def _unused(name: str, taken: set[str]) -> str:
    return next(n for n in (name, *(f"{name}-{i}" for i in range(2, 100))) if n not in taken)
