"""The adapter registry: a version's whole life, from its training to its retirement.

    registry = Registry(store, artifacts, Targets(tracking_uri, [vllm_replica, ...]))

    record = registry.begin(family, ...)          # a record in state `training`, before any file
    registry.publish(record, folder, metadata)    # staged, recorded `published`, then revealed
    registry.abandon(record)                      # a training that will not publish: `failed`
    registry.record_evaluation(family, v, res)    # the gate's DEPLOY / REVIEW / FAIL: `evaluated`
    registry.promote(family, v, by=..., ...)      # production or canary: DEPLOY, or --force with a reason
    registry.rollback(family, by=...)             # end a canary, or back to the previous version
    registry.cleanup(family, keep=5, by=...)      # `removed`: the files go, the record stays
    registry.reconcile(family, by=...)            # repair what a crash or a lost database left

The states and the moves allowed between them are written once, in `lifecycle.py`; files and
records move together in `registry.py`; `pointer.py` is current.json; `promotion.py` serves;
`records.py` is the store's side; `files.py` the artifact store's; `mlflow_models.py` mirrors the
registry in MLflow's model registry (aliases champion and challenger).
"""

from pulse_pipeline.core.registry.errors import (
    LifecycleError,
    ModelRegistryError,
    NameError_,
    RegistryError,
    VersionFilesError,
)
from pulse_pipeline.core.registry.lifecycle import State
from pulse_pipeline.core.registry.names import check_version, is_version_of
from pulse_pipeline.core.registry.pointer import read_current
from pulse_pipeline.core.registry.promotion import Expected, Outcome
from pulse_pipeline.core.registry.reconcile import Reconciliation
from pulse_pipeline.core.registry.records import Deployment, VersionRecord
from pulse_pipeline.core.registry.registry import Registry, Targets

__all__ = [
    "Registry",
    "Targets",
    "State",
    "VersionRecord",
    "Deployment",
    "Outcome",
    "Expected",
    "Reconciliation",
    "RegistryError",
    "LifecycleError",
    "NameError_",
    "VersionFilesError",
    "ModelRegistryError",
    "check_version",
    "is_version_of",
    "read_current",
]
