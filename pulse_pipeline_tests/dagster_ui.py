"""The Dagster UI for browser tests: `dagster-webserver` over a test instance on 127.0.0.1,
stopped by its process group; pages are driven with Playwright through Debian's Chromium."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.s3_server import _free_port

CHROMIUM = Path("/usr/bin/chromium")


def prepare_dagster_home(dagster_home: Path) -> None:
    """The project's dagster.yaml, and the first-visit modal marked as seen (it covers the page)."""
    (dagster_home / ".nux").mkdir(parents=True, exist_ok=True)
    (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    (dagster_home / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())


class DagsterWebserver:
    def __init__(self, dagster_home: Path) -> None:
        self.dagster_home = dagster_home
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = dagster_home / "webserver.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DagsterWebserver:
        env = {**os.environ, "DAGSTER_HOME": str(self.dagster_home)}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(self.port),
                 "-w", str(PROJECT / "workspace.yaml")],
                cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"dagster-webserver did not answer in 120 s: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
