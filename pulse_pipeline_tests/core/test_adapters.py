import datetime as dt
import json

import pytest

from pulse_pipeline.core.adapters import (
    AdapterError,
    find_trained,
    is_version_of,
    prefix,
    publish,
    read_metadata,
    remove,
    verify,
    versions,
)

NOW = dt.datetime(2026, 11, 22, 14, 5, tzinfo=dt.UTC)


def _folder(tmp_path, name="out"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 1024)
    (folder / "sub").mkdir()
    (folder / "sub" / "x.txt").write_text("nested")
    return folder


def test_versions_are_named_by_minute_and_never_collide(artifacts, tmp_path):
    meta = {"dataset_version": "d1", "resolved_config": {"epochs": 1}}
    first = publish(artifacts, "call-analysis", _folder(tmp_path, "a"), meta, now=NOW)
    second = publish(artifacts, "call-analysis", _folder(tmp_path, "b"), meta, now=NOW)
    assert (first, second) == ("call-analysis-20261122-1405", "call-analysis-20261122-1405-2")
    assert versions(artifacts, "call-analysis") == [first, second]
    assert read_metadata(artifacts, "call-analysis", second)["version"] == second  # written inside, complete
    keys = artifacts.list(f"adapters/call-analysis/{first}")
    assert sorted(k.rsplit("/", 1)[-1] for k in keys) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_metadata.json",
        "x.txt",
    ]
    assert find_trained(artifacts, "call-analysis", "d1", {"epochs": 1})["version"] == second
    assert find_trained(artifacts, "call-analysis", "d1", {"epochs": 2}) is None


def test_a_folder_without_its_metadata_is_not_a_version(artifacts):
    artifacts.write_bytes("adapters/fam/fam-20261122-1405/adapter_model.safetensors", b"half")
    assert versions(artifacts, "fam") == []
    with pytest.raises(AdapterError, match="fam has no complete version fam-20261122-1405"):
        read_metadata(artifacts, "fam", "fam-20261122-1405")


@pytest.mark.parametrize(
    "name",
    [
        "../fam-20261122-1405",
        "fam-20261122-1405/..",
        "other-20261122-1405",
        "fam-2026112-1405",
        "fam-20261122-1405-1",
        "fam-20261122-1405-x",
    ],
)
def test_names_outside_the_version_pattern_are_refused(name):
    assert not is_version_of("fam", name)
    with pytest.raises(AdapterError, match="is not a version name of family fam"):
        prefix("fam", name)


def test_local_publish_is_one_rename(tmp_path):
    from pulse_pipeline.core.artifacts import LocalArtifactStore

    store = LocalArtifactStore(tmp_path / "root")
    folder = _folder(tmp_path)
    assert store.publish_folder(folder, "adapters/f/v1", last="adapter_config.json")
    assert not store.publish_folder(folder, "adapters/f/v1", last="adapter_config.json")  # taken
    assert [p.name for p in (tmp_path / "root" / "adapters" / "f").iterdir()] == ["v1"]  # no temporaries
    assert json.loads((tmp_path / "root/adapters/f/v1/adapter_config.json").read_text()) == {}


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _delete_object(artifacts, key):
    """Take one file away behind the store's back (a damaged or half-copied version)."""
    from pulse_pipeline.core.artifacts import LocalArtifactStore

    if isinstance(artifacts, LocalArtifactStore):
        artifacts.local_path(key).unlink()
    else:
        artifacts.client.remove_object(artifacts.bucket, artifacts._key(key))


def test_publish_records_a_sha256_per_file_and_verify_checks_them(artifacts, tmp_path):
    version = publish(artifacts, "fam", _folder(tmp_path), {"dataset_version": "d1"}, now=NOW)
    meta = read_metadata(artifacts, "fam", version)
    assert meta["files"] == {
        "adapter_config.json": _sha256(b"{}"),
        "adapter_model.safetensors": _sha256(b"\0" * 1024),
        "sub/x.txt": _sha256(b"nested"),
    }
    check = verify(artifacts, "fam", version)
    assert (check.hashes_recorded, check.files, check.note) == (True, sorted(meta["files"]), "")
    artifacts.write_bytes(f"adapters/fam/{version}/eval/results.json", b"{}")  # written later: not listed
    assert verify(artifacts, "fam", version).hashes_recorded


