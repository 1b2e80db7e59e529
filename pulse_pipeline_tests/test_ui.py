"""The Dagster UI, used like a person would: `dagster dev` on 127.0.0.1 over a demo instance (the
demo annotations in a fresh PULSE_HOME), driven in Debian's Chromium through Playwright.

What is expected comes from the definitions (`build_definitions` over the project's pulse.yaml,
what `dagster dev` loads), so assets, sensors and schedules added later are checked without editing
this file. Screenshots (lineage, sensors, schedules, the run) are saved under test-artifacts/ui/
(or $PULSE_TEST_ARTIFACTS/ui) and checked to be non-blank.
"""

import datetime as dt
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from pulse_pipeline.core.families import FamilyConfig, PulseConfig
from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.store import Store
from pulse_pipeline.demo.data import DemoScale, write_demo_file
from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.dagster_ui import (
    CHROMIUM,
    DagsterDev,
    artifacts_dir,
    prepare_dagster_home,
    save_screenshot,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

UI_TIMEOUT_MS = 60_000  # pages on a busy 2-core machine
RUN_TIMEOUT_MS = 240_000  # a queued run: daemon pick-up, a run worker, a step process


@dataclass(frozen=True)
class Demo:
    pulse_home: Path
    database_url: str

    @property
    def dagster_home(self) -> Path:
        return self.pulse_home / "dagster"


def _service_env(demo: Demo) -> dict[str, str]:
    """This process's environment without any PULSE_/DAGSTER_/MLFLOW_ setting of the caller (module
    fixtures start before the per-test isolation), pointed at the demo home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "DAGSTER_", "MLFLOW_"))}
    return env | {
        "PULSE_HOME": str(demo.pulse_home),
        "PULSE_CONFIG": str(PROJECT / "pulse.yaml"),
        "DAGSTER_HOME": str(demo.dagster_home),
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }


@pytest.fixture(scope="module")
def sync_api():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (`make chromium` installs Debian's chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (a dev extra)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, config: PulseConfig) -> Demo:
    """A fresh PULSE_HOME holding the demo annotations (what `pulse demo` loads, at a fifth of its
    size), nothing trained, and a DAGSTER_HOME with the project's dagster.yaml."""
    home = tmp_path_factory.mktemp("ui") / "pulse-home"
    demo = Demo(home, f"sqlite:///{home / 'pulse.db'}")
    home.mkdir()
    data = write_demo_file(
        home / "demo" / "annotations.jsonl",
        anchor=dt.datetime.now(dt.UTC).date(),
        scale=DemoScale().scaled(0.2),
    )
    with Store(demo.database_url) as store:
        result = ingest_file(store, data.path, config)
    assert result.accepted > 0, result.reasons[:5]
    prepare_dagster_home(demo.dagster_home)
    return demo


@pytest.fixture(scope="module")
def ui(sync_api, demo: Demo) -> Iterator[DagsterDev]:
    with DagsterDev(demo.dagster_home, env=_service_env(demo)) as dev:
        yield dev


@pytest.fixture(scope="module")
def browser(sync_api):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest):
    """A fresh tab; when the test fails, what it showed is saved as `<test>-FAILED.png`."""
    failed_before = request.session.testsfailed
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    yield page
    if request.session.testsfailed > failed_before:
        page.screenshot(path=str(artifacts_dir("ui") / f"{request.node.name}-FAILED.png"))
    page.close()


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from pulse_pipeline.core.families import load_config
    from pulse_pipeline.definitions import build_definitions

    return build_definitions(load_config(PROJECT / "pulse.yaml"))  # what `dagster dev` loads


def _poll(page, probe, done, timeout_ms: int = UI_TIMEOUT_MS):
    """`probe()` until `done(value)` or the time is up; returns the last value either way."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not done(value := probe()) and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    return value


# --- lineage ---------------------------------------------------------------------------------


def _shows(label: str, name: str) -> bool:
    """A node's label shows this asset name; the UI shortens long ones in the middle ("producti…_accuracy")."""
    if "…" not in label:
        return label == name
    head, tail = label.split("…", 1)
    return len(name) > len(head) + len(tail) and name.startswith(head) and name.endswith(tail)


