"""The eval report as a person sees it in the Dagster UI: the asset's `report` metadata opens as
rendered Markdown (headings and tables, not raw pipes)."""

import dagster as dg
import pytest

from pulse_pipeline.core.evaluation.reports import render_markdown
from pulse_pipeline_tests.core.evaluation.test_reports import classification_results
from pulse_pipeline_tests.dagster_ui import CHROMIUM, DagsterWebserver, prepare_dagster_home


@pytest.mark.slow
def test_eval_report_markdown_reads_as_tables_in_the_ui(pulse_env):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (CI installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (a dev extra)")
    home = pulse_env / "dagster"
    prepare_dagster_home(home)
    results = classification_results()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=dg.AssetKey(["intent-router", "eval_report"]),
                metadata={
                    "decision": results["gate"]["decision"],
                    "report": dg.MetadataValue.md(render_markdown(results)),
                },
            )
        )
    with DagsterWebserver(home) as ui, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{ui.url}/assets/intent-router/eval_report", wait_until="networkidle")
            page.get_by_text("[Show Markdown]").first.click(timeout=60_000)
            dialog = page.locator("[role=dialog]")
            dialog.get_by_role("heading", name="Gate checks").wait_for()
            assert dialog.locator("table").count() >= 3  # gate checks, metrics per set, flips
            first_row = dialog.locator("table").first.locator("tbody tr").first.inner_text()
            assert "accuracy" in first_row and "|" not in first_row  # a rendered table, not Markdown text
            assert results["gate"]["decision"] in dialog.inner_text()
        finally:
            browser.close()
