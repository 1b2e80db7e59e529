"""Dagster as it runs in production, for tests: the code location's gRPC server, `dagster-daemon run`
and `dagster-webserver`, each its own process group on 127.0.0.1, over one DAGSTER_HOME; a GraphQL
client with bounded polling; process trees to find and kill run workers.

Every process writes its output to `<root>/logs/<name>.log`; `DagsterStack.logs()` gives their
tails for a failing test to print.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.dagster_ui import _DAEMONS, _LOCATIONS, _default_sigint
from pulse_pipeline_tests.s3_server import _free_port

T = TypeVar("T")
REPOSITORY = "__repository__"  # the name Dagster gives the one repository of a Definitions object


def wait_for(check: Callable[[], T], what: str, timeout: float, interval: float = 0.5) -> T:
    """Call `check` until it returns something truthy; AssertionError naming `what` after `timeout`.
    OSError and AssertionError from `check` count as "not yet" (the last one is in the message)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            found = check()
            if found:
                return found
        except (OSError, AssertionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last})")
        time.sleep(interval)


class ManagedProcess:
    """One server process in its own process group, its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path, cwd: Path = PROJECT):
        self.name = name
        self.command = command
        self.env = env
        self.log = log
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n===== start {time.strftime('%H:%M:%S')}: {' '.join(self.command)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_default_sigint,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL to the whole process group, as a crash (or an OOM kill of the container) would."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the group, then SIGKILL to whatever is left of it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _exe(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


class DagsterStack:
    """The code server, the daemon and the webserver over `dagster_home` (which holds dagster.yaml),
    all with `env`. `start()` returns once the webserver has loaded the code location and every
    required daemon reports healthy."""

    location = "pulse_pipeline"

    def __init__(self, root: Path, dagster_home: Path, env: dict[str, str]):
        self.root = root
        self.dagster_home = dagster_home
        self.env = {**env, "DAGSTER_HOME": str(dagster_home)}
        self.grpc_port = _free_port()
        self.web_port = _free_port()
        self.workspace = root / "workspace.yaml"
        self.workspace.write_text(
            "load_from:\n  - grpc_server:\n"
            f"      host: 127.0.0.1\n      port: {self.grpc_port}\n      location_name: {self.location}\n"
        )
        (dagster_home / ".nux").mkdir(parents=True, exist_ok=True)
        (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")
        logs = root / "logs"
        self.code_server = ManagedProcess(
            "code-server",
            [_exe("dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(self.grpc_port),
             "-m", "pulse_pipeline.definitions", "--location-name", self.location],
            self.env, logs / "code-server.log",
        )  # fmt: skip
        self.daemon = ManagedProcess(
            "dagster-daemon", [_exe("dagster-daemon"), "run", "-w", str(self.workspace)], self.env,
            logs / "dagster-daemon.log",
        )  # fmt: skip
        self.webserver = ManagedProcess(
            "dagster-webserver",
            [_exe("dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.web_port), "-w", str(self.workspace)],
            self.env, logs / "dagster-webserver.log",
        )  # fmt: skip
        self.processes = [self.code_server, self.daemon, self.webserver]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, timeout: float = 240) -> DagsterStack:
        self.code_server.start()
        wait_for(self._grpc_open, "the code server's port", timeout)
        self.webserver.start()
        self.daemon.start()
        self.wait_ready(timeout)
        return self

    def _grpc_open(self) -> bool:
        if not self.code_server.alive():
            raise RuntimeError(f"the code server exited: {self.code_server.tail()}")
        with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1):
            return True

    def wait_ready(self, timeout: float = 240) -> None:
        """The webserver answers, the code location is loaded, every required daemon is healthy."""
        for process in self.processes:
            if not process.alive():
                raise RuntimeError(f"{process.name} is not running: {process.tail()}")
        wait_for(self._location_loaded, "the code location to load in the webserver", timeout)
        wait_for(self._daemons_healthy, "every required daemon to report healthy", timeout)

    def _location_loaded(self) -> bool:
        entries = self.graphql(_LOCATIONS)["workspaceOrError"]["locationEntries"]
        for entry in entries:
            error = entry["locationOrLoadError"]
            if entry["loadStatus"] == "LOADED" and error and error["__typename"] == "PythonError":
                raise RuntimeError(f"code location {entry['name']} failed to load: {error['message']}")
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)

    def _daemons_healthy(self) -> bool:
        statuses = self.graphql(_DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
        sick = [s["daemonType"] for s in statuses if s["required"] and not s["healthy"]]
        assert not sick, f"not healthy yet: {', '.join(sick)}"
        return True

    def restart_daemon_after_kill9(self, timeout: float = 240) -> None:
        """kill -9 the daemon's process group, start a new daemon, wait until it reports healthy."""
        self.daemon.kill9()
        self.daemon.start()
        wait_for(self._daemon_heartbeat_after(time.time()), "the new daemon's heartbeats", timeout)

    def _daemon_heartbeat_after(self, since: float) -> Callable[[], bool]:
        query = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required lastHeartbeatTime } } } }"

        def fresh() -> bool:
            if not self.daemon.alive():
                raise RuntimeError(f"the daemon exited: {self.daemon.tail()}")
            statuses = self.graphql(query)["instance"]["daemonHealth"]["allDaemonStatuses"]
            required = [s for s in statuses if s["required"]]
            return all(s["healthy"] and (s["lastHeartbeatTime"] or 0) > since for s in required)

        return fresh

    def graphql(
        self, query: str, variables: dict[str, Any] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """One GraphQL request to the webserver; a GraphQL error raises RuntimeError."""
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.load(response)
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def logs(self) -> str:
        """The tail of every process's log, for a failing test's report."""
        return "\n".join(f"----- {p.name} ({p.log}) -----\n{p.tail()}" for p in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):  # the daemon and webserver first, the code server last
            process.stop()


# Process trees, from /proc: how a test finds the run worker a code server started.


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def ancestors(pid: int) -> list[int]:
    """`pid`'s parent, its parent's parent ... up to init."""
    found = []
    current = parent_pid(pid)
    while current and current > 1:
        found.append(current)
        current = parent_pid(current)
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first by level)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_pid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, level = [], children.get(pid, [])
    while level:
        found += level
        level = [child for p in level for child in children.get(p, [])]
    return found


def kill_tree(pid: int) -> list[int]:
    """Freeze `pid` and everything below it (SIGSTOP: nothing more is written), then SIGKILL them
    all, as a machine or container that dies takes them; the pids killed."""
    tree = [pid, *descendants(pid)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for member in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, sig)
    return tree
