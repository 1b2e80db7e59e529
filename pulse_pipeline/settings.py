"""Where things live: the environment variables of the contract, with their embedded defaults.

This is the one place that reads them. Every other module asks `get_settings()`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from pulse_pipeline.core.artifacts import ArtifactStore


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
        None, description="vLLM server base URL; unset: serving is not configured (core/serving.py)."
    )
    pulse_training_lock_stale_hours: float = Field(
        4.0, gt=0, description="A training lock without a heartbeat for this long was left by a crash."
    )
    pulse_vllm_api_key: SecretStr = Field(
        SecretStr(""), description="The vLLM server's API key, if it has one."
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

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        home = self.pulse_home.expanduser().resolve()
        self.pulse_home = home
        self.pulse_config = self.pulse_config.expanduser().resolve()
        self.pulse_database_url = self.pulse_database_url or f"sqlite:///{home / 'pulse.db'}"
        self.pulse_artifacts = self.pulse_artifacts or str(home / "artifacts")
        self.mlflow_tracking_uri = self.mlflow_tracking_uri or f"sqlite:///{home / 'mlflow.db'}"
        self.dagster_home = (self.dagster_home or home / "dagster").expanduser().resolve()
        return self

    def artifact_store(self) -> ArtifactStore:
        from pulse_pipeline.core.artifacts import open_artifact_store

        assert self.pulse_artifacts is not None
        return open_artifact_store(
            self.pulse_artifacts,
            endpoint=self.pulse_s3_endpoint,
            access_key=self.pulse_s3_access_key,
            secret_key=self.pulse_s3_secret_key.get_secret_value(),
        )

    @property
    def database_url(self) -> str:
        assert self.pulse_database_url is not None
        return self.pulse_database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