def test_verify_names_a_tampered_file(artifacts, tmp_path):
    version = publish(artifacts, "fam", _folder(tmp_path), {}, now=NOW)
    artifacts.write_bytes(f"adapters/fam/{version}/sub/x.txt", b"changed")
    with pytest.raises(AdapterError, match=rf"fam {version}: sub/x.txt does not match its recorded sha256"):
        verify(artifacts, "fam", version)


def test_verify_names_a_missing_file_and_missing_metadata(artifacts, tmp_path):
    version = publish(artifacts, "fam", _folder(tmp_path), {}, now=NOW)
    _delete_object(artifacts, f"adapters/fam/{version}/adapter_model.safetensors")
    with pytest.raises(
        AdapterError, match="adapter_model.safetensors is listed in training_metadata.json but missing"
    ):
        verify(artifacts, "fam", version)
    _delete_object(artifacts, f"adapters/fam/{version}/training_metadata.json")
    with pytest.raises(AdapterError, match=rf"fam {version}: training_metadata.json is missing"):
        verify(artifacts, "fam", version)


def test_verify_refuses_listed_files_outside_the_version(artifacts):
    key = "adapters/fam/fam-20261122-1405"
    artifacts.write_bytes(f"{key}/training_metadata.json", json.dumps({"files": {"../x/y": "0"}}).encode())
    with pytest.raises(AdapterError, match="lists a file outside the version: '../x/y'"):
        verify(artifacts, "fam", "fam-20261122-1405")


def test_versions_without_hashes_are_checked_for_presence(artifacts):
    key = "adapters/fam/fam-20261122-1405"
    artifacts.write_bytes(f"{key}/adapter_config.json", b"{}")
    artifacts.write_bytes(f"{key}/training_metadata.json", b'{"version": "fam-20261122-1405"}')
    with pytest.raises(AdapterError, match="fam fam-20261122-1405: adapter_model.safetensors is missing"):
        verify(artifacts, "fam", "fam-20261122-1405")
    artifacts.write_bytes(f"{key}/adapter_model.safetensors", b"w")
    check = verify(artifacts, "fam", "fam-20261122-1405")
    assert not check.hashes_recorded and "hashes were not recorded" in check.note


def test_remove_takes_a_version_away_whole(artifacts, tmp_path):
    first = publish(artifacts, "fam", _folder(tmp_path, "a"), {}, now=NOW)
    second = publish(artifacts, "fam", _folder(tmp_path, "b"), {}, now=NOW)
    remove(artifacts, "fam", first)
    assert versions(artifacts, "fam") == [second]
    assert artifacts.list(f"adapters/fam/{first}") == []
    remove(artifacts, "fam", first)  # already gone: nothing to do
    with pytest.raises(AdapterError, match="is not a version name"):
        remove(artifacts, "fam", "../fam")


@pytest.mark.parametrize("artifacts", ["s3"], indirect=True)
def test_s3_removal_takes_the_metadata_first(artifacts, tmp_path, monkeypatch):
    version = publish(artifacts, "fam", _folder(tmp_path), {}, now=NOW)

    def crash(*args, **kwargs):
        raise RuntimeError("crash after the metadata went")

    monkeypatch.setattr(artifacts.client, "remove_objects", crash)
    with pytest.raises(RuntimeError, match="crash after the metadata went"):
        remove(artifacts, "fam", version)
    assert versions(artifacts, "fam") == []  # no longer complete, so never served half-deleted
    assert f"adapters/fam/{version}/adapter_model.safetensors" in artifacts.list(f"adapters/fam/{version}")
