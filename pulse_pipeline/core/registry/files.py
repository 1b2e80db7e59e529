"""A version's files in the artifact store: staged, revealed whole, verified, read, removed.

Layout (the contract): `adapters/<family>/<version>/` holds the adapter weights, tokenizer files
and chat template, `training_metadata.json` and `loss_curve.png` (and, for encoder families,
`head_config.json`). A training uploads its folder under a staging name,
`adapters/<family>/.staging/<version>/`, where no reader looks; the registry moves it under the
version's name only after the version's record says `published` (`core/registry/registry.py`),
so a version is never visible without a record. `training_metadata.json` goes last and marks a
folder complete.

The metadata's `files` maps every published file (relative posix path, the metadata itself
excluded) to its sha256, so `verify` can tell a complete, untouched version from a damaged one
before it is served. Files written later (`eval/`) are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulse_pipeline.core.artifacts import ArtifactStore, LocalArtifactStore
from pulse_pipeline.core.registry.errors import VersionFilesError
from pulse_pipeline.core.registry.names import check_version, is_version_of, order

METADATA = "training_metadata.json"
EVAL_RESULTS = "eval/results.json"  # written by the evaluation beside the version's files
STAGING = ".staging"
# What a version published before hashes were recorded must hold at least.
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")


def key(family: str, version: str) -> str:
    """`adapters/<family>/<version>`, for a checked name only."""
    return f"adapters/{family}/{check_version(family, version)}"


def staging_key(family: str, version: str) -> str:
    return f"adapters/{family}/{STAGING}/{check_version(family, version)}"


def stage(artifacts: ArtifactStore, family: str, version: str, folder: Path, metadata: dict[str, Any]) -> None:
    """Upload a finished adapter folder under the version's staging name, its metadata (with the
    version's name and every file's sha256) last. A staging folder left by an earlier attempt
    is replaced."""
    files = file_hashes(folder)
    record = {**metadata, "version": version, "files": files}
    (folder / METADATA).write_text(json.dumps(record, indent=2) + "\n")
    target = staging_key(family, version)
    artifacts.delete_prefix(target, first=f"{target}/{METADATA}")
    if not artifacts.publish_folder(folder, target, last=METADATA):
        raise VersionFilesError(f"{family} {version}: its staging folder is in use by another process")


def reveal(artifacts: ArtifactStore, family: str, version: str) -> None:
    """Move the staged folder under the version's name (done already: nothing to do)."""
    artifacts.move_folder(staging_key(family, version), key(family, version), last=METADATA)


def is_staged(artifacts: ArtifactStore, family: str, version: str) -> bool:
    return artifacts.exists(f"{staging_key(family, version)}/{METADATA}")