def _graph_nodes(page, names: set[str]) -> tuple[dict[str, float], list[str]]:
    """Where the lineage graph draws each of `names` (x of its node, when exactly one node shows
    it), and every node label drawn (a node's first line)."""
    drawn = page.locator("foreignObject").evaluate_all(
        "els => els.map(e => [e.getAttribute('x'), e.firstElementChild ? e.firstElementChild.innerText : ''])"
    )
    labels = [(text.strip().split("\n")[0], float(x)) for x, text in drawn if text.strip() and x is not None]
    found = {}
    for name in names:
        xs = [x for label, x in labels if _shows(label, name)]
        if len(xs) == 1:
            found[name] = xs[0]
    return found, sorted(label for label, _ in labels)


def _family_lineage(
    defs: dg.Definitions, family: FamilyConfig
) -> tuple[list[dg.AssetKey], list[tuple[dg.AssetKey, dg.AssetKey]], list[dg.AssetKey]]:
    """The family's assets (its group), the edges between them, and one chain from
    `<family>/annotations` to `<family>/deployment`."""
    graph = defs.resolve_asset_graph()
    keys = sorted(k for k in graph.get_all_asset_keys() if graph.get(k).group_name == family.snake)
    edges = [(parent, key) for key in keys for parent in graph.get(key).parent_keys if parent in keys]
    start, end = dg.AssetKey([family.name, "annotations"]), dg.AssetKey([family.name, "deployment"])
    paths = [[start]]
    while paths:  # breadth-first: the shortest chain
        path = paths.pop(0)
        if path[-1] == end:
            return keys, edges, path
        paths += [[*path, child] for child in sorted(graph.get(path[-1]).child_keys) if child not in path]
    raise AssertionError(f"defs has no chain from {start.to_user_string()} to {end.to_user_string()}")


def _check_family_lineage(ui, page, location: str, defs: dg.Definitions, family: FamilyConfig) -> None:
    keys, edges, chain = _family_lineage(defs, family)
    name = {key: key.path[-1] for key in keys}
    wanted = set(name.values())
    assert len(wanted) == len(keys), f"{family.name}: two assets share a node name: {keys}"
    page.goto(f"{ui.url}/locations/{location}/asset-groups/{family.snake}")
    nodes, labels = _poll(page, lambda: _graph_nodes(page, wanted), lambda drawn: set(drawn[0]) == wanted)
    missing = sorted(wanted - set(nodes))
    assert not missing, f"{family.name}: the lineage does not show {missing}; it shows {labels}"
    # The graph is drawn left to right: every dependency points right, the chain included.
    drawn_chain = [name[k] for k in chain]
    assert [nodes[n] for n in drawn_chain] == sorted({nodes[n] for n in drawn_chain}), (
        f"{family.name}: the chain {' -> '.join(drawn_chain)} is not drawn left to right: {nodes}"
    )
    backwards = [f"{name[a]} -> {name[b]}" for a, b in edges if not nodes[name[a]] < nodes[name[b]]]
    assert not backwards, f"{family.name}: edges not drawn left to right: {backwards}"
    save_screenshot(page, f"lineage-{family.snake}")


def test_lineage_shows_every_family_chain_from_annotations_to_deployment(ui, page, defs, config):
    page.goto(f"{ui.url}/asset-groups")
    for family in config.families.values():
        page.get_by_text(family.snake, exact=True).first.wait_for()
    save_screenshot(page, "lineage")
    (location,) = ui.locations
    for family in config.families.values():
        _check_family_lineage(ui, page, location, defs, family)


# --- automation ------------------------------------------------------------------------------


