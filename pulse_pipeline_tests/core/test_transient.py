"""Which errors are retried: real connection failures to PostgreSQL, SQLite, an S3 API and an HTTP
server are transient; schema mistakes, bad input and client errors are not."""

import socket
import sqlite3

import httpx
import pytest
import sqlalchemy as sa

from pulse_pipeline.core.artifacts import ArtifactError, open_artifact_store
from pulse_pipeline.core.store import Store, StoreError
from pulse_pipeline.core.transient import is_transient, transient_cause


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.postgres
def test_an_unreachable_postgres_is_transient_under_the_stores_clear_error(postgres):
    with pytest.raises(StoreError) as caught:  # raised `from None`: the driver error is its context
        Store(postgres.url().replace(f":{postgres.port}/", f":{_closed_port()}/"))
    assert is_transient(caught.value)
    assert type(transient_cause(caught.value)).__name__ == "OperationalError"


def test_a_locked_sqlite_database_is_transient_a_missing_table_is_not(tmp_path):
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with (
            pytest.raises(sa.exc.OperationalError, match="database is locked") as locked,
            engine.begin() as conn,
        ):
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        holder.execute("ROLLBACK")
        with (
            pytest.raises(sa.exc.OperationalError, match="no such table") as schema,
            engine.begin() as conn,
        ):
            conn.execute(sa.text("SELECT * FROM missing"))
    finally:
        engine.dispose()
        holder.close()
    assert is_transient(locked.value)
    assert not is_transient(schema.value)


@pytest.mark.slow  # the S3 client retries the connection itself for a few seconds first
def test_an_unreachable_s3_endpoint_is_transient_under_the_artifact_stores_clear_error():
    with pytest.raises(ArtifactError, match="cannot use the artifact store") as caught:
        open_artifact_store(
            "s3://bucket/pulse", endpoint=f"http://127.0.0.1:{_closed_port()}", access_key="k", secret_key="s"
        )
    assert type(transient_cause(caught.value)).__name__ in {"MaxRetryError", "NewConnectionError"}


def test_s3_slowdown_and_5xx_are_transient_a_missing_key_is_not():
    from botocore.exceptions import ClientError
    from minio.error import S3Error
    from urllib3 import HTTPResponse

    def minio_error(code, status):
        return S3Error(HTTPResponse(status=status), code, "m", "/bucket/key", "req", "host")

    def client_error(code, status):
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    assert is_transient(minio_error("SlowDown", 503)) and is_transient(minio_error("InternalError", 500))
    assert not is_transient(minio_error("NoSuchKey", 404)) and not is_transient(
        minio_error("AccessDenied", 403)
    )
    assert is_transient(client_error("SlowDown", 503)) and is_transient(client_error("InternalError", 500))
    assert not is_transient(client_error("NoSuchKey", 404)) and not is_transient(
        client_error("AccessDenied", 403)
    )


def test_http_connection_refused_and_busy_statuses_are_transient_client_errors_are_not():
    with pytest.raises(httpx.ConnectError) as refused:
        httpx.get(f"http://127.0.0.1:{_closed_port()}/", timeout=2)
    assert is_transient(refused.value)
    request = httpx.Request("GET", "http://vllm/v1/models")
    for status, expected in ((503, True), (429, True), (404, False), (400, False)):
        error = httpx.HTTPStatusError("x", request=request, response=httpx.Response(status, request=request))
        assert is_transient(error) is expected, status


def test_causes_are_followed_and_other_errors_are_not_transient():
    try:
        try:
            raise ConnectionResetError("peer reset")
        except ConnectionResetError as exc:
            raise RuntimeError("could not upload the adapter") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
        assert isinstance(transient_cause(wrapped), ConnectionResetError)
    assert is_transient(TimeoutError("read timed out"))
    assert not is_transient(ValueError("label 'foo' is not in the label set"))
    assert not is_transient(RuntimeError("CUDA out of memory"))
    loop = ValueError("a")
    loop.__context__ = ValueError("b")
    loop.__context__.__context__ = loop  # a cycle ends the walk
    assert not is_transient(loop)