def staged_versions(artifacts: ArtifactStore, family: str) -> list[str]:
    """Names under the family's staging folder, complete or not, oldest first."""
    root = f"adapters/{family}/{STAGING}"
    found = {k[len(root) + 1 :].split("/")[0] for k in artifacts.list(root)}
    if isinstance(artifacts, LocalArtifactStore):  # a staging folder whose files are all hidden
        folder = artifacts.local_path(root)
        found |= {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()
    return sorted((v for v in found if is_version_of(family, v)), key=order)


def discard_staged(artifacts: ArtifactStore, family: str, version: str) -> None:
    target = staging_key(family, version)
    artifacts.delete_prefix(target, first=f"{target}/{METADATA}")


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


def verify(artifacts: ArtifactStore, family: str, version: str, *, staged: bool = False) -> Verification:
    """Check that a version is complete and untouched: its metadata is there and every file it
    lists is present with the recorded sha256 (`staged`: under its staging name). Raises
    VersionFilesError naming the first problem. Versions published before hashes were recorded (no
    `files`) are checked for the presence of adapter_config.json and adapter_model.safetensors
    only, and the answer says so."""
    prefix = staging_key(family, version) if staged else key(family, version)
    meta = _metadata_for_verify(artifacts, family, version, prefix)
    files = meta.get("files")
    if files is None:
        for name in REQUIRED_FILES:
            if not artifacts.exists(f"{prefix}/{name}"):
                raise VersionFilesError(f"{family} {version}: {name} is missing")
        note = f"{family} {version}: hashes were not recorded (published before they were); presence checked"
        return Verification(family, version, list(REQUIRED_FILES), False, note)
    if not isinstance(files, dict):
        raise VersionFilesError(f"{family} {version}: {METADATA} has a malformed 'files' entry")
    for rel, expected in sorted(files.items()):
        _check_relative(family, version, rel)
        actual = _stored_sha256(artifacts, f"{prefix}/{rel}")
        if actual is None:
            raise VersionFilesError(f"{family} {version}: {rel} is listed in {METADATA} but missing")
        if actual != expected:
            raise VersionFilesError(
                f"{family} {version}: {rel} does not match its recorded sha256 (changed or damaged)"
            )
    return Verification(family, version, sorted(files), True)


def _metadata_for_verify(artifacts: ArtifactStore, family: str, version: str, prefix: str) -> dict[str, Any]:
    try:
        meta = json.loads(artifacts.read_bytes(f"{prefix}/{METADATA}"))
    except KeyError:
        raise VersionFilesError(f"{family} {version}: {METADATA} is missing (not a complete version)") from None
    except ValueError:
        raise VersionFilesError(f"{family} {version}: {METADATA} is not readable JSON") from None
    if not isinstance(meta, dict):
        raise VersionFilesError(f"{family} {version}: {METADATA} is not a JSON object")
    return meta


def _check_relative(family: str, version: str, rel: Any) -> None:
    """A listed file must stay inside the version folder (the metadata is data, not trusted)."""
    parts = rel.split("/") if isinstance(rel, str) else [""]
    if "\\" in str(rel) or any(p in ("", ".", "..") for p in parts):
        raise VersionFilesError(f"{family} {version}: {METADATA} lists a file outside the version: {rel!r}")


def _stored_sha256(artifacts: ArtifactStore, name: str) -> str | None:
    """The sha256 of a stored file, None when it is missing (local files are read in chunks)."""
    if isinstance(artifacts, LocalArtifactStore):
        path = artifacts.local_path(name)
        return _sha256_file(path) if path.is_file() else None
    try:
        return hashlib.sha256(artifacts.read_bytes(name)).hexdigest()
    except KeyError:
        return None


def remove(artifacts: ArtifactStore, family: str, version: str) -> None:
    """Delete a version folder whole. Its metadata goes first, so the version stops being
    complete before anything else disappears; locally the folder is renamed to a hidden name and
    then deleted. The registry's cleanup decides what may go; this only removes."""
    prefix = key(family, version)
    artifacts.delete_prefix(prefix, first=f"{prefix}/{METADATA}")


def read_metadata(artifacts: ArtifactStore, family: str, version: str) -> dict[str, Any]:
    try:
        return json.loads(artifacts.read_bytes(f"{key(family, version)}/{METADATA}"))
    except KeyError:
        raise VersionFilesError(f"{family} has no complete version {version}") from None


def complete_folders(artifacts: ArtifactStore, family: str) -> list[str]:
    """Versions whose folder is complete under its name (recorded or not), oldest first.
    The registry's `versions` says which of them are recorded, and in which state."""
    found = {
        name.split("/")[2]
        for name in artifacts.list(f"adapters/{family}")
        if name.endswith(f"/{METADATA}") and name.count("/") == 3
    }
    return sorted((v for v in found if is_version_of(family, v)), key=order)


def incomplete_folders(artifacts: ArtifactStore, family: str) -> list[str]:
    """Version-named folders with files but no metadata (an upload or a removal cut short)."""
    found = {
        name.split("/")[2]
        for name in artifacts.list(f"adapters/{family}")
        if name.count("/") >= 3 and not name.split("/")[2].startswith(".")
    }
    if isinstance(artifacts, LocalArtifactStore):  # a folder whose files are all hidden, or none
        folder = artifacts.local_path(f"adapters/{family}")
        if folder.is_dir():
            found |= {p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink()}
    complete = set(complete_folders(artifacts, family))
    return sorted((v for v in found - complete if is_version_of(family, v)), key=order)


def local_folder(artifacts: ArtifactStore, family: str, version: str, cache: Path) -> Path:
    """A folder on this machine holding the version's files (peft reads paths): the store's own
    folder when it is local, else a copy under `cache/<family>/<version>` made once."""
    prefix = key(family, version)
    if isinstance(artifacts, LocalArtifactStore):
        return artifacts.local_path(prefix)
    target = cache / family / version
    if (target / METADATA).is_file():
        return target
    tmp = cache / family / f".{version}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for name in artifacts.list(prefix):
        rel = name[len(prefix) + 1 :]
        if rel.startswith("eval/"):
            continue
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(artifacts.read_bytes(name))
    tmp.rename(target)
    return target
