"""Adapter versions in the artifact store: names, publishing and reading them back.

Layout (the contract): `adapters/<family>/<family>-YYYYMMDD-HHMM/` holds the adapter weights,
tokenizer files and chat template, `training_metadata.json` and `loss_curve.png` (and, for
encoder families, `head_config.json`). A version is published whole: it appears under its
name only when every file is there (`ArtifactStore.publish_folder`), and
`training_metadata.json` is what marks it complete. Two trainings finishing in the same
minute get `...-HHMM` and `...-HHMM-2`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path
from typing import Any

from pulse_pipeline.core.artifacts import ArtifactStore

METADATA = "training_metadata.json"
_VERSION = re.compile(
    r"^(?P<family>[a-z0-9]+(?:-[a-z0-9]+)*)-(?P<day>\d{8})-(?P<time>\d{4})(?:-(?P<n>[2-9]|[1-9]\d+))?$"
)


class AdapterError(RuntimeError):
    """An adapter version cannot be found or used; the message names it."""


def version_name(family: str, when: dt.datetime, n: int = 1) -> str:
    base = f"{family}-{when.astimezone(dt.UTC):%Y%m%d-%H%M}"
    return base if n == 1 else f"{base}-{n}"


def is_version_of(family: str, version: str) -> bool:
    """Whether `version` is a well-formed version name of `family` (no path tricks can pass)."""
    m = _VERSION.match(version)
    return bool(m) and m.group("family") == family


def prefix(family: str, version: str) -> str:
    if not is_version_of(family, version):
        raise AdapterError(f"{version!r} is not a version name of family {family} ({family}-YYYYMMDD-HHMM)")
    return f"adapters/{family}/{version}"


def publish(
    artifacts: ArtifactStore,
    family: str,
    folder: Path,
    metadata: dict[str, Any],
    *,
    now: dt.datetime | None = None,
) -> str:
    """Publish a finished adapter folder as the next free version name of this minute."""
    now = now or dt.datetime.now(dt.UTC)
    for n in range(1, 1000):
        version = version_name(family, now, n)
        if artifacts.list(f"adapters/{family}/{version}"):  # taken, finished or not
            continue
        (folder / METADATA).write_text(json.dumps({**metadata, "version": version}, indent=2) + "\n")
        if artifacts.publish_folder(folder, f"adapters/{family}/{version}", last=METADATA):
            return version
    raise AdapterError(f"no free version name for {family} at {now:%Y-%m-%d %H:%M}")


def read_metadata(artifacts: ArtifactStore, family: str, version: str) -> dict[str, Any]:
    try:
        return json.loads(artifacts.read_bytes(f"{prefix(family, version)}/{METADATA}"))
    except KeyError:
        raise AdapterError(f"{family} has no complete version {version}") from None


def versions(artifacts: ArtifactStore, family: str) -> list[str]:
    """Complete versions of a family, oldest first."""
    found = {
        key.split("/")[2]
        for key in artifacts.list(f"adapters/{family}")
        if key.endswith(f"/{METADATA}") and key.count("/") == 3
    }
    return sorted((v for v in found if is_version_of(family, v)), key=_order)


def _order(version: str) -> tuple[str, str, int]:
    m = _VERSION.match(version)
    assert m
    return m.group("day"), m.group("time"), int(m.group("n") or 1)


def find_trained(
    artifacts: ArtifactStore, family: str, dataset_version: str, resolved_config: dict[str, Any]
) -> dict[str, Any] | None:
    """The newest version trained on this snapshot with these settings, if any (so the same
    training is not run twice unless forced)."""
    for version in reversed(versions(artifacts, family)):
        meta = read_metadata(artifacts, family, version)
        if meta.get("dataset_version") == dataset_version and meta.get("resolved_config") == resolved_config:
            return meta
    return None


def local_folder(artifacts: ArtifactStore, family: str, version: str, cache: Path) -> Path:
    """A folder on this machine holding the version's files (peft reads paths): the store's own
    folder when it is local, else a copy under `cache/<family>/<version>` made once."""
    from pulse_pipeline.core.artifacts import LocalArtifactStore

    key = prefix(family, version)
    if isinstance(artifacts, LocalArtifactStore):
        return artifacts.local_path(key)
    target = cache / family / version
    if (target / METADATA).is_file():
        return target
    tmp = cache / family / f".{version}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for name in artifacts.list(key):
        rel = name[len(key) + 1 :]
        if rel.startswith("eval/"):
            continue
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(artifacts.read_bytes(name))
    tmp.rename(target)
    return target
