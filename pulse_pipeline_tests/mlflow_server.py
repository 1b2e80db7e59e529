"""A real MLflow tracking server for tests: `mlflow server` from the project's venv on 127.0.0.1
and a free port, a throw-away sqlite backend store and a local artifact root, stopped by process
group. No mock registry anywhere.

Start-up takes ~25 s on a fresh database (migrations) and ~8 s afterwards on this machine
(../shared/notes/stack.md); `start()` waits up to 90 s for `/health` to answer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_exe() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


class MlflowServer:
    """Start with `start()` (or `with MlflowServer() as server:`), stop with `stop()`;
    `tracking_uri` is the `http://127.0.0.1:PORT` address clients use."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pulse-mlflow-"))
        self.artifact_root = self.root / "mlartifacts"
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def command(self) -> list[str]:
        return [
            *_mlflow_exe(),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            self.artifact_root.as_uri(),
        ]

    def start(self) -> MlflowServer:
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.root,  # anything the server writes relative to its cwd stays in the temp folder
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: the gunicorn/uvicorn workers stop with it
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited at start (rc {self.proc.returncode}): {self._log_tail()}"
                )
            if self._healthy():
                return
            time.sleep(0.25)
        raise RuntimeError(f"mlflow server did not answer on {self.tracking_uri} in {START_TIMEOUT_S:.0f} s")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=1) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            with contextlib.suppress(OSError):  # workers left behind by the leader
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
