"""MLflow tracking of a training: one run per training, one experiment per family.

Parameters: the resolved training config (flattened: `lora.r`, `learning_rate` ...), the
dataset_version and the base model. Metrics: loss, learning rate and tokens/s per optimizer
step; validation loss (and accuracy or MAE) per epoch. Artifacts: training_metadata.json and
the loss curve. The embedded default store is `sqlite:///$PULSE_HOME/mlflow.db` with artifacts
under `$PULSE_HOME/mlartifacts`; a server URI works the same. MLflow's telemetry is off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# MLflow reports usage unless told not to (../shared/notes/stack.md); set before it is imported.
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def disable_telemetry() -> None:
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)


class MlflowRun:
    """A started MLflow run; `finish()` marks it FINISHED or FAILED."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        run_name: str,
        artifact_root: Path | None,
        tags: dict[str, str],
    ):
        disable_telemetry()
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            location = (
                (artifact_root / experiment).as_uri()
                if artifact_root and tracking_uri.startswith("sqlite")
                else None
            )
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self._pending: list[Any] = []

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffered: written in batches of 60 values and at finish, not one database round trip a step."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items() if v == v]  # not NaN
        if len(self._pending) >= 60:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self._pending), 500):
            self.client.log_batch(self.run_id, metrics=self._pending[start : start + 500])
        self._pending = []

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def finish(self, ok: bool) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")

    @property
    def url(self) -> str | None:
        """A link to the run in the MLflow UI when the store is a server."""
        if self.tracking_uri.startswith(("http://", "https://")):
            from urllib.parse import urlsplit, urlunsplit

            parts = urlsplit(self.tracking_uri.rstrip("/"))  # a link people see: no user, password or query
            base = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query="", fragment=""))
            return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return None


def log_evaluation(
    tracking_uri: str, run_id: str, metrics: dict[str, float], tags: dict[str, str], files: list[Path]
) -> None:
    """An evaluation's metrics, decision and reports, added to the training's run."""
    import time

    disable_telemetry()
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and v == v]
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[start : start + 500])
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="eval")


def _flatten(values: dict[str, Any], parent: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{parent}.{key}" if parent else key
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        elif isinstance(value, list | tuple):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = value
    return out
