"""Dagster resources: how assets reach the annotation store and the artifact store."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

from pulse_pipeline.core.artifacts import ArtifactStore, open_artifact_store
from pulse_pipeline.core.store import Store
from pulse_pipeline.settings import get_settings

if TYPE_CHECKING:
    from pulse_pipeline.core.registry import Targets
    from pulse_pipeline.core.serving import VllmServer
    from pulse_pipeline.core.training.lock import TrainingLock


class AnnotationStore(dg.ConfigurableResource):
    """The annotation store (SQLite by default; PostgreSQL through PULSE_DATABASE_URL)."""

    database_url: str

    _store: Store | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = Store(self.database_url)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.dispose()

    @property
    def store(self) -> Store:
        if self._store is None:  # used outside a run (e.g. a direct call in a test)
            self._store = Store(self.database_url)
        return self._store


class ArtifactStorage(dg.ConfigurableResource):
    """The artifact store: a folder (default $PULSE_HOME/artifacts) or s3://bucket/prefix."""

    location: str
    s3_endpoint: str | None = None
    s3_access_key: str = ""
    s3_secret_key: str = ""

    def open(self) -> ArtifactStore:
        return open_artifact_store(
            self.location,
            endpoint=self.s3_endpoint,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key,
        )


class TrainingEnvironment(dg.ConfigurableResource):
    """Where trainings keep base models and checkpoints, and where they are tracked."""

    home: str  # PULSE_HOME: models/ (base-model cache) and work/ (checkpoints) live under it
    mlflow_tracking_uri: str = ""  # empty: not tracked
    lock_stale_seconds: float = 120.0  # PULSE_TRAINING_LOCK_STALE_SECONDS (settings.py says what it means)
    heartbeat_seconds: float = 15.0  # PULSE_TRAINING_HEARTBEAT_SECONDS

    @property
    def home_path(self) -> Path:
        return Path(self.home)

    def lock(self, store: Store, instance: dg.DagsterInstance | None) -> "TrainingLock":
        """The training lock over `store`, reading run statuses from `instance`."""
        from pulse_pipeline.defs.training.locking import training_lock

        return training_lock(
            store, instance, stale_seconds=self.lock_stale_seconds, heartbeat_seconds=self.heartbeat_seconds
        )


class ServingEnvironment(dg.ConfigurableResource):
    """The vLLM replicas that serve the adapters (PULSE_VLLM_URL, comma-separated; empty: serving
    not configured)."""

    vllm_url: str = ""
    vllm_api_key: str = ""  # PULSE_VLLM_API_KEY, an EnvVar so the UI never shows it
    max_loras: int = 4  # adapters of one family kept loaded (the server's --max-loras)
    adapter_root: str = ""  # PULSE_VLLM_ADAPTER_ROOT: the artifact store's root as the server sees it

    @property
    def urls(self) -> list[str]:
        return [url.strip() for url in self.vllm_url.split(",") if url.strip()]

    @contextmanager
    def open(self) -> Iterator[Any]:
        """The first replica's client for the block, for the evaluation (None when not configured)."""
        with self.open_replicas() as servers:
            yield servers[0] if servers else None

    @contextmanager
    def open_replicas(self) -> Iterator[list["VllmServer"]]:
        """A client for each replica, for the block (none when not configured)."""
        from pulse_pipeline.core.serving import open_replicas

        with open_replicas(self.urls, api_key=self.vllm_api_key or None) as servers:
            yield servers

    def targets(self, tracking_uri: str, servers: "Sequence[VllmServer]") -> "Targets":
        """Where a promotion is reflected besides the registry: MLflow's model registry and these
        replicas, which must answer the family's golden smoke prompts (core/registry/rollout.py)."""
        from pulse_pipeline.core.registry import Targets
        from pulse_pipeline.core.registry.rollout import golden_smoke_tests

        smoke = golden_smoke_tests(get_settings().pulse_config)
        return Targets(tracking_uri or None, list(servers), self.max_loras, self.adapter_root or None, smoke)


class OracleEndpoint(dg.ConfigurableResource):
    """The labelling oracle (PULSE_ORACLE_*, settings.py): an OpenAI-compatible endpoint, or with no
    URL the local oracle running `model` (default smollm2-135m) in the step's process."""

    url: str = ""
    api_key: str = ""  # PULSE_ORACLE_API_KEY, an EnvVar so the UI never shows it
    model: str = ""
    timeout: float = 60.0
    max_concurrency: int = 4
    retries: int = 2
    requests_per_minute: float = 0.0
    price_input: float = 0.0  # per million prompt tokens
    price_output: float = 0.0  # per million completion tokens

    def open(self, models_dir: Path) -> Any:
        """The oracle (core/oracle/oracles.py); close it when done."""
        from pulse_pipeline.core.oracle.oracles import OracleSettings, Price, open_oracle

        settings = OracleSettings(
            url=self.url or None,
            api_key=self.api_key or None,
            model=self.model or None,
            timeout=self.timeout,
            max_concurrency=self.max_concurrency,
            retries=self.retries,
            requests_per_minute=self.requests_per_minute,
            price=Price(self.price_input, self.price_output),
        )
        return open_oracle(settings, models_dir)


def _from_env(name: str, default: str | None) -> Any:
    """A value set in the environment stays an EnvVar, so the UI never shows a secret in it."""
    return dg.EnvVar(name) if get_settings().from_environment(name) else default


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources for this environment, from the settings and the environment."""
    settings = get_settings()
    return {
        "annotation_store": AnnotationStore(
            database_url=_from_env("PULSE_DATABASE_URL", settings.database_url)
        ),
        "artifact_storage": ArtifactStorage(
            location=_from_env("PULSE_ARTIFACTS", settings.pulse_artifacts),
            s3_endpoint=_from_env("PULSE_S3_ENDPOINT", None),
            s3_access_key=_from_env("PULSE_S3_ACCESS_KEY", ""),
            s3_secret_key=_from_env("PULSE_S3_SECRET_KEY", ""),
        ),
        "training": TrainingEnvironment(
            home=str(settings.pulse_home),
            mlflow_tracking_uri=_from_env("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
            lock_stale_seconds=settings.pulse_training_lock_stale_seconds,
            heartbeat_seconds=settings.pulse_training_heartbeat_seconds,
        ),
        "oracle": OracleEndpoint(
            url=_from_env("PULSE_ORACLE_URL", ""),
            api_key=_from_env("PULSE_ORACLE_API_KEY", ""),
            model=settings.pulse_oracle_model or "",
            timeout=settings.pulse_oracle_timeout,
            max_concurrency=settings.pulse_oracle_max_concurrency,
            retries=settings.pulse_oracle_retries,
            requests_per_minute=settings.pulse_oracle_requests_per_minute,
            price_input=settings.pulse_oracle_price_input,
            price_output=settings.pulse_oracle_price_output,
        ),
        "serving": ServingEnvironment(
            vllm_url=_from_env("PULSE_VLLM_URL", ""),
            vllm_api_key=_from_env("PULSE_VLLM_API_KEY", ""),
            adapter_root=settings.pulse_vllm_adapter_root or "",
        ),
    }