def _listed(page, location: str, kind: str) -> set[str]:
    """Names of the sensors or schedules the Automation page links to."""
    prefix = f"/locations/{location}/{kind}/"
    hrefs = page.locator(f"a[href^='{prefix}']").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    return {href.removeprefix(prefix).split("/")[0].split("?")[0] for href in hrefs}


def test_automation_pages_list_every_sensor_and_schedule(ui, page, defs):
    repository = defs.get_repository_def()  # includes sensors Dagster adds itself
    sensors = {s.name for s in repository.sensor_defs}
    schedules = {s.name for s in repository.schedule_defs}
    assert sensors, "defs declares no sensor"
    (location,) = ui.locations

    page.goto(f"{ui.url}/automation?selection=type:sensor")
    shown = _poll(page, lambda: _listed(page, location, "sensors"), lambda s: s >= sensors)
    assert shown == sensors, f"sensors listed {sorted(shown)}, defs has {sorted(sensors)}"
    assert not _listed(page, location, "schedules"), "the sensor filter also lists schedules"
    save_screenshot(page, "sensors")

    page.goto(f"{ui.url}/automation?selection=type:schedule")
    if schedules:
        shown = _poll(page, lambda: _listed(page, location, "schedules"), lambda s: s >= schedules)
        assert shown == schedules, f"schedules listed {sorted(shown)}, defs has {sorted(schedules)}"
    else:  # none defined yet: the page must say so rather than list anything
        page.get_by_text("No matching automations").wait_for()
    assert not _listed(page, location, "sensors"), "the schedule filter also lists sensors"
    save_screenshot(page, "schedules")


# --- materialize from the UI -----------------------------------------------------------------


def test_a_day_of_annotations_materialized_from_the_partition_dialog(ui, page, demo, config, monkeypatch):
    """The backfill a person does after fixing a bad day: pick the day in the Materialize dialog,
    launch, follow the run to success; the instance agrees and the counts are the store's."""
    with Store(demo.database_url) as store:
        family = next(f for f in config.families if store.annotations.days_with_annotations(f))
        day = store.annotations.days_with_annotations(family)[-1]  # recent: in the dialog's default 90-day range
        expected = sum(1 for _ in store.annotations.iter_day(family, day))
    assert expected > 0

    page.goto(f"{ui.url}/assets/{family}/annotations")
    page.get_by_role("button", name=re.compile(r"\bMaterialize")).first.click()
    dialog = page.get_by_role("dialog")
    partitions = dialog.get_by_role("textbox").first
    partitions.fill(day.isoformat())
    partitions.press("Enter")
    dialog.get_by_text("1 partition", exact=True).wait_for()
    save_screenshot(page, "materialize-dialog")
    dialog.get_by_role("button", name="Launch 1 run", exact=True).click()

    page.get_by_role("link", name="View", exact=True).click()  # on the "Launched run" toast
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    run_id = page.url.rsplit("/", 1)[-1]
    outcome = page.get_by_text("RUN_SUCCESS", exact=True).or_(page.get_by_text("RUN_FAILURE", exact=True))
    outcome.first.wait_for(timeout=RUN_TIMEOUT_MS)
    assert outcome.first.inner_text() == "RUN_SUCCESS", f"run {run_id} failed in the UI: {ui.tail()}"
    page.get_by_role("img", name="run_success").first.wait_for()  # the run's status tag
    save_screenshot(page, "run")

    monkeypatch.setenv("DAGSTER_HOME", str(demo.dagster_home))  # dagster.yaml's storage reads it
    with dg.DagsterInstance.from_config(str(demo.dagster_home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags.get("dagster/partition") == day.isoformat()
        event = instance.get_latest_materialization_event(dg.AssetKey([family, "annotations"]))
    assert event is not None and event.run_id == run_id
    materialization = event.asset_materialization
    assert materialization is not None and materialization.partition == day.isoformat()
    assert materialization.metadata["annotations"].value == expected
