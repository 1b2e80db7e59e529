"""Where things live: the environment variables of the contract, with their embedded defaults.

This is the one place that reads them. Every other module asks `get_settings()`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from pulse_pipeline.core.artifacts import ArtifactStore
    from pulse_pipeline.core.capture import Grant
    from pulse_pipeline.core.evaluation.judge import JudgeSettings
    from pulse_pipeline.core.label_studio import LabelStudio
    from pulse_pipeline.core.oracle.oracles import OracleSettings


class Settings(BaseSettings):
    """Locations and service addresses; the defaults are the embedded single-machine setup."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    pulse_home: Path = Field(Path(".pulse"), description="Root folder for local state.")
    pulse_config: Path = Field(Path("pulse.yaml"), description="The families file.")
    pulse_database_url: str | None = Field(
        None, description="Annotation store URL; default sqlite:///$PULSE_HOME/pulse.db."
    )
    pulse_artifacts: str | None = Field(
        None, description="Artifact store root (folder or s3://bucket/prefix); default $PULSE_HOME/artifacts."
    )
    pulse_s3_endpoint: str | None = Field(
        None, description="S3 API endpoint for s3:// artifacts, e.g. http://minio:9000."
    )
    pulse_s3_access_key: str = Field("", description="S3 access key.")
    pulse_s3_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///$PULSE_HOME/mlflow.db."
    )
    dagster_home: Path | None = Field(
        None, description="Dagster instance folder; default $PULSE_HOME/dagster."
    )
    pulse_vllm_url: str | None = Field(
        None,
        description="vLLM server base URL, or several replicas' URLs separated by commas (a promotion "
        "loads the new version on every one); unset: serving is not configured (core/serving.py).",
    )
    pulse_pushgateway_url: str | None = Field(
        None,
        description="Prometheus Pushgateway URL (e.g. http://pushgateway:9091) that the metrics are "
        "pushed to; unset: they are written as a node-exporter textfile (PULSE_METRICS_TEXTFILE).",
    )
    pulse_metrics_textfile: Path | None = Field(
        None,
        description="The node-exporter textfile the metrics are written to when no Pushgateway is set; "
        "default $PULSE_HOME/metrics/pulse.prom.",
    )
    pulse_step_executor: Literal["default", "k8s"] = Field(
        "default",
        description="How a run's steps are executed: `default` (in the run's process, or one process "
        "per step) or `k8s` (dagster-k8s's k8s_job_executor: every step in its own Kubernetes job, so "
        "that the training step alone gets a GPU pod).",
    )
    pulse_training_k8s_config: dict[str, Any] | None = Field(
        None,
        description="JSON: the training step's `dagster-k8s/config` tag (container_config, "
        "pod_spec_config, ...) on Kubernetes; unset: one nvidia.com/gpu, on a node labelled "
        "nvidia.com/gpu.present=true, tolerating the nvidia.com/gpu taint; `{}`: nothing special.",
    )
    pulse_training_image: str | None = Field(
        None,
        description="The training pod's image for families with resources.launcher kubernetes "
        "(unless the family names one); unset: the step pod's own image.",
    )
    dagster_current_image: str | None = Field(
        None, description="Set by dagster-k8s in the pods it starts: the image of the run."
    )
    pulse_training_lock_stale_seconds: float = Field(
        120,
        gt=0,
        description="A training lock whose heartbeat is older than this, or whose Dagster run has "
        "finished, is free; its holder is presumed dead.",
    )
    pulse_training_heartbeat_seconds: float = Field(
        15, gt=0, description="How often a training refreshes its lock's heartbeat."
    )
    pulse_retry_base_seconds: float = Field(
        10.0,
        gt=0,
        description="The first wait before a step that lost its database or object-store connection is "
        "tried again; each of the 3 retries waits twice as long as the one before.",
    )
    pulse_vllm_api_key: SecretStr = Field(
        SecretStr(""), description="The vLLM server's API key, if it has one."
    )
    pulse_vllm_adapter_root: str | None = Field(
        None,
        description="The artifact store's root as the vLLM server sees it on its own file system (a "
        "shared volume holding the store's tree); unset: the local artifact folder's paths, and an "
        "s3:// store cannot be served.",
    )
    pulse_alert_webhook: SecretStr = Field(
        SecretStr(""),
        description="Incoming-webhook URL (Slack-compatible) that run failures and live-accuracy "
        "alerts are posted to; unset: alerts are only logged (core/alerts.py).",
    )
    pulse_dagster_url: str | None = Field(
        None,
        description="Base URL of the Dagster UI as people reach it (e.g. https://dagster.example.org), "
        "for links in alerts; unset: alerts carry the run id only.",
    )
    pulse_judge_url: str | None = Field(
        None, description="OpenAI-compatible endpoint of the optional LLM judge (core/evaluation/judge.py)."
    )
    pulse_judge_api_key: SecretStr = Field(SecretStr(""), description="The judge endpoint's API key.")
    pulse_judge_model: str | None = Field(
        None, description="The judge's model; default: the endpoint's first."
    )
    pulse_judge_timeout: float = Field(60, gt=0, description="Seconds the judge may take per request.")
    pulse_judge_max_concurrency: int = Field(4, ge=1, description="Requests to the judge in flight at once.")
    pulse_judge_retries: int = Field(
        2,
        ge=0,
        description="Retries of a judge request after a connection error, HTTP 429 or 5xx, with "
        "exponential backoff.",
    )
    pulse_oracle_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint of the labelling oracle (`pulse calibrate`, `pulse label`; "
        "core/oracle/); unset: the local oracle runs PULSE_ORACLE_MODEL in process.",
    )
    pulse_oracle_api_key: SecretStr = Field(SecretStr(""), description="The oracle endpoint's API key.")
    pulse_oracle_model: str | None = Field(
        None,
        description="The oracle's model: the endpoint's model id (default: its first), or with no URL a "
        "base model name run locally (default smollm2-135m).",
    )
    pulse_oracle_timeout: float = Field(60, gt=0, description="Seconds the oracle may take per request.")
    pulse_oracle_max_concurrency: int = Field(4, ge=1, description="Requests to the oracle in flight at once.")
    pulse_oracle_retries: int = Field(
        2, ge=0, description="Retries of an oracle request after a connection error, HTTP 429 or 5xx, with backoff."
    )
    pulse_oracle_requests_per_minute: float = Field(
        0, ge=0, description="Rate limit of requests to the oracle endpoint (0: none)."
    )
    pulse_oracle_price_input: float = Field(
        0, ge=0, description="Price of a million prompt tokens, for the cost estimate and `--max-cost`."
    )
    pulse_oracle_price_output: float = Field(0, ge=0, description="Price of a million completion tokens.")
    pulse_capture_tokens: str | None = Field(
        None,
        description='JSON list of the capture service\'s grants, `[{"name", "sha256", "families"}]`: '
        'each token\'s SHA-256 (never the token) and the families it may write (`["*"]`: all); '
        "`pulse capture-token` makes a token and prints its entry (core/capture.py).",
    )
    pulse_label_studio_url: str | None = Field(
        None,
        description="A running Label Studio server (e.g. http://label-studio:8080) that the families' "
        "review queues are pushed to and answers pulled from (core/label_studio.py); unset: the "
        "`label_studio_<family>` sensors skip, and `pulse review export`/`import` work with files.",
    )
    pulse_label_studio_api_key: SecretStr = Field(
        SecretStr(""), description="The Label Studio user's API token (legacy token: Account & Settings)."
    )
    pulse_clinc150: Path | None = Field(
        None,
        description="The CLINC150 dataset's folder (with data_full.json), for the demo's intent data; "
        "unset: ../shared/data/clinc150 beside the project, if it is there.",
    )

    # The fields given a non-empty value by the environment, before the defaults below fill the rest.
    _set_by_environment: frozenset[str] = PrivateAttr(default=frozenset())

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        # Assigning a field below marks it set: note which ones the environment set first.
        self._set_by_environment = frozenset(
            name for name in self.model_fields_set if not _empty(getattr(self, name))
        )
        home = self.pulse_home.expanduser().resolve()
        self.pulse_home = home
        self.pulse_config = self.pulse_config.expanduser().resolve()
        self.pulse_database_url = self.pulse_database_url or f"sqlite:///{home / 'pulse.db'}"
        self.pulse_artifacts = self.pulse_artifacts or str(home / "artifacts")
        self.mlflow_tracking_uri = self.mlflow_tracking_uri or f"sqlite:///{home / 'mlflow.db'}"
        self.dagster_home = (self.dagster_home or home / "dagster").expanduser().resolve()
        textfile = self.pulse_metrics_textfile or home / "metrics" / "pulse.prom"
        self.pulse_metrics_textfile = textfile.expanduser().resolve()
        return self

    def vllm_urls(self) -> list[str]:
        """The vLLM replicas named by PULSE_VLLM_URL (comma-separated), in order; empty when unset."""
        return [url.strip() for url in (self.pulse_vllm_url or "").split(",") if url.strip()]

    def capture_grants(self) -> list[Grant]:
        """The capture service's grants (PULSE_CAPTURE_TOKENS); GrantError names a bad entry."""
        from pulse_pipeline.core.capture import parse_grants

        return parse_grants(self.pulse_capture_tokens)

    def label_studio(self) -> LabelStudio | None:
        """A client of the configured Label Studio server; None when PULSE_LABEL_STUDIO_URL is unset."""
        from pulse_pipeline.core.label_studio import LabelStudio

        url = (self.pulse_label_studio_url or "").strip()
        return LabelStudio(url, self.pulse_label_studio_api_key.get_secret_value()) if url else None

    def artifact_store(self) -> ArtifactStore:
        from pulse_pipeline.core.artifacts import open_artifact_store

        assert self.pulse_artifacts is not None
        return open_artifact_store(
            self.pulse_artifacts,
            endpoint=self.pulse_s3_endpoint,
            access_key=self.pulse_s3_access_key,
            secret_key=self.pulse_s3_secret_key.get_secret_value(),
        )

    def judge(self) -> JudgeSettings | None:
        """The LLM judge's settings (core/evaluation/judge.py); None when PULSE_JUDGE_URL is unset
        or blank, and the judge is skipped. A URL that is no http(s) URL raises ValueError."""
        from pulse_pipeline.core.evaluation.judge import JudgeSettings

        url = (self.pulse_judge_url or "").strip()
        if not url:
            return None
        return JudgeSettings(
            url=url,
            api_key=self.pulse_judge_api_key.get_secret_value(),
            model=self.pulse_judge_model,
            timeout=self.pulse_judge_timeout,
            max_concurrency=self.pulse_judge_max_concurrency,
            retries=self.pulse_judge_retries,
        )

    def oracle(self) -> OracleSettings:
        """The labelling oracle's settings (core/oracle/oracles.py): the endpoint at PULSE_ORACLE_URL,
        or the local oracle when it is unset. A URL that is no http(s) URL raises ValueError."""
        from pulse_pipeline.core.oracle.oracles import OracleSettings, Price

        return OracleSettings(
            url=self.pulse_oracle_url,
            api_key=self.pulse_oracle_api_key.get_secret_value(),
            model=self.pulse_oracle_model,
            timeout=self.pulse_oracle_timeout,
            max_concurrency=self.pulse_oracle_max_concurrency,
            retries=self.pulse_oracle_retries,
            requests_per_minute=self.pulse_oracle_requests_per_minute,
            price=Price(self.pulse_oracle_price_input, self.pulse_oracle_price_output),
        )

    def from_environment(self, name: str) -> bool:
        """Whether the field of environment variable `name` (any case, e.g. "PULSE_DATABASE_URL")
        was set from the environment (pydantic's `model_fields_set` before the defaults are filled
        in); an empty variable counts as unset. A name that is no field is an error."""
        field = name.lower()
        if field not in type(self).model_fields:
            raise ValueError(f"{name} is not one of the settings' environment variables")
        return field in self._set_by_environment

    def secret_values(self) -> list[str]:
        """Every secret these settings hold (passwords inside URLs included), for `core.secrets.mask`:
        the boundaries (CLI output, logs, Dagster events, MLflow) mask them wherever they appear."""
        from pulse_pipeline.core.secrets import url_secrets

        found = [
            secret.get_secret_value()
            for secret in (
                self.pulse_s3_secret_key,
                self.pulse_vllm_api_key,
                self.pulse_judge_api_key,
                self.pulse_oracle_api_key,
                self.pulse_label_studio_api_key,
            )
        ]
        found.append(self.pulse_alert_webhook.get_secret_value())
        for url in (
            self.pulse_database_url,
            self.mlflow_tracking_uri,
            *self.vllm_urls(),
            self.pulse_judge_url,
            self.pulse_oracle_url,
            self.pulse_pushgateway_url,
            self.pulse_label_studio_url,
        ):
            found += url_secrets(url or "")
        return [value for value in found if value]

    @property
    def database_url(self) -> str:
        assert self.pulse_database_url is not None
        return self.pulse_database_url


def _empty(value: object) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is None or value == ""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
