"""Training in a process of its own: the command the adapter step starts, the family's
`resources:` block, and the Kubernetes pod it would start (built by dagster-k8s's own pod builder,
so the spec is checked as the cluster would receive it; there is no cluster here)."""

import json
import sys

import dagster as dg
import pytest
from dagster_k8s.pipes import build_pod_body

from pulse_pipeline.core.families import ConfigError, ResourcesConfig, parse_config
from pulse_pipeline.core.training.launch import training_command
from pulse_pipeline.defs.training.assets import DEFAULT_TRAINING_K8S_CONFIG, K8S_CONFIG_TAG, adapter_asset
from pulse_pipeline.defs.training.pipes import training_image, training_pod_spec
from pulse_pipeline.settings import get_settings

FAMILY = {
    "task": "chat_sft",
    "annotation_kinds": ["qa_pair"],
    "base_model": "tiny",
    "prompts": {"system": "Answer.", "qa_pair": "{question}"},
}


def test_the_training_command_carries_the_lock_holder_the_run_and_its_overrides():
    holder = {"who": "sensor:s", "run_id": "abc", "host": "h", "pid": 7}
    command = training_command(
        "fam", processes=2, lock_holder=holder, created_by="sensor:s", run_id="abc", epochs=3, force=True,
        tracking=False,
    )  # fmt: skip
    assert command[:3] == [sys.executable, "-m", "pulse_pipeline.core.training"]
    assert command[3:] == [
        "--family", "fam", "--created-by", "sensor:s", "--run-id", "abc",
        "--lock-holder", json.dumps(holder, sort_keys=True), "--epochs", "3", "--force", "--no-tracking",
        "--processes", "2",
    ]  # fmt: skip
    assert training_command("fam", python="python")[:2] == ["python", "-m"]


def test_resources_default_to_training_in_the_step_and_refuse_processes_there():
    family = parse_config({"families": {"f": FAMILY}}).family("f")
    assert family.resources == ResourcesConfig(launcher="in_process", processes_per_node=1)
    with pytest.raises(ConfigError, match="processes_per_node > 1 needs launcher: subprocess"):
        parse_config({"families": {"f": {**FAMILY, "resources": {"processes_per_node": 2}}}})
    with pytest.raises(ConfigError, match="resources.launcher"):
        parse_config({"families": {"f": {**FAMILY, "resources": {"launcher": "slurm"}}}})


def test_a_training_pod_asks_for_a_gpu_per_process_on_a_gpu_node():
    resources = ResourcesConfig(launcher="kubernetes", processes_per_node=4, image="registry/pulse:1")
    spec = training_pod_spec(resources, DEFAULT_TRAINING_K8S_CONFIG)
    pod = build_pod_body("pulse-training", training_image(resources), ["python", "-m", "x"], {}, None, spec)
    container = pod.spec.containers[0]
    assert container.image == "registry/pulse:1" and container.command == ["python", "-m", "x"]
    assert container.resources.limits == {"nvidia.com/gpu": "4"} == container.resources.requests
    assert [e.config_map_ref.name if e.config_map_ref else e.secret_ref.name for e in container.env_from] == [
        "pulse-config", "pulse-secrets",
    ]  # fmt: skip
    assert {m.mount_path for m in container.volume_mounts} == {"/var/lib/pulse", "/dev/shm"}
    assert (
        pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
        and pod.spec.tolerations[0].key == "nvidia.com/gpu"
    )
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "pulse-home"
    assert pod.spec.restart_policy == "Never"


def test_a_training_pod_without_gpus_goes_on_any_node(pulse_env, monkeypatch):
    resources = ResourcesConfig(launcher="kubernetes", gpus_per_node=0)
    spec = training_pod_spec(resources, {"container_config": {"resources": {"requests": {"cpu": "4", "nvidia.com/gpu": "1"}}}, "pod_spec_config": {"node_selector": {"gpu": "yes"}, "service_account_name": "pulse"}})  # fmt: skip
    assert spec["containers"][0]["resources"] == {"requests": {"cpu": "4"}}
    assert "node_selector" not in spec and spec["service_account_name"] == "pulse"
    with pytest.raises(ValueError, match="set resources.image or PULSE_TRAINING_IMAGE"):
        training_image(resources)
    monkeypatch.setenv("DAGSTER_CURRENT_IMAGE", "registry/pulse:step")  # the step pod's own image
    get_settings.cache_clear()
    assert training_image(resources) == "registry/pulse:step"
    monkeypatch.setenv("PULSE_TRAINING_IMAGE", "registry/pulse:training")
    get_settings.cache_clear()
    assert training_image(resources) == "registry/pulse:training"


def test_a_step_that_starts_a_training_pod_asks_for_no_gpu_itself():
    config = parse_config({"families": {
        "here": FAMILY, "pod": {**FAMILY, "resources": {"launcher": "kubernetes", "image": "i"}},
    }})  # fmt: skip
    tags = {
        name: adapter_asset(config.family(name)).get_op_def_for_asset_key(dg.AssetKey([name, "adapter"])).tags
        for name in ("here", "pod")
    }
    assert K8S_CONFIG_TAG in tags["here"] and K8S_CONFIG_TAG not in tags["pod"]
