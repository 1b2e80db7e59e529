"""The Dagster UI for browser tests: `dagster-webserver` or `dagster dev` over a test instance on
127.0.0.1, stopped by its process group; pages are driven with Playwright through Debian's Chromium.

Screenshots are test artifacts: they go to $PULSE_TEST_ARTIFACTS, by default `test-artifacts/` at
the repository root (gitignored), one folder per kind (`ui/` for these)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.s3_server import _free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS_ENV = "PULSE_TEST_ARTIFACTS"


def artifacts_dir(kind: str) -> Path:
    """Where tests leave files for a person to look at after the run (created when missing)."""
    root = Path(os.environ.get(ARTIFACTS_ENV) or PROJECT / "test-artifacts")
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def prepare_dagster_home(dagster_home: Path) -> None:
    """The project's dagster.yaml, and the first-visit modal marked as seen (it covers the page)."""
    (dagster_home / ".nux").mkdir(parents=True, exist_ok=True)
    (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    (dagster_home / "dagster.yaml").write_text((PROJECT / "pulse_pipeline" / "dagster.yaml").read_text())


def _default_sigint() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and children
    # inherit that; `dagster dev` stops its services with SIGINT, so they would never stop.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class DagsterWebserver:
    """`dagster-webserver` alone: pages read the instance, nothing runs in the background."""

    name = "dagster-webserver"

    def __init__(
        self,
        dagster_home: Path,
        env: dict[str, str] | None = None,
        workspace: Path = PROJECT / "workspace.yaml",
    ) -> None:
        self.dagster_home = dagster_home
        self.workspace = workspace
        self.env = {**(os.environ if env is None else env), "DAGSTER_HOME": str(dagster_home)}
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = dagster_home / f"{self.name}.log"
        self.locations: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(self.port),
                "-w", str(self.workspace)]  # fmt: skip

    def __enter__(self) -> DagsterWebserver:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=PROJECT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_default_sigint,
            )  # fmt: skip
        try:
            self._wait_ready(time.monotonic() + 180)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        self._wait(
            deadline, lambda: urllib.request.urlopen(f"{self.url}/server_info", timeout=2).close(), "answer"
        )

    def _wait(self, deadline: float, probe: Any, what: str) -> Any:
        """Call `probe` until it returns without OSError (or AssertionError: not ready yet)."""
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            try:
                return probe()
            except (OSError, AssertionError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not {what} in time ({exc}): {self.tail()}") from None
                time.sleep(0.5)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def graphql(self, query: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        # whatever of the group is left: a stop that hung, or services that outlived the leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


_LOCATIONS = """{ workspaceOrError { __typename ... on PythonError { message }
  ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message stack } } } } } }"""
_DAEMONS = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"


class DagsterDev(DagsterWebserver):
    """`dagster dev`: the webserver, the daemon (queued runs, sensors, schedules, backfills) and the
    project's code location, as a user starts them. Ready when every code location has loaded
    (a location that fails to load raises with its error) and every required daemon is healthy."""

    name = "dagster-dev"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(self.port),
                "-w", str(self.workspace)]  # fmt: skip

    def _wait_ready(self, deadline: float) -> None:
        super()._wait_ready(deadline)
        self.locations = self._wait(deadline, self._loaded_locations, "load the code locations")
        self._wait(deadline, self._daemons_healthy, "report healthy daemons")

    def _loaded_locations(self) -> list[str]:
        workspace = self.graphql(_LOCATIONS)["workspaceOrError"]
        if workspace["__typename"] != "Workspace":
            raise RuntimeError(f"the workspace did not load: {workspace.get('message')}")
        entries = workspace["locationEntries"]
        assert entries and all(e["loadStatus"] == "LOADED" for e in entries), "still loading"
        for entry in entries:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                raise RuntimeError(
                    f"code location {entry['name']} failed to load: {error['message']}{''.join(error['stack'])}"
                )
        return [e["name"] for e in entries]

    def _daemons_healthy(self) -> None:
        statuses = self.graphql(_DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
        sick = [s["daemonType"] for s in statuses if s["required"] and not s["healthy"]]
        assert not sick, f"daemons not healthy yet: {', '.join(sick)}"


def assert_not_blank(png: Path) -> None:
    """A screenshot shows something: many colours, and no single colour covering nearly all of it."""
    from PIL import Image  # a dependency of matplotlib

    with Image.open(png) as image:
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20) or []
        total = pixels.width * pixels.height
    top = max((count for count, _ in colours), default=total)
    assert len(colours) >= 32 and top / total < 0.97, (
        f"{png} looks blank: {len(colours)} colours, the commonest covers {top / total:.1%}"
    )


def save_screenshot(page: Any, name: str, *, full_page: bool = False) -> Path:
    """`ui/<name>.png` under the test artifacts, checked to be non-blank."""
    path = artifacts_dir("ui") / f"{name}.png"
    page.wait_for_load_state("networkidle")  # rows and nodes that load their details after the page
    page.screenshot(path=str(path), full_page=full_page)
    assert_not_blank(path)
    return path
