"""A version's files in the artifact store (core/registry/files.py) and its names and labels
(core/registry/names.py), on a local folder and on a real S3-API server: names by minute with
-2, -3, staging then reveal, sha256 verification, removal, refused names."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from pulse_pipeline.core.artifacts import ArtifactError, ArtifactStore, LocalArtifactStore
from pulse_pipeline.core.registry import NameError_, Registry, State, VersionFilesError, files
from pulse_pipeline.core.registry.names import check_version, is_version_of, semantic_label
from pulse_pipeline_tests.core.registry.conftest import FAMILY, T0, trained

V = "intent-router-20261122-0930"
METADATA = "training_metadata.json"
local_only = pytest.mark.parametrize("artifacts", ["local"], indirect=True)
s3_only = pytest.mark.parametrize("artifacts", ["s3"], indirect=True)


def _folder(tmp_path: Path, name: str = "out") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 1024)
    (folder / "sub").mkdir()
    (folder / "sub" / "x.txt").write_text("nested")
    return folder


def _published(artifacts: ArtifactStore, tmp_path: Path, version: str = V, meta: dict | None = None) -> str:
    """A version staged then revealed under its name (no record: these are the files alone)."""
    files.stage(artifacts, FAMILY, version, _folder(tmp_path, version), meta or {"dataset_version": "d1"})
    files.reveal(artifacts, FAMILY, version)
    return version


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _delete_object(artifacts: ArtifactStore, key: str) -> None:
    """Take one file away behind the store's back (a damaged or half-copied version)."""
    if isinstance(artifacts, LocalArtifactStore):
        artifacts.local_path(key).unlink()
    else:
        artifacts.client.remove_object(artifacts.bucket, artifacts._key(key))


def _begin(registry: Registry, when: dt.datetime) -> Any:
    return registry.begin(
        FAMILY, dataset_version="d", base_model="minilm-l6", training_config={}, created_by="test", when=when
    )


# -- names by minute ---------------------------------------------------------------------------


def test_versions_are_named_by_minute_then_2_and_3(registry, tmp_path):
    """The minute is UTC whatever the caller's zone; a failed record keeps its name taken."""
    first = trained(registry, tmp_path, 0)
    second = _begin(registry, T0 + dt.timedelta(seconds=59))
    third = _begin(registry, T0.astimezone(dt.timezone(dt.timedelta(hours=-5))))
    assert (first, second.version, third.version) == (V, f"{V}-2", f"{V}-3")
    assert registry.abandon(second)
    assert _begin(registry, T0).version == f"{V}-4"
    assert _begin(registry, T0 + dt.timedelta(minutes=1)).version == "intent-router-20261122-0931"
    keys = registry.artifacts.list(f"adapters/{FAMILY}/{first}")
    assert sorted(k.removeprefix(f"adapters/{FAMILY}/{first}/") for k in keys) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        METADATA,
    ]
    assert files.read_metadata(registry.artifacts, FAMILY, first)["version"] == first


def test_names_whose_files_exist_without_a_record_are_skipped(registry, tmp_path):
    """A complete folder and a staged folder, both without a record, keep their names."""
    _published(registry.artifacts, tmp_path, V)
    files.stage(registry.artifacts, FAMILY, f"{V}-2", _folder(tmp_path, "staged"), {})
    record = _begin(registry, T0)
    assert record.version == f"{V}-3"
    assert registry.unrecorded(FAMILY) == [V]
    assert [r.version for r in registry.records.list(FAMILY)] == [f"{V}-3"]


@pytest.mark.parametrize("registry", [("sqlite", "local")], indirect=True, ids=["sqlite-local"])
@pytest.mark.parametrize("family", ["../etc", "a/b", "Intent"])
def test_begin_refuses_a_family_that_is_not_a_name(registry, family):
    with pytest.raises(NameError_, match="is not a family name"):
        registry.begin(
            family, dataset_version="d", base_model="m", training_config={}, created_by="t", when=T0
        )
    assert registry.records.list(family) == []


def test_complete_folders_are_ordered_by_minute_then_number(artifacts, tmp_path):
    for version in ("intent-router-20261122-0931", f"{V}-10", V, f"{V}-2"):
        _published(artifacts, tmp_path, version)
    assert files.complete_folders(artifacts, FAMILY) == [
        V,
        f"{V}-2",
        f"{V}-10",
        "intent-router-20261122-0931",
    ]


