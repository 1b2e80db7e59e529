"""One database: its engine, its migrations, connections and the small helpers every table uses.

SQLite by default, PostgreSQL through PULSE_DATABASE_URL. `Database(url)` connects and applies
the Alembic migrations on first use (concurrent first uses on PostgreSQL are serialized by an
advisory lock). Every time handed back is tz-aware UTC: SQLite keeps naive UTC text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pulse_pipeline.core.secrets import mask, quote_password, url_secrets

_MIGRATIONS = "pulse_pipeline.core.store:migrations"
_PG_MIGRATION_LOCK = 0x70756C7365  # "pulse": serializes concurrent first-use upgrades on PostgreSQL
WHO_LENGTH = 256  # columns naming a person or a process (by, created_by, holder)


class StoreError(RuntimeError):
    """The store cannot be reached or used; the message says which URL (password masked) and why."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(t: dt.datetime | None) -> dt.datetime | None:
    """Naive times are UTC (SQLite hands them back naive); aware ones are converted."""
    if t is None:
        return None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def cut(text: str | None, length: int = WHO_LENGTH) -> str | None:
    return None if text is None else text[:length]


class Database:
    """The engine and the schema; repositories (annotations, locks, version records, ...) use it."""

    def __init__(self, url: str, *, upgrade: bool = True, echo: bool = False):
        self.url = url
        self.engine: Engine = _make_engine(url, echo=echo)
        if upgrade:
            self.upgrade()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def shown_url(self) -> str:
        """The URL as error messages and logs show it: its password masked."""
        return mask(self.url)

    def dispose(self) -> None:
        self.engine.dispose()

    def revision(self) -> str | None:
        """The applied Alembic revision, or None for an empty database."""
        from alembic.runtime.migration import MigrationContext

        with self.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self, target: str = "head") -> str | None:
        """Apply pending migrations; cheap when the database is current. Returns the revision."""
        from alembic import command
        from alembic.script import ScriptDirectory

        cfg = _alembic_config()
        head = ScriptDirectory.from_config(cfg).get_current_head()
        if target == "head" and self.revision() == head:
            return head
        with self.connect() as conn, conn.begin():
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, target)
        return self.revision()

    def connect(self) -> Connection:
        """A connection; a database that cannot be reached is a one-line StoreError."""
        try:
            return self.engine.connect()
        except sa.exc.OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise StoreError(
                f"cannot connect to the annotation store at {self.shown_url}: {mask(reason, url_secrets(self.url))}"
            ) from None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction: committed on exit, rolled back on an exception."""
        with self.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """One holder of `name` at a time across processes, for the block: a session advisory lock on
        PostgreSQL (on a connection of its own, so the block's own writes go through; the server
        drops it when the process dies), a file lock beside the database on SQLite (one host)."""
        if self.dialect == "postgresql":
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            with self.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                conn.commit()
                try:
                    yield
                finally:
                    with contextlib.suppress(sa.exc.DBAPIError):  # the server gone: so is the lock
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
            return
        database = self.engine.url.database
        folder = Path(database).parent if database and database != ":memory:" else Path(tempfile.gettempdir())
        digest = hashlib.sha256(f"{database}:{name}".encode()).hexdigest()[:16]
        with open(folder / f".pulse-{digest}.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            yield

    def insert(self, table: sa.Table) -> Any:
        """An INSERT with ON CONFLICT support for this database's dialect."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            raise NotImplementedError(f"the store needs SQLite or PostgreSQL, not {self.dialect}")
        return insert(table)


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", _MIGRATIONS)
    return config


def migration_scripts() -> Any:
    """The store's Alembic migrations (an alembic ScriptDirectory): their head, their revisions."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def parse_url(url: str) -> sa.URL:
    """A SQLAlchemy URL from a database URL, or from a libpq key=value string (`host=db dbname=pulse
    user=pulse password=...`, as psql takes it) for PostgreSQL. A password holding '@', ':' or '/'
    unescaped parses as the user meant it. StoreError (the password masked) when it is neither."""
    try:
        if "://" not in url and "=" in url:
            return _from_libpq(url)
        parsed = sa.engine.make_url(quote_password(url))
        parsed.port  # noqa: B018 - a bad port raises here, not deep inside the driver
        return parsed
    except (sa.exc.ArgumentError, ValueError):
        raise StoreError(
            f"PULSE_DATABASE_URL {mask(url)!r} is not a database URL (e.g. sqlite:///path/pulse.db, "
            "postgresql+psycopg2://user:PASSWORD@host:5432/pulse, or host=... dbname=... user=... password=...)"
        ) from None


def _from_libpq(dsn: str) -> sa.URL:
    from psycopg2.extensions import parse_dsn

    try:
        parts = parse_dsn(dsn)
    except Exception:  # noqa: BLE001 - psycopg2's ProgrammingError quotes the string whole
        raise ValueError("not a libpq connection string") from None
    port = parts.pop("port", None)
    return sa.engine.URL.create(
        "postgresql+psycopg2",
        username=parts.pop("user", None),
        password=parts.pop("password", None),
        host=parts.pop("host", None),
        port=int(port) if port else None,
        database=parts.pop("dbname", None),
        query=parts,
    )


def _make_engine(url: str, *, echo: bool) -> Engine:
    parsed = parse_url(url)
    kwargs: dict[str, Any] = {
        "echo": echo,
        "json_serializer": lambda obj: orjson.dumps(obj).decode(),
        "json_deserializer": orjson.loads,
    }
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
        engine = sa.create_engine(parsed, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the project ships psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    kwargs.update(pool_pre_ping=True, insertmanyvalues_page_size=1000)
    try:
        return sa.create_engine(parsed, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise StoreError(f"no database driver for {mask(url)}: {mask(str(exc), [url])}") from None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the UI, sensors) do not block an ingest
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
