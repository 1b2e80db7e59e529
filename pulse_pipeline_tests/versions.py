"""Adapter versions for tests that need files in the artifact store but no database (the evaluation
runner judges a folder), and for tests that need them recorded too (through the registry)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pulse_pipeline.core.artifacts import ArtifactStore
from pulse_pipeline.core.registry import files
from pulse_pipeline.core.registry.names import version_name


def publish_files(
    artifacts: ArtifactStore, family: str, folder: Path, metadata: dict[str, Any], *, when: dt.datetime | None = None
) -> str:
    """Stage and reveal `folder` as the first free version name of `when`'s minute, with no record:
    what the registry does for a training, minus the store."""
    when = when or dt.datetime.now(dt.UTC)
    taken = set(files.complete_folders(artifacts, family))
    version = next(v for n in range(1, 1000) if (v := version_name(family, when, n)) not in taken)
    files.stage(artifacts, family, version, folder, metadata)
    files.reveal(artifacts, family, version)
    return version


def trained_version(store: Any, artifacts: ArtifactStore, family: str, watermark: int, dataset: str = "v1") -> str:
    """A version of `family` trained on snapshot `dataset` built up to store seq `watermark`, recorded and
    published as a training does (its files are a small stand-in): what counts new annotations after it."""
    import tempfile

    from pulse_pipeline.core.registry import Registry

    registry = Registry(store, artifacts)
    record = registry.begin(
        family, dataset_version=dataset, base_model="tiny", training_config={}, created_by="test",
        watermark=watermark,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "adapter_config.json").write_text("{}")
        (Path(tmp) / "adapter_model.safetensors").write_bytes(b"\0" * 64)
        registry.publish(record, Path(tmp), {"dataset_version": dataset, "base_model": "tiny"})
    return record.version