# -- staging, then reveal -------------------------------------------------------------------------


def test_staging_records_every_hash_and_stays_hidden_until_revealed(artifacts, tmp_path):
    files.stage(artifacts, FAMILY, V, _folder(tmp_path), {"dataset_version": "d1", "base_model": "m"})
    assert files.is_staged(artifacts, FAMILY, V)
    assert files.staged_versions(artifacts, FAMILY) == [V]
    assert files.complete_folders(artifacts, FAMILY) == []
    assert files.incomplete_folders(artifacts, FAMILY) == []
    with pytest.raises(VersionFilesError, match=f"{FAMILY} has no complete version {V}"):
        files.read_metadata(artifacts, FAMILY, V)

    files.reveal(artifacts, FAMILY, V)
    assert files.complete_folders(artifacts, FAMILY) == [V]
    assert not files.is_staged(artifacts, FAMILY, V) and files.staged_versions(artifacts, FAMILY) == []
    assert artifacts.list(files.staging_key(FAMILY, V)) == []
    meta = files.read_metadata(artifacts, FAMILY, V)
    assert meta == {
        "dataset_version": "d1",
        "base_model": "m",
        "version": V,
        "files": {
            "adapter_config.json": _sha256(b"{}"),
            "adapter_model.safetensors": _sha256(b"\0" * 1024),
            "sub/x.txt": _sha256(b"nested"),
        },
    }
    assert artifacts.read_bytes(f"adapters/{FAMILY}/{V}/sub/x.txt") == b"nested"
    files.reveal(artifacts, FAMILY, V)  # revealed already: nothing to do
    assert files.complete_folders(artifacts, FAMILY) == [V]


def test_staging_again_replaces_an_earlier_attempt(artifacts, tmp_path):
    first = _folder(tmp_path, "first")
    (first / "stale.bin").write_bytes(b"from the attempt that died")
    files.stage(artifacts, FAMILY, V, first, {"attempt": 1})
    files.stage(artifacts, FAMILY, V, _folder(tmp_path, "second"), {"attempt": 2})
    files.reveal(artifacts, FAMILY, V)
    names = {k.removeprefix(f"adapters/{FAMILY}/{V}/") for k in artifacts.list(f"adapters/{FAMILY}/{V}")}
    assert names == {"adapter_config.json", "adapter_model.safetensors", "sub/x.txt", METADATA}
    assert files.read_metadata(artifacts, FAMILY, V)["attempt"] == 2
    files.verify(artifacts, FAMILY, V)


def test_reveal_without_a_staged_folder_is_an_error(artifacts):
    with pytest.raises(ArtifactError, match="nothing to move"):
        files.reveal(artifacts, FAMILY, V)


@local_only
def test_local_reveal_is_one_rename(artifacts, tmp_path, monkeypatch):
    """The staged folder itself is renamed (same inode): no copy a reader could see half done."""
    files.stage(artifacts, FAMILY, V, _folder(tmp_path), {})
    staged = artifacts.local_path(files.staging_key(FAMILY, V))
    inode = staged.stat().st_ino
    renames: list[tuple[Path, Path]] = []
    real_rename = os.rename

    def recording_rename(src, dst, *args, **kwargs):
        renames.append((Path(src).resolve(), Path(dst).resolve()))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", recording_rename)
    files.reveal(artifacts, FAMILY, V)
    target = artifacts.local_path(files.key(FAMILY, V))
    assert renames == [(staged, target)]
    assert target.stat().st_ino == inode
    assert not staged.exists()


@s3_only
def test_s3_reveal_copies_the_metadata_last(artifacts, tmp_path, monkeypatch):
    """Each server-side copy is recorded with what a reader listing at that moment would see:
    the version is never complete before its metadata is copied, and complete after."""
    files.stage(artifacts, FAMILY, V, _folder(tmp_path), {})
    real_copy = artifacts.client.copy_object
    copies: list[tuple[str, list[str]]] = []

    def recording_copy(bucket, name, source, *args, **kwargs):
        copies.append((name.split(f"/{V}/", 1)[1], files.complete_folders(artifacts, FAMILY)))
        return real_copy(bucket, name, source, *args, **kwargs)

    monkeypatch.setattr(artifacts.client, "copy_object", recording_copy)
    files.reveal(artifacts, FAMILY, V)
    assert [name for name, _ in copies] == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "sub/x.txt",
        METADATA,
    ]
    assert all(seen == [] for _, seen in copies)
    assert files.complete_folders(artifacts, FAMILY) == [V]
    assert not files.is_staged(artifacts, FAMILY, V)


