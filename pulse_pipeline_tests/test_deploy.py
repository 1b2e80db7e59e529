"""deploy/ cross-checked: the compose file, the Helm values, the vLLM manifest, the Dockerfile and the
production dagster.yaml parse, name what the deployment needs, use only environment variables the
project reads, and hold no literal secret. No container engine or cluster is needed (or available)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from pulse_pipeline.defs.training.assets import DEFAULT_TRAINING_K8S_CONFIG, K8S_CONFIG_TAG
from pulse_pipeline.settings import Settings, get_settings
from pulse_pipeline_tests.conftest import PROJECT

DEPLOY = PROJECT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
INSTANCE = DEPLOY / "dagster.yaml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
HELM_CONFIG = DEPLOY / "helm" / "pulse-config.yaml"
VLLM_MANIFEST = DEPLOY / "helm" / "vllm.yaml"

DAGSTER_SERVICES = ("code-server", "webserver", "daemon")
REQUIRED_SERVICES = {
    "postgres", "minio", "minio-setup", "mlflow", "code-server", "webserver", "daemon",
    "prometheus", "pushgateway", "vllm",
}  # fmt: skip
# What a Dagster process of the deployment cannot do without (besides the instance's own variables).
REQUIRED_PROJECT_VARIABLES = {
    "PULSE_DATABASE_URL", "PULSE_ARTIFACTS", "PULSE_S3_ENDPOINT", "PULSE_S3_ACCESS_KEY",
    "PULSE_S3_SECRET_KEY", "MLFLOW_TRACKING_URI", "DAGSTER_HOME",
}  # fmt: skip
# PULSE_/MLFLOW_/DAGSTER_ variables that are no Settings field, and who reads them.
OTHER_READERS = {
    "MLFLOW_DISABLE_TELEMETRY": "MLflow (core/training/tracking.py sets it where unset)",
    "MLFLOW_S3_ENDPOINT_URL": "the MLflow server, for its s3:// artifact destination",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "the MLflow server (its job runner stays off)",
}
PROJECT_VARIABLE = re.compile(r"\b(?:PULSE|MLFLOW|DAGSTER)_[A-Z0-9_]*[A-Z0-9]\b")
SECRET_NAME = re.compile(r"(password|passwd|secret_?key|access_?key|api_?key|token|webhook)$", re.IGNORECASE)
PLACEHOLDER = "change-me"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def helm() -> dict[str, Any]:
    return load(HELM_VALUES)


@pytest.fixture(scope="module")
def instance() -> dict[str, Any]:
    if not INSTANCE.exists():
        pytest.skip("deploy/dagster.yaml is not written yet")
    return load(INSTANCE)


def settings_variables() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def instance_variables() -> set[str]:
    """The environment variables deploy/dagster.yaml reads (`env: NAME`)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("env"), str):
                found.add(node["env"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(load(INSTANCE))
    return found


def compose_references(text: str) -> set[str]:
    """The variables compose interpolates: ${VAR}, ${VAR:-default}, ${VAR:?message} ($${...} is literal)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".env")


# --- the compose file ---------------------------------------------------------------------------


def test_compose_has_every_service_of_the_deployment(compose):
    assert set(compose["services"]) >= REQUIRED_SERVICES
    assert compose["services"]["code-server"]["command"] == [
        "dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "pulse_pipeline.definitions",
    ]  # fmt: skip


def test_every_long_running_service_has_a_health_check(compose):
    one_shot = {name for name, s in compose["services"].items() if s.get("restart") == "no"}
    assert one_shot == {"minio-setup"}
    missing = [
        name
        for name, service in compose["services"].items()
        if name not in one_shot and not (service.get("healthcheck") or {}).get("test")
    ]
    assert missing == []


def test_services_wait_for_healthy_dependencies(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            wanted = "service_completed_successfully" if dependency == "minio-setup" else "service_healthy"
            assert condition == {"condition": wanted}, f"{name} -> {dependency}: {condition}"
    for name in DAGSTER_SERVICES:
        assert {"postgres", "minio-setup", "mlflow"} <= set(services[name]["depends_on"])


def test_volumes_are_named_or_files_of_the_repository(compose):
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which deploy/ lacks"
            elif not source.startswith("${"):
                assert source in declared, f"{name}: volume {source} is not declared"
    assert {"postgres-data", "minio-data", "pulse-home", "adapters"} <= declared


def test_the_dagster_services_share_one_instance_and_the_grpc_code_location(compose):
    workspace = load(DEPLOY / "workspace.yaml")
    assert workspace["load_from"] == [
        {"grpc_server": {"host": "code-server", "port": 4000, "location_name": "pulse_pipeline"}}
    ]
    for name in DAGSTER_SERVICES:
        service = compose["services"][name]
        assert service_env(service)["DAGSTER_HOME"] == "/opt/dagster/home"
        assert "./dagster.yaml:/opt/dagster/home/dagster.yaml:ro" in service["volumes"]
    for name in ("webserver", "daemon"):
        assert "/opt/dagster/workspace.yaml" in compose["services"][name]["command"]


def test_vllm_serves_lora_adapters_on_a_gpu_only_in_the_gpu_profile(compose):
    vllm = compose["services"]["vllm"]
    assert vllm["profiles"] == ["gpu"]
    assert "--enable-lora" in vllm["command"]
    assert service_env(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # vLLM sees the adapters where the pipeline says it does, from the volume adapter-sync fills.
    root = service_env(compose["services"]["code-server"])["PULSE_VLLM_ADAPTER_ROOT"]
    assert f"adapters:{root}:ro" in vllm["volumes"]
    assert f"adapters:{root}" in compose["services"]["adapter-sync"]["volumes"]
    assert compose["services"]["adapter-sync"]["profiles"] == ["gpu"]
    for name, service in compose["services"].items():
        if name not in ("vllm", "adapter-sync", "capture"):
            assert "profiles" not in service, f"{name} would not start by default"


def test_the_capture_service_runs_on_the_project_image_in_its_own_profile(compose):
    capture = compose["services"]["capture"]
    assert capture["profiles"] == ["capture"]  # it refuses to start until tokens are granted
    assert capture["command"][:2] == ["pulse", "serve-capture"] and "0.0.0.0" in capture["command"]
    env = service_env(capture)
    assert env["PULSE_CAPTURE_TOKENS"] == "${PULSE_CAPTURE_TOKENS:-}"
    assert env["PULSE_DATABASE_URL"] == service_env(compose["services"]["code-server"])["PULSE_DATABASE_URL"]
    assert "8030/healthz" in " ".join(capture["healthcheck"]["test"])
    scraped = [
        job["static_configs"][0]["targets"]
        for job in load(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    ]
    assert ["capture:8030"] in scraped


def test_mlflow_keeps_runs_in_postgresql_and_artifacts_in_the_bucket(compose):
    command = compose["services"]["mlflow"]["command"]
    assert "--serve-artifacts" in command
    assert any(arg.startswith("--backend-store-uri=postgresql+psycopg2://") for arg in command)
    assert any(arg.startswith("--artifacts-destination=s3://") for arg in command)
    assert service_env(compose["services"]["mlflow"])["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_prometheus_scrapes_the_pushgateway_with_its_labels(compose):
    config = load(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pushgateway"]
    assert job["honor_labels"] is True
    assert job["static_configs"] == [{"targets": ["pushgateway:9091"]}]
    assert (
        service_env(compose["services"]["code-server"])["PULSE_PUSHGATEWAY_URL"] == "http://pushgateway:9091"
    )


# --- environment variables ----------------------------------------------------------------------


def test_the_dagster_services_get_every_variable_the_deployment_requires(compose):
    required = REQUIRED_PROJECT_VARIABLES | (instance_variables() if INSTANCE.exists() else set())
    for name in DAGSTER_SERVICES:
        env = service_env(compose["services"][name])
        missing = sorted(v for v in required if not env.get(v))
        assert missing == [], f"{name} lacks {missing}"
        assert env["PULSE_DATABASE_URL"].startswith("postgresql+psycopg2://")
        assert env["PULSE_ARTIFACTS"].startswith("s3://")


def test_every_project_variable_the_deployment_names_is_one_the_project_reads(instance):
    known = settings_variables() | instance_variables() | set(OTHER_READERS)
    unknown = {
        f"{path.relative_to(PROJECT)}: {name}"
        for path in [*deploy_files(), PROJECT / ".dockerignore"]
        for name in PROJECT_VARIABLE.findall(path.read_text())
        if name not in known
    }
    assert sorted(unknown) == []


def test_env_example_defines_exactly_what_compose_interpolates():
    used = compose_references(COMPOSE.read_text())
    defined = set(env_example())
    assert sorted(used - defined) == [], "missing from .env.example"
    assert sorted(defined - used) == [], "in .env.example but unused by compose"


def test_env_example_names_every_variable_the_project_reads():
    named = set(PROJECT_VARIABLE.findall(ENV_EXAMPLE.read_text()))
    assert sorted(settings_variables() - named) == []


def test_required_secrets_have_no_default_in_compose():
    text = COMPOSE.read_text()
    for name, value in env_example().items():
        if value == PLACEHOLDER and name != "PULSE_VLLM_API_KEY":  # vLLM (profile gpu) may run without a key
            assert f"${{{name}:?set it in .env}}" in text, f"{name} should be required"
            assert not re.search(rf"\$\{{{name}:-", text), f"{name} has a default"


# --- no literal secret --------------------------------------------------------------------------


def _literal_secrets(node: Any, where: str) -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            literal = isinstance(value, str | int) and str(value) and not str(value).startswith("${")
            if literal and SECRET_NAME.search(str(key)):
                found.append(f"{where}: {key}")
            found += _literal_secrets(value, where)
    elif isinstance(node, list):
        for value in node:
            found += _literal_secrets(value, where)
    return found


def test_no_literal_secret_in_any_deploy_file():
    found = []
    for path in [*deploy_files(), PROJECT / ".dockerignore"]:
        text = path.read_text()
        where = str(path.relative_to(PROJECT))
        # user:password@ inside a URL, unless the password is interpolated
        found += [
            f"{where}: {m}" for m in re.findall(r"://[^/\s:@]+:([^@\s]+)@", text) if not m.startswith("${")
        ]
        if path == ENV_EXAMPLE:
            found += [
                f"{where}: {name}"
                for name, value in env_example().items()
                if SECRET_NAME.search(name) and value not in ("", PLACEHOLDER)
            ]
        elif path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(text):
                found += _literal_secrets(doc, where)
        else:  # shell and Dockerfile: NAME=literal
            found += [
                f"{where}: {name}"
                for name, value in re.findall(r"\b([A-Z_]*(?:PASSWORD|SECRET_KEY|API_KEY|TOKEN))=(\S+)", text)
                if not value.startswith(("$", '"$'))
            ]
    assert found == []


def test_the_secret_scan_catches_a_literal_password():
    # The scan above must be able to fail.
    assert _literal_secrets({"environment": {"POSTGRES_PASSWORD": "hunter2"}}, "x") == [
        "x: POSTGRES_PASSWORD"
    ]
    assert _literal_secrets({"environment": {"POSTGRES_PASSWORD": "${P:?set it}"}}, "x") == []


# --- the production instance (written by another part of issue 14) -----------------------------


def test_the_production_instance_runs_on_postgresql_with_queue_pools_monitoring_and_s3_logs(instance):
    assert "postgres" in instance["storage"]
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    pools = instance["concurrency"]["pools"]
    assert (
        pools.get("default_limit") == 1
        or pools.get("training") == 1
        or pools.get("limits", {}).get("training") == 1
    )
    assert instance["run_monitoring"]["enabled"] is True
    assert instance["run_retries"]["enabled"] is True
    assert instance["telemetry"]["enabled"] is False
    assert instance["compute_logs"]["class"] == "S3ComputeLogManager"
    pg = instance_variables()
    assert {
        "DAGSTER_PG_HOST",
        "DAGSTER_PG_USER",
        "DAGSTER_PG_PASSWORD",
        "DAGSTER_PG_DB",
        "DAGSTER_PG_PORT",
    } <= pg


# --- Kubernetes ---------------------------------------------------------------------------------


def test_helm_values_run_the_code_location_with_the_k8s_run_launcher(helm):
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = helm["runLauncher"]["config"]["k8sRunLauncher"]
    assert {"name": "pulse-secrets"} in launcher["envSecrets"]
    assert {"name": "pulse-config"} in launcher["envConfigMaps"]
    deployments = helm["dagster-user-deployments"]
    assert deployments["enabled"] is True
    (deployment,) = deployments["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "pulse_pipeline.definitions"]
    assert deployment["envSecrets"] == [{"name": "pulse-secrets"}]
    assert deployment["envConfigMaps"] == [{"name": "pulse-config"}]
    images = {helm[part]["image"]["repository"] for part in ("dagsterWebserver", "dagsterDaemon")}
    assert images == {deployment["image"]["repository"]}  # the webserver and daemon need dagster-aws too


def test_helm_values_configure_the_instance_like_the_production_dagster_yaml(helm):
    assert helm["postgresql"]["enabled"] is False
    assert helm["generatePostgresqlPasswordSecret"] is False
    assert helm["postgresql"]["postgresqlPassword"] == ""
    daemon = helm["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert daemon["runMonitoring"]["enabled"] is True
    assert daemon["runRetries"]["enabled"] is True
    assert helm["concurrency"]["enabled"] is True
    assert helm["concurrency"]["pools"]["defaultLimit"] == 1
    assert helm["computeLogManager"]["type"] == "S3ComputeLogManager"
    assert helm["telemetry"]["enabled"] is False


def test_the_config_map_sets_what_the_code_location_needs_and_no_secret():
    config_map, claim = load_all(HELM_CONFIG)
    data = config_map["data"]
    assert {"PULSE_ARTIFACTS", "PULSE_S3_ENDPOINT", "MLFLOW_TRACKING_URI", "PULSE_VLLM_ADAPTER_ROOT"} <= set(
        data
    )
    assert not {"PULSE_DATABASE_URL", "PULSE_S3_SECRET_KEY", "PULSE_VLLM_API_KEY"} & set(
        data
    )  # pulse-secrets
    assert data["PULSE_STEP_EXECUTOR"] == "k8s"
    k8s = json.loads(data["PULSE_TRAINING_K8S_CONFIG"])
    assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert claim["kind"] == "PersistentVolumeClaim" and claim["metadata"]["name"] == "pulse-home"


def test_the_capture_manifest_runs_the_service_with_the_pipelines_settings_and_probes():
    docs = {doc["kind"]: doc for doc in load_all(DEPLOY / "helm" / "capture.yaml")}
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["pulse", "serve-capture"] and "0.0.0.0" in container["command"]
    sources = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
    assert sources == ["pulse-config", "pulse-secrets"]  # the store's URL and the token grants are secret
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert docs["Service"]["spec"]["ports"][0]["port"] == 8030


def test_the_vllm_manifest_serves_lora_adapters_from_the_adapter_volume():
    docs = {doc["kind"]: doc for doc in load_all(VLLM_MANIFEST)}
    assert set(docs) == {"PersistentVolumeClaim", "Deployment", "Service"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    vllm = containers["vllm"]
    assert "--enable-lora" in vllm["args"]
    env = {e["name"]: e for e in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "pulse-secrets"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    root = load_all(HELM_CONFIG)[0]["data"]["PULSE_VLLM_ADAPTER_ROOT"]
    assert {"name": "data", "mountPath": root, "subPath": "artifacts", "readOnly": True} in vllm[
        "volumeMounts"
    ]
    sync = containers["adapter-sync"]
    assert {"name": "data", "mountPath": root, "subPath": "artifacts"} in sync["volumeMounts"]
    assert f"{root}/adapters" in sync["args"][0]
    assert (
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
        == docs["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]


def _training_k8s_configs(defs) -> dict[str, dict[str, Any]]:
    import dagster as dg

    configs = {}
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        if key.path[-1] == "adapter":
            tags = defs.resolve_assets_def(dg.AssetKey(key.path)).op.tags
            configs[key.to_user_string()] = json.loads(tags[K8S_CONFIG_TAG])
    return configs


def test_every_training_step_asks_kubernetes_for_a_gpu_node(config):
    from pulse_pipeline.definitions import build_definitions

    configs = _training_k8s_configs(build_definitions(config))
    assert set(configs) == {f"{name}/adapter" for name in config.families}
    for k8s in configs.values():
        assert k8s == DEFAULT_TRAINING_K8S_CONFIG
        resources = k8s["container_config"]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
        assert k8s["pod_spec_config"]["node_selector"]
        assert k8s["pod_spec_config"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_only_the_training_step_asks_for_a_gpu(config):
    from pulse_pipeline.definitions import build_definitions

    defs = build_definitions(config)
    tagged = {
        key.to_user_string()
        for key in defs.resolve_asset_graph().get_all_asset_keys()
        if K8S_CONFIG_TAG in defs.resolve_assets_def(key).op.tags
    }
    assert tagged == {f"{name}/adapter" for name in config.families}


def test_the_training_step_takes_its_pod_config_from_the_environment(config, monkeypatch):
    from pulse_pipeline.definitions import build_definitions

    wanted = {"pod_spec_config": {"node_selector": {"pool": "a100"}}}
    monkeypatch.setenv("PULSE_TRAINING_K8S_CONFIG", json.dumps(wanted))
    get_settings.cache_clear()
    assert set(map(json.dumps, _training_k8s_configs(build_definitions(config)).values())) == {
        json.dumps(wanted)
    }
    monkeypatch.setenv("PULSE_TRAINING_K8S_CONFIG", json.dumps({"pod_config": {}}))
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="PULSE_TRAINING_K8S_CONFIG: unknown keys \\['pod_config'\\]"):
        build_definitions(config)


def test_the_k8s_step_executor_runs_each_step_in_its_own_job(config, monkeypatch):
    from dagster_k8s import k8s_job_executor

    from pulse_pipeline.definitions import build_definitions

    assert build_definitions(config).executor is None  # Dagster's default: steps in the run's process
    monkeypatch.setenv("PULSE_STEP_EXECUTOR", "k8s")
    get_settings.cache_clear()
    assert build_definitions(config).executor is k8s_job_executor


# --- the image ----------------------------------------------------------------------------------


def test_the_dockerfile_builds_a_non_root_offline_image_of_the_installed_project():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "ARG TORCH_VARIANT=cpu" in text
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"' in text
    assert re.search(r'pip install "\.\[k8s\]" ', text) and "pip install -e" not in text
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    for setting in (
        "HF_HUB_OFFLINE=1",
        "TRANSFORMERS_OFFLINE=1",
        "MLFLOW_DISABLE_TELEMETRY=true",
        "DO_NOT_TRACK=true",
    ):
        assert setting in text
    ignored = (PROJECT / ".dockerignore").read_text().split()
    for path in re.findall(r"^COPY (?:--chown=\S+ )?(\S+) ", text, re.MULTILINE):
        if not path.startswith("--"):
            assert (PROJECT / path).exists(), f"the Dockerfile copies {path}, which the repository lacks"
            assert path not in ignored
    assert {".venv", ".venv-*", ".pulse", "test-artifacts", ".git"} <= set(ignored)


# --- the PostgreSQL init script, against a real server ------------------------------------------


@pytest.mark.postgres
def test_the_init_script_creates_one_role_and_database_per_part(postgres):
    import psycopg2

    suffix = uuid.uuid4().hex[:8]
    names = {part: f"{part}_{suffix}" for part in ("dagster", "pulse", "mlflow")}
    env = {
        **os.environ,
        "PATH": f"{postgres.bin}:{os.environ['PATH']}",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(postgres.port),
        "POSTGRES_USER": "postgres",
        "DAGSTER_PG_USER": names["dagster"], "DAGSTER_PG_PASSWORD": "pw1", "DAGSTER_PG_DB": names["dagster"],
        "ANNOTATIONS_DB_USER": names["pulse"], "ANNOTATIONS_DB_PASSWORD": "pw2",
        "ANNOTATIONS_DB_NAME": names["pulse"],
        "TRACKING_DB_USER": names["mlflow"], "TRACKING_DB_PASSWORD": "pw3", "TRACKING_DB_NAME": names["mlflow"],
    }  # fmt: skip
    script = DEPLOY / "postgres" / "create-databases.sh"
    out = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    conn = psycopg2.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="postgres")
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY(%s)",
            (list(names.values()),),
        )
        assert dict(cur.fetchall()) == {name: name for name in names.values()}
    conn.close()
    again = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr  # ON_ERROR_STOP: no silent half-run
