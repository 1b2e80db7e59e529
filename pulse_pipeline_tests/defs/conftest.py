"""Resources for Dagster runs of a family's lineage: demo annotations in a SQLite store, a local
artifact folder, the session's base-model cache, a local MLflow store and no vLLM server."""

import datetime as dt

import pytest

from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.store import Store
from pulse_pipeline.core.training.base_models import resolve_base_model
from pulse_pipeline.defs.resources import (
    AnnotationStore,
    ArtifactStorage,
    ServingEnvironment,
    TrainingEnvironment,
)
from pulse_pipeline.demo.data import DemoScale, write_demo_file


@pytest.fixture
def resources(config, tmp_path, model_cache):
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    demo = write_demo_file(
        tmp_path / "demo.jsonl", anchor=dt.date(2026, 6, 30), scale=DemoScale().scaled(0.2)
    )
    with Store(url) as store:
        ingest_file(store, demo.path, config)
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    tiny = resolve_base_model("tiny", model_cache).path
    (home / "models" / tiny.name).symlink_to(tiny)  # reuse the session's build
    return {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
        "training": TrainingEnvironment(
            home=str(home), mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"
        ),
        "serving": ServingEnvironment(),  # no vLLM server: peft answers
    }
