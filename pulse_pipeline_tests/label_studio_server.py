"""A real Label Studio server for tests: the `label-studio` package from its own venv
(scripts/install-label-studio.sh), on 127.0.0.1 and a free port, with SQLite in a temporary folder
and a known user and legacy API token. Start-up takes ~30 s, so one server per test session.

Skips (pytest.skip) when the venv is missing: `make label-studio` (or `bash
scripts/install-label-studio.sh`) creates it; set LABEL_STUDIO_VENV to use another one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

PROJECT = Path(__file__).resolve().parents[1]
USER, PASSWORD, TOKEN = "reviewer@example.org", "pulse-test-password", "pulse0test0token0for0label0studio"


def label_studio_exe() -> Path:
    venv = Path(os.environ.get("LABEL_STUDIO_VENV") or PROJECT / ".venv-label-studio")
    exe = venv / "bin" / "label-studio"
    if not os.access(exe, os.X_OK):
        pytest.skip(
            f"Label Studio is not installed ({exe} is missing): run `bash scripts/install-label-studio.sh`"
        )
    return exe


class LabelStudioServer:
    def __init__(self) -> None:
        self.exe = label_studio_exe()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = TOKEN
        self.user = USER
        self.data = Path(tempfile.mkdtemp(prefix="pulse-label-studio-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> LabelStudioServer:
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data),
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            # webhooks to the tests' own services on 127.0.0.1 (refused by default as SSRF protection)
            "SSRF_PROTECTION_ENABLED": "false",
            "SENTRY_DSN": "",
        }
        log = (self.data / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [str(self.exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(self.port),
             "--username", USER, "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"Label Studio did not answer /health in {timeout:.0f} s: {self.tail()}")

    def tail(self, n: int = 3000) -> str:
        path = self.data / "server.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.data, ignore_errors=True)

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
