"""The adapter step's training in a process of its own, through Dagster Pipes.

A family's `resources.launcher` picks where `python -m pulse_pipeline.core.training` runs:
- `subprocess`: on the step's machine, with `PipesSubprocessClient` (under torchrun when
  `processes_per_node` > 1);
- `kubernetes`: in a pod of its own, with dagster-k8s's `PipesK8sClient`; the pod is built from
  the family's resources and PULSE_TRAINING_K8S_CONFIG (its GPU requests, node selector and
  tolerations), with the project's ConfigMap, Secret and PULSE_HOME volume (deploy/helm).

The step holds the family's training lock and passes its holder; the training watches it
(core/training/lock.WatchedLease). The training's progress lines arrive as Pipes log messages in
the run's log, and the published version as a Pipes custom message, from which the step builds
the same materialization as an in-process training.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg

from pulse_pipeline.core.families import FamilyConfig, ResourcesConfig

# Where the helm chart puts the project's settings and PULSE_HOME (deploy/helm/pulse-config.yaml).
CONFIG_MAP, SECRET, HOME_CLAIM = "pulse-config", "pulse-secrets", "pulse-home"
HOME_MOUNT = "/var/lib/pulse"


def train_through_pipes(
    context: dg.AssetExecutionContext, family: FamilyConfig, command: list[str], env: dict[str, str]
) -> Any:
    """Run the training `command` where the family's launcher says; return its TrainedAdapter.
    A failed training raises TrainingError with the training's own one-line reason."""
    from pulse_pipeline.core.training.__main__ import RESULT_MESSAGE
    from pulse_pipeline.core.training.recipe import TrainingError
    from pulse_pipeline.core.training.runner import TrainedAdapter

    with tempfile.TemporaryDirectory(prefix="pulse-training-") as tmp:
        failure = Path(tmp) / "failure.txt"
        try:
            if family.resources.launcher == "kubernetes":
                invocation = _kubernetes_client().run(
                    context=context,
                    command=command,
                    image=training_image(family.resources),
                    namespace=family.resources.namespace,
                    env=env,
                    base_pod_spec=training_pod_spec(family.resources),
                )
            else:
                invocation = dg.PipesSubprocessClient().run(
                    context=context, command=[*command, "--failure-file", str(failure)], env=env
                )
        except Exception:  # dagster's DagsterPipesExecutionError, dagster-k8s's errors, a lost connection
            reason = failure.read_text().strip() if failure.is_file() else ""
            if not reason:
                raise
            raise TrainingError(reason) from None
    found = [m[RESULT_MESSAGE] for m in invocation.get_custom_messages() if RESULT_MESSAGE in (m or {})]
    if not found:
        raise TrainingError(f"{family.name}: the training process ended without reporting a version")
    fields = {f.name for f in dataclasses.fields(TrainedAdapter)}
    trained = {k: v for k, v in found[-1].items() if k in fields}
    trained["repaired"] = tuple(trained.get("repaired") or ())
    return TrainedAdapter(**trained)


def _kubernetes_client() -> Any:
    from dagster_k8s import PipesK8sClient

    return PipesK8sClient()


def training_image(resources: ResourcesConfig) -> str:
    """The training pod's image: the family's, else PULSE_TRAINING_IMAGE, else the step pod's own
    (dagster-k8s sets DAGSTER_CURRENT_IMAGE in the pods it starts)."""
    from pulse_pipeline.settings import get_settings

    settings = get_settings()
    image = resources.image or settings.pulse_training_image or settings.dagster_current_image
    if not image:
        raise ValueError(
            "resources.launcher kubernetes needs an image: set resources.image or PULSE_TRAINING_IMAGE"
        )
    return image


def training_pod_spec(resources: ResourcesConfig, k8s_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training pod (Kubernetes API field names in snake_case, as dagster-k8s takes them): the
    project's ConfigMap and Secret as environment, PULSE_HOME's volume, and PULSE_TRAINING_K8S_CONFIG's
    resources, node selector and tolerations, its GPU count set to the family's (gpus_per_node,
    else one per process)."""
    from pulse_pipeline.defs.training.assets import training_k8s_config

    config = copy.deepcopy(k8s_config if k8s_config is not None else training_k8s_config())
    container = config.get("container_config", {})
    limits = dict(container.get("resources", {}).get("limits", {}))
    requests = dict(container.get("resources", {}).get("requests", {}))
    gpus = resources.gpus_per_node if resources.gpus_per_node is not None else resources.processes_per_node
    for bounds in (limits, requests):
        if gpus:
            bounds["nvidia.com/gpu"] = str(gpus)
        else:
            bounds.pop("nvidia.com/gpu", None)
    spec: dict[str, Any] = {
        "restart_policy": "Never",
        "containers": [
            {
                "name": "training",
                "env_from": [{"config_map_ref": {"name": CONFIG_MAP}}, {"secret_ref": {"name": SECRET}}],
                "resources": {k: v for k, v in (("limits", limits), ("requests", requests)) if v},
                "volume_mounts": [{"name": HOME_CLAIM, "mount_path": HOME_MOUNT}],
            }
        ],
        "volumes": [{"name": HOME_CLAIM, "persistent_volume_claim": {"claim_name": HOME_CLAIM}}],
    }
    pod = config.get("pod_spec_config", {})
    for key in ("node_selector", "tolerations", "affinity", "service_account_name", "priority_class_name"):
        if key in pod and (gpus or key not in ("node_selector", "tolerations")):
            spec[key] = pod[key]
    if resources.processes_per_node > 1:  # torchrun's processes share tensors through /dev/shm
        spec["volumes"].append({"name": "dshm", "empty_dir": {"medium": "Memory"}})
        spec["containers"][0]["volume_mounts"].append({"name": "dshm", "mount_path": "/dev/shm"})
    return spec
