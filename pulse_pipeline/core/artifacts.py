"""The artifact store: where dataset snapshots and adapters live.

One interface, two implementations: a local folder (the embedded default) and S3 through
the `minio` client (`PULSE_ARTIFACTS=s3://bucket/prefix`, for MinIO or any S3 API).
Keys are '/'-separated paths under the root. Every write is whole or absent: a temporary
file renamed into place locally, a single object PUT on S3, so readers never see half a file.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse


class ArtifactError(RuntimeError):
    """The artifact store cannot be used; the message says where and why."""


class ArtifactStore(ABC):
    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix` (recursively), sorted."""

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def publish_folder(self, folder: Path, prefix: str, *, last: str) -> bool:
        """Put a local folder's files under `prefix`, whole: False (and nothing written) when
        something already lives there. Locally the folder is copied to a hidden temporary name
        and renamed into place; on S3, where objects cannot be renamed, the file named `last`
        is uploaded after all others, so a prefix without it is unfinished."""

    @abstractmethod
    def move_folder(self, source: str, target: str, *, last: str) -> None:
        """Move everything under `source` to `target`, so that `target` appears whole. Locally one
        rename (an existing `target` is an error); on S3 each object is copied on the server,
        `last` after all others, then `source` is deleted. Running it again after a crash finishes
        the move; nothing under `source` with `target` complete is already done."""

    @abstractmethod
    def delete_prefix(self, prefix: str, *, first: str | None = None) -> None:
        """Delete everything under `prefix` (nothing there is fine). Locally the folder is renamed
        to a hidden name, then removed, so a half-deleted folder never shows under its name; on
        S3 the key `first` (the file that marks the prefix complete) goes before all others."""

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise ArtifactError(f"artifact key {key!r} leaves the store root {self.root}")
        return path

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def publish_folder(self, folder: Path, prefix: str, *, last: str) -> bool:
        target = self._path(prefix)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
            try:
                os.rename(tmp, target)  # fails on a non-empty target: someone else published first
            except OSError:
                if target.exists():
                    return False
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def move_folder(self, source: str, target: str, *, last: str) -> None:
        src, dst = self._entry(source), self._entry(target)
        if not src.is_dir():
            if (dst / last).is_file():
                return  # moved already
            raise ArtifactError(f"nothing to move at {src}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, dst)  # one step; fails when `target` exists and is not empty
        except OSError as exc:
            raise ArtifactError(f"cannot move {src} to {dst}: {exc.strerror or exc}") from None

    def delete_prefix(self, prefix: str, *, first: str | None = None) -> None:
        path = self._entry(prefix)
        if path.is_symlink():
            raise ArtifactError(f"artifact key {prefix!r} is a link, not a folder: not deleted")
        if not path.exists():
            return
        hidden = path.with_name(f".{path.name}.deleting-{uuid.uuid4().hex[:8]}")
        os.rename(path, hidden)  # one step: the name is gone whole
        if hidden.is_dir():
            shutil.rmtree(hidden)
        else:
            hidden.unlink()

    def replace_symlink(self, key: str, target: str) -> None:
        """Point the link at `key` to `target` (a name relative to the link's folder, so the tree
        can move), atomically: a temporary link beside it is renamed over the old one, and
        readers see the old target or the new one, never no link."""
        if not target or target.startswith("/") or "/" in target or target in (".", ".."):
            raise ArtifactError(f"link target {target!r} must be a name in the link's own folder")
        link = self._entry(key)
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.symlink(target, tmp)
        try:
            os.replace(tmp, link)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read_symlink(self, key: str) -> str | None:
        """The target the link at `key` names, None when there is no link."""
        link = self._entry(key)
        return os.readlink(link) if link.is_symlink() else None

    def _entry(self, key: str) -> Path:
        """The path of `key` itself, its last part not followed (a link stays a link)."""
        parent_key, _, name = key.strip("/").rpartition("/")
        if name in ("", ".", ".."):
            raise ArtifactError(f"artifact key {key!r} does not name an entry in the store")
        return self._path(parent_key) / name if parent_key else self.root / name

    def local_path(self, key: str) -> Path:
        """The file or folder of a key, for readers that need a path (peft, vLLM)."""
        return self._path(key)


class S3ArtifactStore(ArtifactStore):
    """S3 (MinIO, AWS or any S3 API) through the `minio` client."""

    def __init__(
        self, bucket: str, prefix: str, *, endpoint: str, access_key: str, secret_key: str, secure: bool
    ):
        from minio import Minio

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), len(data))

    def read_bytes(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, self._key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise KeyError(key) from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, self._key(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        start = len(self.prefix) + 1 if self.prefix else 0
        objects = self.client.list_objects(
            self.bucket, prefix=self._key(prefix).rstrip("/") + "/", recursive=True
        )
        return sorted(o.object_name[start:] for o in objects)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def publish_folder(self, folder: Path, prefix: str, *, last: str) -> bool:
        if self.list(prefix):
            return False
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.relative_to(folder).as_posix() == last)  # `last` goes last
        for path in files:
            self.client.fput_object(
                self.bucket, self._key(f"{prefix}/{path.relative_to(folder).as_posix()}"), str(path)
            )
        return True

    def move_folder(self, source: str, target: str, *, last: str) -> None:
        from minio.commonconfig import CopySource

        names = [k[len(source.rstrip("/")) + 1 :] for k in self.list(source)]
        if not names:
            if self.exists(f"{target}/{last}"):
                return  # moved already
            raise ArtifactError(f"nothing to move at {self.uri(source)}")
        names.sort(key=lambda name: name == last)  # `last` goes last: `target` is complete with it
        for name in names:
            self.client.copy_object(
                self.bucket, self._key(f"{target}/{name}"), CopySource(self.bucket, self._key(f"{source}/{name}"))
            )
        self.delete_prefix(source, first=f"{source}/{last}")  # the source stops being complete first

    def delete_prefix(self, prefix: str, *, first: str | None = None) -> None:
        from minio.deleteobjects import DeleteObject

        keys = self.list(prefix)
        if first in keys:
            self.client.remove_object(self.bucket, self._key(first))
            keys.remove(first)
        if not keys:
            return
        errors = list(self.client.remove_objects(self.bucket, [DeleteObject(self._key(k)) for k in keys]))
        if errors:
            raise ArtifactError(
                f"could not delete {len(errors)} object(s) under {self.uri(prefix)}: {errors[0]}"
            )


def open_artifact_store(
    location: str, *, endpoint: str | None = None, access_key: str = "", secret_key: str = ""
) -> ArtifactStore:
    """A store for PULSE_ARTIFACTS: a folder, or s3://bucket/prefix on the S3 API at `endpoint`."""
    if not location.startswith("s3://"):
        return LocalArtifactStore(location)
    parsed = urlparse(location)
    if not parsed.netloc or not endpoint:
        raise ArtifactError(f"{location}: S3 artifacts need a bucket in the URL and PULSE_S3_ENDPOINT set")
    endpoint_url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    store = S3ArtifactStore(
        parsed.netloc,
        parsed.path,
        endpoint=endpoint_url.netloc,
        access_key=access_key,
        secret_key=secret_key,
        secure=endpoint_url.scheme == "https",
    )
    try:
        store.ensure_bucket()
    except Exception as exc:  # network, credentials: one line for the user
        raise ArtifactError(f"cannot use the artifact store {location} at {endpoint}: {exc}") from None
    return store
