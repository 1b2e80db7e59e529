"""Which failures are worth trying again: a connection to the database or the object store that
dropped, timed out or was refused, or a server saying it is busy. Anything else (a bad record, a
training that diverged, a missing file) fails the same way on a second try, so it is not.

`is_transient` walks the exception's causes (`__cause__`, and `__context__` even when a clearer
error was raised `from None`, as the store and the artifact store do), so a `StoreError` raised
while connecting counts by the `OperationalError` underneath. Classes are recognised only when
their library is already imported: nothing here imports a driver.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

# (module, class names) whose instances are transient whatever their message.
_ALWAYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sqlalchemy.exc", ("DisconnectionError", "TimeoutError")),  # TimeoutError: the pool's
    ("psycopg2", ("OperationalError", "InterfaceError")),
    ("psycopg", ("OperationalError", "InterfaceError")),
    (
        "botocore.exceptions",
        ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError"),
    ),
    (
        "urllib3.exceptions",
        ("ProtocolError", "NewConnectionError", "ConnectTimeoutError", "ReadTimeoutError"),
    ),
    ("httpx", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
    ("requests.exceptions", ("ConnectionError", "Timeout")),
)

# The object store asking to slow down or failing on its side (S3 error codes).
_S3_BUSY = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)
_HTTP_BUSY = frozenset({429, 502, 503, 504})
# SQLite's OperationalError also covers schema mistakes ("no such table"); only these pass.
_SQLITE_BUSY = ("database is locked", "database table is locked", "unable to open database", "disk i/o error")


def is_transient(exc: BaseException) -> bool:
    """True when `exc`, or anything that caused it, is a connection or server-busy error."""
    return any(_transient_one(e) for e in causes(exc))


def transient_cause(exc: BaseException) -> BaseException | None:
    """The transient error in `exc`'s chain (for the log line saying why a step is retried)."""
    return next((e for e in causes(exc) if _transient_one(e)), None)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, depth first, each once (chains can loop)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        reason = getattr(e, "reason", None)  # urllib3's MaxRetryError keeps its cause here
        for nxt in (reason, e.__context__, e.__cause__):
            if isinstance(nxt, BaseException):
                stack.append(nxt)


def _transient_one(e: BaseException) -> bool:
    if isinstance(e, ConnectionError | TimeoutError):  # builtins: refused, reset, broken pipe, socket timeout
        return True
    for module, names in _ALWAYS:
        if any(isinstance(e, cls) for cls in _classes(module, names)):
            return True
    return _sqlalchemy(e) or _sqlite(e) or _s3(e) or _http_status(e)


def _classes(module: str, names: tuple[str, ...]) -> Iterator[type]:
    mod = sys.modules.get(module)
    if mod is None:
        return
    for name in names:
        cls = getattr(mod, name, None)
        if isinstance(cls, type):
            yield cls


def _sqlalchemy(e: BaseException) -> bool:
    exc_mod = sys.modules.get("sqlalchemy.exc")
    if exc_mod is None or not isinstance(e, exc_mod.DBAPIError):
        return False
    if e.connection_invalidated:
        return True
    if not isinstance(e, exc_mod.OperationalError | exc_mod.InterfaceError):
        return False
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(e.orig, sqlite3.Error):
        return _sqlite(e.orig)
    return True


def _sqlite(e: BaseException) -> bool:
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is None or not isinstance(e, sqlite3.OperationalError):
        return False
    message = str(e).lower()
    return any(m in message for m in _SQLITE_BUSY)


def _s3(e: BaseException) -> bool:
    minio_error = sys.modules.get("minio.error")
    if minio_error is not None:
        if isinstance(e, minio_error.S3Error):
            status = getattr(getattr(e, "response", None), "status", 0) or 0
            return e.code in _S3_BUSY or status >= 500
        if isinstance(e, minio_error.ServerError):
            return e.status_code >= 500 or e.status_code == 429
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None and isinstance(e, botocore.ClientError):
        error = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        return error.get("Code") in _S3_BUSY or status >= 500
    return False


def _http_status(e: BaseException) -> bool:
    httpx = sys.modules.get("httpx")
    return httpx is not None and isinstance(e, httpx.HTTPStatusError) and e.response.status_code in _HTTP_BUSY
