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
