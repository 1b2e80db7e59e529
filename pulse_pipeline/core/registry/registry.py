"""`Registry`: a family's adapter versions, their files in the artifact store and their records in
the store, moved together.

A training calls `begin` (the record, state `training`, reserves the name before any file is
written), then `publish` (files uploaded under the staging name, the record moved to `published`,
then the folder revealed under the version's name) or `abandon` (state `failed`, staging
removed). The evaluation calls `record_evaluation`. Serving changes go through `promote`,
`rollback` and `cleanup` (promotion.py); `reconcile` (reconcile.py) repairs what a crash or a lost
database left half done. A folder without a record is never a version: it is listed by
`unrecorded` until reconcile adopts or removes it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.registry import files, pointer
from pulse_pipeline.core.registry.errors import RegistryError
from pulse_pipeline.core.registry.lifecycle import VISIBLE, State, state_after_evaluation
from pulse_pipeline.core.registry.names import check_version, order, semantic_label
from pulse_pipeline.core.registry.records import DeploymentLog, VersionRecord, VersionRecords
from pulse_pipeline.core.snapshots import read_manifest
from pulse_pipeline.core.store.database import Database, now

if TYPE_CHECKING:
    from pulse_pipeline.core.registry.promotion import Expected, Outcome
    from pulse_pipeline.core.registry.reconcile import Reconciliation
    from pulse_pipeline.core.registry.rollout import SmokeTests
    from pulse_pipeline.core.serving import VllmServer


@dataclass
class Targets:
    """Where a serving change is reflected besides the registry: MLflow's model registry and vLLM."""

    tracking_uri: str | None = None  # None: MLflow not configured
    servers: Sequence[VllmServer] = ()  # the vLLM replicas (empty: serving not configured)
    max_loaded: int = 4  # adapters of a family kept loaded on each replica
    adapter_root: str | None = None  # the artifact store's root as the vLLM servers see it (default: ours)
    smoke: SmokeTests | None = None  # family -> what a replica must answer (None: one generic prompt); rollout.py