def test_discard_staged_drops_the_staging_folder_only(artifacts, tmp_path):
    _published(artifacts, tmp_path, V)
    files.stage(artifacts, FAMILY, f"{V}-2", _folder(tmp_path, "b"), {})
    files.discard_staged(artifacts, FAMILY, f"{V}-2")
    assert files.staged_versions(artifacts, FAMILY) == [] and not files.is_staged(artifacts, FAMILY, f"{V}-2")
    assert files.complete_folders(artifacts, FAMILY) == [V]
    files.discard_staged(artifacts, FAMILY, f"{V}-2")  # gone already: nothing to do


def test_a_folder_without_its_metadata_is_incomplete(artifacts):
    artifacts.write_bytes(f"adapters/{FAMILY}/{V}/adapter_model.safetensors", b"half")
    assert files.complete_folders(artifacts, FAMILY) == []
    assert files.incomplete_folders(artifacts, FAMILY) == [V]
    with pytest.raises(VersionFilesError, match=f"{FAMILY} has no complete version {V}"):
        files.read_metadata(artifacts, FAMILY, V)


# -- verify ----------------------------------------------------------------------------------------


def test_verify_checks_every_recorded_hash(artifacts, tmp_path):
    _published(artifacts, tmp_path)
    check = files.verify(artifacts, FAMILY, V)
    assert (check.family, check.version, check.hashes_recorded, check.note) == (FAMILY, V, True, "")
    assert check.files == ["adapter_config.json", "adapter_model.safetensors", "sub/x.txt"]
    artifacts.write_bytes(f"adapters/{FAMILY}/{V}/eval/results.json", b"{}")  # written later: not listed
    assert files.verify(artifacts, FAMILY, V).files == check.files


@pytest.mark.parametrize("rel", ["sub/x.txt", "adapter_model.safetensors"])
def test_verify_names_a_tampered_file(artifacts, tmp_path, rel):
    _published(artifacts, tmp_path)
    artifacts.write_bytes(f"adapters/{FAMILY}/{V}/{rel}", b"changed")
    with pytest.raises(VersionFilesError, match=rf"^{FAMILY} {V}: {rel} does not match its recorded sha256"):
        files.verify(artifacts, FAMILY, V)


def test_verify_names_a_missing_file_then_the_missing_metadata(artifacts, tmp_path):
    _published(artifacts, tmp_path)
    _delete_object(artifacts, f"adapters/{FAMILY}/{V}/sub/x.txt")
    with pytest.raises(VersionFilesError, match=f"{V}: sub/x.txt is listed in {METADATA} but missing"):
        files.verify(artifacts, FAMILY, V)
    _delete_object(artifacts, f"adapters/{FAMILY}/{V}/{METADATA}")
    with pytest.raises(
        VersionFilesError, match=rf"^{FAMILY} {V}: {METADATA} is missing \(not a complete version\)"
    ):
        files.verify(artifacts, FAMILY, V)


@pytest.mark.parametrize("rel", ["../x/y", "sub/../../x", "/etc/passwd", "./x", "a//b", "a\\b", ""])
def test_verify_refuses_listed_files_outside_the_version(artifacts, rel):
    """The metadata is data: a listed path that leaves the version folder is never read."""
    artifacts.write_text(f"adapters/{FAMILY}/{V}/{METADATA}", json.dumps({"files": {rel: "0" * 64}}))
    with pytest.raises(VersionFilesError, match=f"lists a file outside the version: {re.escape(repr(rel))}$"):
        files.verify(artifacts, FAMILY, V)


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ("not json", f"{METADATA} is not readable JSON"),
        ("[1, 2]", f"{METADATA} is not a JSON object"),
        ('{"files": ["adapter_config.json"]}', f"{METADATA} has a malformed 'files' entry"),
    ],
)
def test_verify_refuses_unreadable_metadata(artifacts, metadata, problem):
    artifacts.write_text(f"adapters/{FAMILY}/{V}/{METADATA}", metadata)
    with pytest.raises(VersionFilesError, match=f"^{FAMILY} {V}: {problem}"):
        files.verify(artifacts, FAMILY, V)


