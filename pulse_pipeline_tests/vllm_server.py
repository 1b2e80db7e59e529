"""A real vLLM server for tests: vLLM's CPU build from its own venv (scripts/install-vllm.sh), the
OpenAI-compatible server on 127.0.0.1 and a free port, stopped by PID. No mock server anywhere.

Start-up takes ~40 s for SmolLM2-135M and the server holds ~4 GB, so start one per test module.
float32 keeps greedy output deterministic (and equal to transformers' in float32); bf16 output
varies with the batch size on the CPU backend.

Skips (pytest.skip) when the vLLM venv is missing: `make vllm` (or `bash scripts/install-vllm.sh`)
creates it; set VLLM_VENV to use another one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

PROJECT = Path(__file__).resolve().parents[1]


TEST_API_KEY = "sk-pulse-test-key"  # test servers require it, so tests go through vLLM's auth


def vllm_venv() -> Path:
    return Path(os.environ.get("VLLM_VENV") or PROJECT / ".venv-vllm")


def serve_exe() -> Path:
    """The installed `pulse-vllm-serve`; skips the test when vLLM is not installed."""
    exe = vllm_venv() / "bin" / "pulse-vllm-serve"
    if not os.access(exe, os.X_OK):
        pytest.skip(f"vLLM is not installed ({exe} is missing): run `bash scripts/install-vllm.sh`")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmTestServer:
    """Start with `start()`, stop with `stop()`; `url` is the server's root URL.

    `model` is a local Hugging Face folder; its path is the base model's id in /v1/models.
    """

    def __init__(
        self,
        model: Path,
        *,
        max_loras: int = 4,
        max_lora_rank: int = 64,
        max_model_len: int = 1024,
        lora_modules: Sequence[str] = (),  # "name=path"
        api_key: str | None = None,  # required on /v1/* when set (not on /health)
        extra_args: Sequence[str] = (),
        startup_timeout: float = 180,
    ) -> None:
        self.exe = serve_exe()
        self.model = Path(model)
        self.api_key = api_key
        self.port = _free_port()
        self.startup_timeout = startup_timeout
        self.args = [
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(max_model_len),
            "--dtype",
            "float32",
            "--enable-lora",
            "--max-loras",
            str(max_loras),
            "--max-lora-rank",
            str(max_lora_rank),
            *(["--lora-modules", *lora_modules] if lora_modules else []),
            *(["--api-key", api_key] if api_key else []),
            *extra_args,
        ]
        self.dir = Path(tempfile.mkdtemp(prefix="pulse-vllm-"))
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VllmTestServer:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default takes a large share of RAM
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "TMPDIR": str(self.dir),  # vLLM leaves a vllm_dist_* file in the temp folder; ours is removed
        }
        env.pop("PYTHONPATH", None)  # the wrapper sets its own
        env.pop("VIRTUAL_ENV", None)
        started = time.monotonic()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(self.exe), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                start_new_session=True,  # its own process group: stop() kills the engine process too
            )
        deadline = started + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop(keep_log=True)
                raise RuntimeError(f"vLLM server exited with {code} at start-up; {self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.startup_seconds = time.monotonic() - started
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop(keep_log=True)
        raise RuntimeError(f"vLLM server not healthy after {self.startup_timeout:g} s; {self._log_tail()}")

    def _log_tail(self, lines: int = 25) -> str:
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        return f"log {self.log} ends:\n" + "\n".join(tail)

    def stop(self, *, keep_log: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
                # The API server is gone; its engine process (same group) may still be winding down.
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    os.killpg(proc.pid, 0)
                    time.sleep(0.1)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not keep_log:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> VllmTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
