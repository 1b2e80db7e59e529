import pytest

from pulse_pipeline.core.artifacts import ArtifactError, LocalArtifactStore, open_artifact_store


def test_write_read_list_exists(artifacts):
    artifacts.write_bytes("datasets/f/v1/manifest.json", b"{}")
    artifacts.write_text("datasets/f/v1/train.parquet", "x")
    artifacts.write_bytes("datasets/g/v1/manifest.json", b"[]")
    assert artifacts.read_bytes("datasets/f/v1/manifest.json") == b"{}"
    assert artifacts.exists("datasets/f/v1/train.parquet")
    assert not artifacts.exists("datasets/f/v2/manifest.json")
    assert artifacts.list("datasets/f") == ["datasets/f/v1/manifest.json", "datasets/f/v1/train.parquet"]
    with pytest.raises(KeyError):
        artifacts.read_bytes("datasets/f/missing.json")
    artifacts.write_bytes("datasets/f/v1/manifest.json", b'{"v": 2}')  # overwrite is whole
    assert artifacts.read_bytes("datasets/f/v1/manifest.json") == b'{"v": 2}'


def test_local_writes_leave_no_temporary_files_and_stay_inside_the_root(tmp_path):
    store = LocalArtifactStore(tmp_path)
    store.write_bytes("a/b.json", b"1")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]
    with pytest.raises(ArtifactError, match="leaves the store root"):
        store.write_bytes("../escape.json", b"x")


def test_s3_needs_an_endpoint():
    with pytest.raises(ArtifactError, match="PULSE_S3_ENDPOINT"):
        open_artifact_store("s3://bucket/prefix")


def test_unreachable_s3_is_one_clear_error():
    with pytest.raises(ArtifactError, match="cannot use the artifact store s3://b/p at http://127.0.0.1:1"):
        open_artifact_store("s3://b/p", endpoint="http://127.0.0.1:1", access_key="a", secret_key="b")