def test_versions_without_hashes_are_checked_for_presence(artifacts):
    key = f"adapters/{FAMILY}/{V}"
    artifacts.write_bytes(f"{key}/adapter_config.json", b"{}")
    artifacts.write_text(f"{key}/{METADATA}", json.dumps({"version": V}))
    with pytest.raises(VersionFilesError, match=f"{FAMILY} {V}: adapter_model.safetensors is missing"):
        files.verify(artifacts, FAMILY, V)
    artifacts.write_bytes(f"{key}/adapter_model.safetensors", b"w")
    check = files.verify(artifacts, FAMILY, V)
    assert (check.hashes_recorded, check.files) == (
        False,
        ["adapter_config.json", "adapter_model.safetensors"],
    )
    assert "hashes were not recorded" in check.note


# -- remove ----------------------------------------------------------------------------------------


def test_remove_takes_a_version_away_whole(artifacts, tmp_path):
    first, second = _published(artifacts, tmp_path, V), _published(artifacts, tmp_path, f"{V}-2")
    artifacts.write_bytes(f"adapters/{FAMILY}/{first}/eval/results.json", b"{}")  # written later: goes too
    files.remove(artifacts, FAMILY, first)
    assert artifacts.list(f"adapters/{FAMILY}/{first}") == []
    assert files.complete_folders(artifacts, FAMILY) == [second]
    assert files.incomplete_folders(artifacts, FAMILY) == []
    if isinstance(artifacts, LocalArtifactStore):  # no hidden leftovers of the rename either
        assert sorted(p.name for p in artifacts.local_path(f"adapters/{FAMILY}").iterdir()) == [
            ".staging",
            second,
        ]
    files.remove(artifacts, FAMILY, first)  # already gone: nothing to do
    files.verify(artifacts, FAMILY, second)


@s3_only
def test_s3_removal_takes_the_metadata_first(artifacts, tmp_path, monkeypatch):
    """A crash after the metadata went leaves an incomplete folder, never a complete-looking one."""
    _published(artifacts, tmp_path)

    def crash(*args, **kwargs):
        raise RuntimeError("crash after the metadata went")

    monkeypatch.setattr(artifacts.client, "remove_objects", crash)
    with pytest.raises(RuntimeError, match="crash after the metadata went"):
        files.remove(artifacts, FAMILY, V)
    assert files.complete_folders(artifacts, FAMILY) == []
    assert files.incomplete_folders(artifacts, FAMILY) == [V]
    assert f"adapters/{FAMILY}/{V}/adapter_model.safetensors" in artifacts.list(f"adapters/{FAMILY}/{V}")


# -- names refused -----------------------------------------------------------------------------------

BAD_VERSIONS = [
    "../../etc",
    f"../{V}",
    f"{V}/..",
    f"{V}/x",
    "intent-router/20261122-0930",
    f"{V}\n",
    f"\n{V}",
    f" {V}",
    f"{V}.tmp",
    "call-analysis-20261122-0930",  # another family
    "intent-router-x-20261122-0930",  # another family, whose name starts like this one
    "intent-router-2026112-0930",
    f"{V}-1",
    f"{V}-02",
    f"{V}-x",
    "",
]


@pytest.mark.parametrize("name", BAD_VERSIONS, ids=repr)
def test_names_outside_the_version_pattern_are_refused(name):
    assert not is_version_of(FAMILY, name)
    for make in (check_version, files.key, files.staging_key):
        with pytest.raises(NameError_, match=f"is not a version name of family {FAMILY}"):
            make(FAMILY, name)


@pytest.mark.parametrize("name", [V, f"{V}-2", f"{V}-10", f"{V}-999"])
def test_version_names_pass(name):
    assert is_version_of(FAMILY, name) and check_version(FAMILY, name) == name
    assert files.key(FAMILY, name) == f"adapters/{FAMILY}/{name}"
    assert files.staging_key(FAMILY, name) == f"adapters/{FAMILY}/.staging/{name}"