class Registry:
    def __init__(self, db: Database, artifacts: ArtifactStore, targets: Targets | None = None):
        self.db = db
        self.artifacts = artifacts
        self.targets = targets or Targets()
        self.records = VersionRecords(db)
        self.audit = DeploymentLog(db)

    # -- reading ------------------------------------------------------------------------------

    def record(self, family: str, version: str) -> VersionRecord | None:
        return self.records.get(family, check_version(family, version))

    def require(self, family: str, version: str) -> VersionRecord:
        """The version's record, visible (its files complete under its name); else one line saying why."""
        record = self.record(family, version)
        if record is None:
            if version in files.complete_folders(self.artifacts, family):
                raise RegistryError(
                    f"{family} {version} has files but no record in the store (left by a crash, or "
                    f"copied in by hand): `pulse registry reconcile --family {family}` adopts or removes it"
                )
            raise RegistryError(f"{family} has no version {version}")
        if record.state not in VISIBLE:
            raise RegistryError(f"{family} {version} is {record.state}: it has no files to use")
        return record

    def current(self, family: str) -> pointer.Pointer | None:
        return pointer.read_current(self.artifacts, family)

    def metadata(self, family: str, version: str) -> dict[str, Any]:
        return files.read_metadata(self.artifacts, family, version)

    def available(self, family: str) -> list[str]:
        """Versions a person can use: recorded, visible, and complete under their name; oldest first."""
        folders = set(files.complete_folders(self.artifacts, family))
        visible = {r.version for r in self.records.list(family, states=VISIBLE)}
        return sorted(folders & visible, key=order)

    def unrecorded(self, family: str) -> list[str]:
        """Complete folders without a record: never promotable; reconcile adopts or removes them."""
        recorded = {r.version for r in self.records.list(family)}
        return [v for v in files.complete_folders(self.artifacts, family) if v not in recorded]

    def newest(self, family: str) -> str | None:
        found = self.available(family)
        return found[-1] if found else None

    def find_trained(
        self, family: str, dataset_version: str, training_config: dict[str, Any]
    ) -> VersionRecord | None:
        """The newest visible version trained on this snapshot with these settings, if any."""
        for record in reversed(self.records.list(family, states=VISIBLE)):
            if record.dataset_version == dataset_version and record.training_config == training_config:
                return record
        return None

    def trained_watermark(self, family: str) -> int:
        """The store seq that the snapshot of the family's newest trained version was built up to
        (0 before the first training): annotations after it are new to every trained version. A
        training that reused a version on a rebuilt, identical snapshot moved it up to the rebuild's."""
        found = self.records.trained_watermark(family)
        if found is not None:
            return found
        for record in reversed(self.records.list(family)):  # recorded before versions had a watermark
            if record.state in (State.TRAINING, State.FAILED):
                continue
            seq = _manifest_watermark(self.artifacts, family, record.dataset_version)
            if seq is not None:  # kept on the record: a manifest is read once, not on every sensor tick
                self.records.update(family, record.version, watermark=seq)
                return seq
        return 0

    def saw_data_up_to(self, family: str, version: str, watermark: int) -> None:
        """A training reused `version` on a snapshot rebuilt up to `watermark`: the identical examples
        were trained on, so what arrived up to there is not new any more."""
        record = self.records.get(family, version)
        if record is not None and (record.watermark or 0) < watermark:
            self.records.update(family, version, watermark=watermark)

    # -- a version's life ---------------------------------------------------------------------

    def begin(
        self,
        family: str,
        *,
        dataset_version: str,
        base_model: str,
        training_config: dict[str, Any],
        created_by: str,
        run_id: str | None = None,
        watermark: int | None = None,
        when: dt.datetime | None = None,
    ) -> VersionRecord:
        """Reserve the next version name of this minute with a record in state `training`,
        before any of its files is written."""
        previous = self.records.newest_trained(family)
        share = self._new_example_share(family, previous.dataset_version if previous else None, dataset_version)
        label = semantic_label(
            previous.semantic_version if previous else None,
            previous.base_model if previous else None,
            base_model,
            share,
        )
        folders = set(files.complete_folders(self.artifacts, family))
        return self.records.reserve(
            family,
            when or now(),
            {
                "base_model": base_model,
                "dataset_version": dataset_version,
                "training_config": training_config,
                "created_by": created_by,
                "semantic_version": label,
                "run_id": run_id,
                "watermark": watermark,
            },
            taken=lambda name: name in folders or files.is_staged(self.artifacts, family, name),
        )

    def publish(self, record: VersionRecord, folder: Path, metadata: dict[str, Any]) -> VersionRecord:
        """Stage the folder, mark the record `published`, then reveal the folder under its name.
        A crash after the record moved leaves the files staged: reconcile reveals them."""
        files.stage(self.artifacts, record.family, record.version, folder, metadata)
        return self.publish_staged(record)

    def publish_staged(self, record: VersionRecord) -> VersionRecord:
        """Move the record to `published`, then reveal its staged folder under its name."""
        published = self.records.move(record, State.PUBLISHED)
        files.reveal(self.artifacts, record.family, record.version)
        return published

    def abandon(self, record: VersionRecord) -> bool:
        """A training that will not publish: the record becomes `failed` and its staging folder
        goes. False when the record had moved on (it was published after all: keep its files)."""
        try:
            self.records.move(record, State.FAILED)
        except RegistryError:
            return False
        files.discard_staged(self.artifacts, record.family, record.version)
        return True

    def serialized(self, family: str) -> AbstractContextManager[None]:
        """One change of the family's registry at a time, across processes: promotions, rollbacks,
        cleanups, reconciles and recorded evaluations each read the pointer and the records, decide,
        and write inside it, so none acts on what another is changing."""
        return self.db.exclusive(f"registry:{family}")

    def record_evaluation(self, family: str, version: str, results: dict[str, Any]) -> VersionRecord:
        """The gate's decision, the metrics and the baseline compared with, on the version's record;
        a published version becomes `evaluated`, a served or retired one keeps its state."""
        with self.serialized(family):
            return self._record_evaluation(family, version, results)

    def _record_evaluation(self, family: str, version: str, results: dict[str, Any]) -> VersionRecord:
        record = self.require(family, version)
        changes = {
            "decision": results["gate"]["decision"],
            "metrics": {name: systems["candidate"] for name, systems in results["metrics"].items()},
            "baseline_version": (results.get("baseline") or {}).get("version"),
            "evaluated_at": now(),
        }
        state = state_after_evaluation(record.state)
        if state is not record.state:
            return self.records.move(record, state, **changes)
        self.records.update(family, version, **changes)
        after = self.records.get(family, version)
        assert after is not None
        return after

    # -- serving (promotion.py) and repairs (reconcile.py) -----------------------------------

    def promote(
        self, family: str, version: str, *, by: str, reason: str = "", traffic_share: float = 1.0,
        force: bool = False, expect: Expected | None = None,
    ) -> Outcome:  # fmt: skip
        """Make `version` production (share 1.0) or a canary beside it (share below 1.0): only a
        version whose latest evaluation said DEPLOY, or with `force` and a `reason`. With `expect`,
        refuse when production is no longer what the evaluation compared with."""
        from pulse_pipeline.core.registry.promotion import promote

        with self.serialized(family):
            return promote(
                self, family, version, by=by, reason=reason, traffic_share=traffic_share, force=force,
                expect=expect,
            )  # fmt: skip

    def rollback(self, family: str, *, by: str, reason: str = "") -> Outcome:
        """Undo the pointer's last move: end a canary, or make the previous production version current."""
        from pulse_pipeline.core.registry.promotion import rollback

        with self.serialized(family):
            return rollback(self, family, by=by, reason=reason)

    def cleanup(self, family: str, *, keep: int, by: str) -> Outcome:
        """Remove all but the newest `keep` versions (never production, the previous one or a canary)."""
        from pulse_pipeline.core.registry.promotion import cleanup

        with self.serialized(family):
            return cleanup(self, family, keep=keep, by=by)

    def reconcile(self, family: str, *, by: str, training_alive: bool = False, dry_run: bool = False) -> Reconciliation:
        """Repair what a crash left: see reconcile.py."""
        from pulse_pipeline.core.registry.reconcile import reconcile

        with self.serialized(family):
            return reconcile(self, family, by=by, training_alive=training_alive, dry_run=dry_run)

    # -- pieces ---------------------------------------------------------------------------------

    def _new_example_share(self, family: str, previous_dataset: str | None, dataset: str) -> float:
        """Share of this snapshot's examples that the previous version's snapshot lacked."""
        if not previous_dataset:
            return 1.0
        new, old = _example_ids(self.artifacts, family, dataset), _example_ids(self.artifacts, family, previous_dataset)
        if new is None or old is None:
            return 1.0
        return len(new - old) / len(new) if new else 0.0


def _manifest_watermark(artifacts: ArtifactStore, family: str, dataset: str) -> int | None:
    manifest = read_manifest(artifacts, family, dataset)
    return int(manifest["watermark"]["seq"]) if manifest and "watermark" in manifest else None


def _example_ids(artifacts: ArtifactStore, family: str, dataset: str) -> set[str] | None:
    manifest = read_manifest(artifacts, family, dataset)
    if manifest is None:
        return None
    return {i for split_ids in (manifest.get("example_ids") or {}).values() for i in split_ids}
