"""A real PostgreSQL server for tests and benchmarks: Debian's binaries, a throw-away cluster
on 127.0.0.1 and a free port, stopped by PID. No mock database anywhere."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb) are missing: run `make postgres` "
        "(installs Debian's postgresql package) or `apt-get install postgresql`"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """Start with `start()`, stop with `stop()`; `url(db)` gives a SQLAlchemy URL."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.port = _free_port()
        self.data = Path(tempfile.mkdtemp(prefix="pulse-pg-"))
        self.pid: int | None = None
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        kwargs: dict = {"check": True, "capture_output": True, "text": True}
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")

            def demote() -> None:
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)

            kwargs["preexec_fn"] = demote
        return subprocess.run(cmd, **kwargs)

    def start(self) -> PostgresServer:
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.data, pw.pw_uid, pw.pw_gid)
        self.data.chmod(0o700)
        self._run(
            "initdb", "-D", str(self.data / "cluster"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C.UTF-8",
        )  # fmt: skip
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        cluster = self.data / "cluster"
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='{self.data}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = str(self.data / "server.log")
        self._run("pg_ctl", "-D", str(cluster), "-l", log, "-w", "-t", "30", "-o", options, "start")
        self.pid = int((cluster / "postmaster.pid").read_text().splitlines()[0])

    def halt(self) -> None:
        """Stop the server as an outage would (fast shutdown), keeping its data for `resume`."""
        self._run("pg_ctl", "-D", str(self.data / "cluster"), "-m", "fast", "-w", "-t", "30", "stop")
        self.pid = None

    def resume(self) -> None:
        """Start the halted server again on the same port, with its data."""
        self._pg_ctl_start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg2

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    os.kill(self.pid, 0)
                    time.sleep(0.05)
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.data, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