@pytest.mark.parametrize(
    "family", ["../x", "a/b", "Intent-Router", "intent_router", f"{FAMILY}\n", "-a", "a-", ""]
)
def test_family_names_are_checked_too(family):
    with pytest.raises(NameError_, match="is not a family name"):
        files.key(family, f"{family}-20261122-0930")


@pytest.mark.parametrize(
    "operation",
    [
        lambda a, v, folder: files.remove(a, FAMILY, v),
        lambda a, v, folder: files.discard_staged(a, FAMILY, v),
        lambda a, v, folder: files.reveal(a, FAMILY, v),
        lambda a, v, folder: files.verify(a, FAMILY, v),
        lambda a, v, folder: files.read_metadata(a, FAMILY, v),
        lambda a, v, folder: files.stage(a, FAMILY, v, folder, {}),
    ],
    ids=["remove", "discard_staged", "reveal", "verify", "read_metadata", "stage"],
)
@pytest.mark.parametrize("name", ["../../etc", f"{V}\n"], ids=["traversal", "newline"])
def test_refused_names_never_reach_the_store(artifacts, tmp_path, operation, name):
    artifacts.write_bytes("etc/passwd", b"root")  # where adapters/<family>/../../etc would lead
    _published(artifacts, tmp_path)
    before = artifacts.list("")
    with pytest.raises(NameError_):
        operation(artifacts, name, _folder(tmp_path, "src"))
    assert artifacts.list("") == before


# -- semantic labels ---------------------------------------------------------------------------------

SAME = "smollm2-135m"


@pytest.mark.parametrize(
    ("previous", "previous_base", "base", "share", "label"),
    [
        (None, None, SAME, 1.0, "1.0.0"),  # a family's first
        (None, "other", SAME, 0.0, "1.0.0"),  # no previous label: first, whatever else
        ("1.2.3", SAME, SAME, 0.0, "1.2.4"),
        ("1.2.3", SAME, SAME, 0.05, "1.2.4"),
        ("1.2.3", SAME, SAME, 0.10, "1.2.4"),  # exactly 10 %: still a patch
        ("1.2.3", SAME, SAME, 0.11, "1.3.0"),
        ("1.2.3", SAME, SAME, 1.0, "1.3.0"),
        ("1.2.3", SAME, "qwen2.5-0.5b", 0.5, "2.0.0"),
        ("1.2.3", SAME, "qwen2.5-0.5b", 0.0, "2.0.0"),  # a new base model wins over a small change
        ("1.2.9", SAME, SAME, 0.0, "1.2.10"),  # numbers, not text
        ("9.9.0", SAME, SAME, 0.5, "9.10.0"),
    ],
)
def test_semantic_labels(previous, previous_base, base, share, label):
    assert semantic_label(previous, previous_base, base, share) == label


@pytest.mark.parametrize("previous", ["v2", "1.2", "1.2.3.4", "1.2.3-rc1", "1.2.3\n", ""])
def test_a_previous_label_that_is_not_major_minor_patch_is_refused(previous):
    with pytest.raises(ValueError, match="is not MAJOR.MINOR.PATCH"):
        semantic_label(previous, SAME, SAME, 0.0)


@pytest.mark.parametrize("share", [-0.01, 1.01, float("nan")])
def test_a_share_outside_0_to_1_is_refused(share):
    with pytest.raises(ValueError, match="new example share must be between 0 and 1"):
        semantic_label("1.0.0", SAME, SAME, share)


def test_begin_labels_from_the_newest_trained_version(registry, tmp_path):
    """Without snapshot manifests every example counts as new (minor); a new base model is major;
    a training that failed is no one's previous version."""
    first = trained(registry, tmp_path, 0)
    second = trained(registry, tmp_path, 1)
    failed = _begin(registry, T0 + dt.timedelta(minutes=2))
    assert registry.abandon(failed)
    third = trained(registry, tmp_path, 3)
    fourth = trained(registry, tmp_path, 4, base_model="qwen2.5-0.5b")
    labels = {r.version: (r.state, r.semantic_version) for r in registry.records.list(FAMILY)}
    assert labels == {
        first: (State.PUBLISHED, "1.0.0"),
        second: (State.PUBLISHED, "1.1.0"),
        failed.version: (State.FAILED, "1.2.0"),
        third: (State.PUBLISHED, "1.2.0"),  # from the second, not from the failed one
        fourth: (State.PUBLISHED, "2.0.0"),
    }
