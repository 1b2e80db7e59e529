"""A real Pushgateway and a real Prometheus scraping it, for tests: Debian's `prometheus-pushgateway`
and `prometheus` binaries on 127.0.0.1 and free ports, in a temporary folder, stopped by PID.
No mock metrics endpoint anywhere."""

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

PUSHGATEWAY_BIN = "/usr/bin/prometheus-pushgateway"
PROMETHEUS_BIN = "/usr/bin/prometheus"
SCRAPE_INTERVAL_S = 1


def _binary(path: str) -> str:
    if os.access(path, os.X_OK):
        return path
    found = shutil.which(Path(path).name)
    if found:
        return found
    raise RuntimeError(
        f"{Path(path).name} is missing: run `make prometheus` (installs Debian's prometheus and "
        "prometheus-pushgateway packages) or `apt-get install prometheus prometheus-pushgateway`"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """One server process in its own process group, ready when `ready_path` answers 200."""

    name = "server"
    ready_path = "/-/ready"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 30) -> None:
        log = open(self.folder / f"{self.name}.log", "wb")  # noqa: SIM115 - the child keeps writing to it
        self.proc = subprocess.Popen(
            self.command(), cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready in {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.folder / f"{self.name}.log"
        return path.read_text(errors="replace")[-1500:] if path.exists() else "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


class Pushgateway(_Server):
    name = "pushgateway"

    def command(self) -> list[str]:
        # Debian's build persists to /var/lib/prometheus by default: keep the state in the test's folder.
        return [
            _binary(PUSHGATEWAY_BIN),
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--persistence.file={self.folder / 'pushgateway.data'}",
        ]


class Prometheus(_Server):
    """Scrapes `targets` every SCRAPE_INTERVAL_S with honor_labels (as a Pushgateway job must)."""

    name = "prometheus"

    def __init__(self, folder: Path, targets: list[str]) -> None:
        super().__init__(folder)
        self.targets = targets

    def command(self) -> list[str]:
        config = self.folder / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
            "scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n"
            f"    static_configs:\n      - targets: [{', '.join(repr(t) for t in self.targets)}]\n"
        )
        return [
            _binary(PROMETHEUS_BIN),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def query(self, promql: str) -> list[dict]:
        """An instant query's result vector: [{"metric": {labels}, "value": [time, "value"]}]."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()
        if answer.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: {answer}")
        return answer["data"]["result"]

    def wait_for(self, promql: str, check=lambda result: bool(result), timeout_s: float = 30) -> list[dict]:
        """Query `promql` until `check(result)` holds (a scrape or two); the last result otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if check(result) or time.monotonic() > deadline:
                return result
            time.sleep(0.25)


class PrometheusStack:
    """A Pushgateway and a Prometheus that scrapes it, in one temporary folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="pulse-prometheus-"))
        self.pushgateway = Pushgateway(self.folder)
        self.prometheus = Prometheus(self.folder, [f"127.0.0.1:{self.pushgateway.port}"])

    def __enter__(self) -> PrometheusStack:
        self.pushgateway.start()
        try:
            self.prometheus.start()
        except BaseException:
            self.pushgateway.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.prometheus.stop()
        self.pushgateway.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
