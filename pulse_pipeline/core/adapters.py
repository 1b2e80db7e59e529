"""Adapter versions in the artifact store: names, publishing and reading them back.

Layout (the contract): `adapters/<family>/<family>-YYYYMMDD-HHMM/` holds the adapter weights,
tokenizer files and chat template, `training_metadata.json` and `loss_curve.png` (and, for
encoder families, `head_config.json`). A version is published whole: it appears under its
name only when every file is there (`ArtifactStore.publish_folder`), and
`training_metadata.json` is what marks it complete. Two trainings finishing in the same
minute get `...-HHMM` and `...-HHMM-2`.

The metadata's `files` maps every published file (relative posix path, the metadata itself
excluded) to its sha256, so `verify` can tell a complete, untouched version from a damaged one
before it is promoted. Files written later (`eval/`) are not part of it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulse_pipeline.core.artifacts import ArtifactStore

METADATA = "training_metadata.json"
# What a version published before hashes were recorded must hold at least.
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
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
    files = file_hashes(folder)
    for n in range(1, 1000):
        version = version_name(family, now, n)
        if artifacts.list(f"adapters/{family}/{version}"):  # taken, finished or not
            continue
        record = {**metadata, "version": version, "files": files}
        (folder / METADATA).write_text(json.dumps(record, indent=2) + "\n")
        if artifacts.publish_folder(folder, f"adapters/{family}/{version}", last=METADATA):
            return version
    raise AdapterError(f"no free version name for {family} at {now:%Y-%m-%d %H:%M}")


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in `folder` (relative posix path -> hex), `training_metadata.json` excluded."""
    hashes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != METADATA:
            hashes[rel] = _sha256_file(path)
    return hashes


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class Verification:
    """A version that passed `verify`: which files were checked, and how."""

    family: str
    version: str
    files: list[str]  # checked by hash, or (hashes_recorded False) by presence only
    hashes_recorded: bool
    note: str = ""  # says when only presence could be checked


def verify(artifacts: ArtifactStore, family: str, version: str) -> Verification:
    """Check that a version is complete and untouched: its metadata is there and every file it
    lists is present with the recorded sha256. Raises AdapterError naming the first problem.
    Versions published before hashes were recorded (no `files`) are checked for the presence of
    adapter_config.json and adapter_model.safetensors only, and the answer says so."""
    key = prefix(family, version)
    meta = _metadata_for_verify(artifacts, family, version)
    files = meta.get("files")
    if files is None:
        for name in REQUIRED_FILES:
            if not artifacts.exists(f"{key}/{name}"):
                raise AdapterError(f"{family} {version}: {name} is missing")
        note = f"{family} {version}: hashes were not recorded (published before they were); presence checked"
        return Verification(family, version, list(REQUIRED_FILES), False, note)
    if not isinstance(files, dict):
        raise AdapterError(f"{family} {version}: {METADATA} has a malformed 'files' entry")
    for rel, expected in sorted(files.items()):
        _check_relative(family, version, rel)
        actual = _stored_sha256(artifacts, f"{key}/{rel}")
        if actual is None:
            raise AdapterError(f"{family} {version}: {rel} is listed in {METADATA} but missing")
        if actual != expected:
            raise AdapterError(
                f"{family} {version}: {rel} does not match its recorded sha256 (changed or damaged)"
            )
    return Verification(family, version, sorted(files), True)


def _metadata_for_verify(artifacts: ArtifactStore, family: str, version: str) -> dict[str, Any]:
    try:
        meta = json.loads(artifacts.read_bytes(f"{prefix(family, version)}/{METADATA}"))
    except KeyError:
        raise AdapterError(f"{family} {version}: {METADATA} is missing (not a complete version)") from None
    except ValueError:
        raise AdapterError(f"{family} {version}: {METADATA} is not readable JSON") from None
    if not isinstance(meta, dict):
        raise AdapterError(f"{family} {version}: {METADATA} is not a JSON object")
    return meta


def _check_relative(family: str, version: str, rel: Any) -> None:
    """A listed file must stay inside the version folder (the metadata is data, not trusted)."""
    parts = rel.split("/") if isinstance(rel, str) else [""]
    if "\\" in str(rel) or any(p in ("", ".", "..") for p in parts):
        raise AdapterError(f"{family} {version}: {METADATA} lists a file outside the version: {rel!r}")


def _stored_sha256(artifacts: ArtifactStore, key: str) -> str | None:
    """The sha256 of a stored file, None when it is missing (local files are read in chunks)."""
    from pulse_pipeline.core.artifacts import LocalArtifactStore

    if isinstance(artifacts, LocalArtifactStore):
        path = artifacts.local_path(key)
        return _sha256_file(path) if path.is_file() else None
    try:
        return hashlib.sha256(artifacts.read_bytes(key)).hexdigest()
    except KeyError:
        return None


def remove(artifacts: ArtifactStore, family: str, version: str) -> None:
    """Delete a version folder whole. Its metadata goes first, so the version stops being
    complete before anything else disappears; locally the folder is renamed to a hidden name and
    then deleted. The registry's `cleanup` decides what may go; this only removes."""
    key = prefix(family, version)
    artifacts.delete_prefix(key, first=f"{key}/{METADATA}")


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
