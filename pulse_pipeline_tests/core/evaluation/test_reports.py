"""Report rendering: Markdown for the Dagster UI, the self-contained HTML page, plots, written files."""

from __future__ import annotations

import copy
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pulse_pipeline.core.evaluation.config import MAIN_METRICS, GateConfig, Threshold
from pulse_pipeline.core.evaluation.gate import decide
from pulse_pipeline.core.evaluation.report_plots import confusion_subset
from pulse_pipeline.core.evaluation.report_view import format_delta, format_value
from pulse_pipeline.core.evaluation.reports import (
    make_plots,
    md_escape,
    render_html,
    render_markdown,
    write_reports,
)

CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
INTENTS = ["freeze_account", "report_fraud", "balance", "transfer", "pin_change", "oos"]


def _training(dataset_version: str, epochs: int = 2, steps: int = 20) -> dict[str, Any]:
    return {
        "dataset_version": dataset_version,
        "epochs": epochs,
        "best_epoch": epochs,
        "training_loss": 0.41,
        "best_validation_loss": 0.52,
        "loss_history": [
            {"step": s, "loss": 2.3 * math.exp(-s / 8) + 0.3, "epoch": s * epochs / steps}
            for s in range(1, steps + 1)
        ],
        "epoch_history": [
            {"epoch": e, "train_loss": 0.9 / e, "val_loss": 0.7 - 0.09 * e} for e in range(1, epochs + 1)
        ],
    }


def _row(metric: str, candidate: float, baseline: float, half: float, higher: bool = True) -> dict[str, Any]:
    delta = candidate - baseline
    return {
        "metric": metric,
        "candidate": candidate,
        "baseline": baseline,
        "delta": delta,
        "ci_low": delta - half,
        "ci_high": delta + half,
        "higher_is_better": higher,
    }


def classification_results() -> dict[str, Any]:
    candidate = {
        "accuracy": 0.91,
        "macro_f1": 0.89,
        "in_scope_accuracy": 0.93,
        "oos_recall": 0.7,
        "latency_p50_seconds": 0.004,
        "latency_p95_seconds": 0.009,
    }
    baseline = {
        "accuracy": 0.87,
        "macro_f1": 0.85,
        "in_scope_accuracy": 0.9,
        "oos_recall": 0.72,
        "latency_p50_seconds": 0.0041,
        "latency_p95_seconds": 0.0102,
    }
    matrix = [[20 if i == j else (i + j) % 3 for j in range(len(INTENTS))] for i in range(len(INTENTS))]
    return {
        "family": "intent-router",
        "task": "classification",
        "version": "intent-router-20261122-0930",
        "dataset_version": "ds-3f2a9c",
        "evaluated_at": "2026-11-22T09:41:00+00:00",
        "baseline": {"kind": "production", "version": "intent-router-20261120-0200"},
        "sets": [
            {"name": "test", "examples": 150, "source": "snapshot ds-3f2a9c test split"},
            {"name": "golden", "examples": 24, "source": "golden/intent-router.jsonl"},
        ],
        "metrics": {
            "test": {"candidate": candidate, "baseline": baseline},
            "golden": {"candidate": {"accuracy": 0.958, "oos_recall": None}, "baseline": {"accuracy": 0.917}},
        },
        "comparison": {
            "test": [
                _row("accuracy", 0.91, 0.87, 0.03),
                _row("macro_f1", 0.89, 0.85, 0.035),
                _row("in_scope_accuracy", 0.93, 0.9, 0.025),
                _row("oos_recall", 0.7, 0.72, 0.06),
                _row("latency_p50_seconds", 0.004, 0.0041, 0.0002, higher=False),
                _row("latency_p95_seconds", 0.009, 0.0102, 0.0004, higher=False),
            ],
            "golden": [_row("accuracy", 0.958, 0.917, 0.08)],
        },
        "gate": {
            "decision": "DEPLOY",
            "reasons": [],
            "checks": [
                {
                    "metric": "accuracy",
                    "set": "test",
                    "kind": "absolute",
                    "value": 0.91,
                    "threshold": ">= 0.90 (fail below)",
                    "outcome": "pass",
                    "reason": "accuracy 91.0% >= 90.0%",
                },
                {
                    "metric": "oos_recall",
                    "set": "test",
                    "kind": "change",
                    "value": -0.02,
                    "threshold": "no drop over 0.05 with the interval below 0",
                    "outcome": "pass",
                    "reason": "oos_recall -2.0 pp, interval holds 0",
                },
            ],
        },
        "flipped": [
            {
                "set": "test",
                "id": "a1b2",
                "input": "how do i freeze my card",
                "reference": "freeze_account",
                "candidate": "report_fraud",
                "baseline": "freeze_account",
            },
            {
                "set": "test",
                "id": "c3d4",
                "input": "pipe | in the text\nand a second line | with *stars* and <b>tags</b>",
                "reference": "transfer",
                "candidate": "oos",
                "baseline": "transfer",
            },
        ],
        "confusion": {"labels": INTENTS, "matrix": matrix},
        "training": _training("ds-3f2a9c"),
        "skipped": [{"what": "llm_judge", "reason": "PULSE_JUDGE_URL is not set"}],
        "threshold": {"out_of_scope_label": "oos", "value": 14.2, "chosen_on": "val"},
    }


def regression_results() -> dict[str, Any]:
    dimensions = [
        "clarity",
        "accuracy",
        "depth",
        "relevance",
        "originality",
        "structure",
        "engagement",
        "sourcing",
    ]
    per_dimension = {
        d: {"candidate_mae": 0.7 + 0.05 * i, "baseline_mae": 0.75 + 0.04 * i}
        for i, d in enumerate(dimensions)
    }
    per_dimension["sourcing"]["baseline_mae"] = None  # no baseline prediction for this dimension
    return {
        "family": "article-scorer",
        "task": "regression",
        "version": "article-scorer-20261122-1000",
        "dataset_version": "ds-77e1",
        "baseline": {
            "kind": "base_model",
            "version": None,
            "description": "minilm-l6 without an adapter (head fitted on the train split)",
        },
        "sets": [{"name": "test", "examples": 60, "source": "snapshot ds-77e1 test split"}],
        "metrics": {
            "test": {
                "candidate": {"mae": 0.812, "rmse": 1.104, "spearman": 0.61},
                "baseline": {"mae": 0.95, "rmse": 1.3, "spearman": 0.42},
            }
        },
        "comparison": {
            "test": [
                _row("mae", 0.812, 0.95, 0.05, higher=False),
                _row("rmse", 1.104, 1.3, 0.07, higher=False),
                _row("spearman", 0.61, 0.42, 0.1),
            ]
        },
        "gate": {
            "decision": "FAIL",
            "reasons": ["mae 0.812 > 0.800 (fail above)"],
            "checks": [
                {
                    "metric": "mae",
                    "set": "test",
                    "kind": "absolute",
                    "value": 0.812,
                    "threshold": "<= 0.80 (fail above)",
                    "outcome": "fail",
                    "reason": "mae 0.812 > 0.800 (fail above)",
                }
            ],
        },
        "per_dimension": per_dimension,
        "training": _training("ds-77e1", epochs=3),
        "skipped": [],
    }


def chat_results() -> dict[str, Any]:
    candidate = {
        "exact_match": 0.12,
        "token_f1": 0.584,
        "bleu": 27.43,
        "chrf": 51.06,
        "citation_presence": 0.875,
        "refusal_consistency": None,
        "latency_p50_seconds": 1.234,
    }
    baseline = {
        "exact_match": 0.02,
        "token_f1": 0.31,
        "bleu": 9.9,
        "chrf": 30.2,
        "citation_presence": 0.1,
        "latency_p50_seconds": 0.98,
    }
    long_answer = "Anvil has 1000 CPU nodes with 128 cores each <<SRC:rp:anvil>>. " * 5
    return {
        "family": "access-qa",
        "task": "chat_sft",
        "version": "access-qa-20261122-1100",
        "dataset_version": "ds-a0c5",
        "evaluated_at": "2026-11-22T11:20:00+00:00",
        "baseline": {"kind": "base_model", "version": None, "description": "tiny without an adapter"},
        "sets": [{"name": "test", "examples": 40, "source": "snapshot ds-a0c5 test split"}],
        "metrics": {"test": {"candidate": candidate, "baseline": baseline}},
        "comparison": {
            "test": [
                _row("exact_match", 0.12, 0.02, 0.06),
                _row("token_f1", 0.584, 0.31, 0.08),
                _row("bleu", 27.43, 9.9, 5.0),
                _row("chrf", 51.06, 30.2, 6.0),
                _row("citation_presence", 0.875, 0.1, 0.1),
                _row("latency_p50_seconds", 1.234, 0.98, 0.2, higher=False),
            ]
        },
        "gate": {
            "decision": "REVIEW",
            "reasons": ["latency_p50_seconds 1.23 s > 1.00 s (review above)"],
            "checks": [
                {
                    "metric": "token_f1",
                    "set": "test",
                    "kind": "absolute",
                    "value": 0.584,
                    "threshold": ">= 0.40 (fail below)",
                    "outcome": "pass",
                    "reason": "token_f1 58.4% >= 40.0%",
                },
                {
                    "metric": "latency_p50_seconds",
                    "set": "test",
                    "kind": "absolute",
                    "value": 1.234,
                    "threshold": "<= 1.0 (review above)",
                    "outcome": "review",
                    "reason": "latency_p50_seconds 1.23 s > 1.00 s (review above)",
                },
            ],
        },
        "flipped": [
            {
                "set": "test",
                "id": f"q{i}",
                "input": f"How many CPU nodes does Anvil have? (variant {i}) <script>alert(1)</script>",
                "reference": long_answer,
                "candidate": {"answer": "I cannot know that.", "citations": []},
                "baseline": long_answer,
            }
            for i in range(14)
        ],
        "training": _training("ds-a0c5", epochs=1, steps=12),
        "skipped": [{"what": "llm_judge", "reason": "PULSE_JUDGE_URL is not set"}],
    }


MINIMAL = {
    "family": "intent-router",
    "task": "classification",
    "version": "v1",
    "gate": {"decision": "REVIEW"},
}


@pytest.fixture(scope="module")
def classification_plots() -> dict[str, bytes]:
    return make_plots(classification_results())


def _section(markdown: str, heading: str) -> list[str]:
    """The lines of one `## ` section."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def _cells(row: str) -> list[str]:
    """A GitHub table row split on its unescaped pipes, outer ones dropped."""
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


# --- numbers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "value", "expected"),
    [
        ("accuracy", 0.91, "91.0%"),
        ("oos_recall", 0.7, "70.0%"),
        ("macro_f1", 0.8912, "89.1%"),
        ("json_valid", 1.0, "100.0%"),
        ("latency_p50_seconds", 0.004, "4.00 ms"),
        ("latency_p95_seconds", 0.0123, "12.3 ms"),
        ("training_time_seconds", 1.234, "1.23 s"),
        ("bleu", 27.43, "27.4"),
        ("chrf", 51.06, "51.1"),
        ("mae", 0.8123, "0.812"),
        ("rmse", 1.1, "1.100"),
        ("accuracy", None, "n/a"),
        ("token_f1", float("nan"), "n/a"),
        ("examples", 150, "150"),
    ],
)
def test_format_value_for_people(metric: str, value: Any, expected: str) -> None:
    assert format_value(metric, value) == expected


def test_format_delta_with_interval() -> None:
    assert format_delta("accuracy", 0.04, 0.01, 0.07) == "+4.0 pp (+1.0 to +7.0)"
    assert format_delta("mae", -0.138, -0.188, -0.088) == "-0.138 (-0.188 to -0.088)"
    assert format_delta("latency_p50_seconds", -0.0001) == "-0.100 ms"
    assert format_delta("bleu", None) == "n/a"


# --- Markdown ---------------------------------------------------------------------------------------


def test_markdown_shows_decision_checks_and_percentages() -> None:
    results = classification_results()
    markdown = render_markdown(results)
    assert markdown.startswith("# intent-router intent-router-20261122-0930: DEPLOY\n")
    assert "**DEPLOY**: all thresholds met" in markdown
    checks = _section(markdown, "Gate checks")
    for check in results["gate"]["checks"]:
        assert any(md_escape(check["metric"]) in line for line in checks)
    assert "| 91.0% | 87.0% | +4.0 pp (+1.0 to +7.0) | better |" in markdown
    assert (
        "latency\\_p95\\_seconds (lower is better) | 9.00 ms | 10.2 ms | -1.20 ms (-1.60 to -0.80) | better |"
        in markdown
    )
    assert "### golden (24 examples, golden/intent-router.jsonl)" in markdown
    assert "oos\\_recall | n/a | n/a" in markdown  # a metric with no applicable example
    assert "top-label score below 14.2 means oos (chosen on val)" in markdown
    assert "- **llm\\_judge**: PULSE\\_JUDGE\\_URL is not set" in markdown
    assert "**Best validation loss:** 0.52" in markdown
    assert "<" not in markdown.replace("\\<", "")  # no HTML, only escaped text


def test_markdown_flipped_cells_are_escaped_and_the_table_holds() -> None:
    markdown = render_markdown(classification_results())
    table = [line for line in _section(markdown, "Flipped examples") if line.startswith("|")]
    assert len(table) == 2 + 2  # header, separator, one row per flipped example
    assert all(len(_cells(row)) == 6 for row in table)
    assert "pipe \\| in the text and a second line \\| with \\*stars\\* and \\<b\\>tags\\</b\\>" in table[3]


def test_markdown_flipped_examples_are_capped_and_shortened() -> None:
    markdown = render_markdown(chat_results())
    section = _section(markdown, "Flipped examples")
    rows = [line for line in section if line.startswith("|")][2:]
    assert len(rows) == 10
    assert "The first 10 of 14." in section
    reference = _cells(rows[0])[3].strip().replace("\\", "")
    assert len(reference) <= 120 and reference.endswith("…")
    assert '{"answer": "I cannot know that.", "citations": \\[\\]}' in rows[0]  # structured answers as JSON


def test_markdown_regression_and_chat_families() -> None:
    regression = render_markdown(regression_results())
    assert "**FAIL**: mae 0.812 \\> 0.800 (fail above)" in regression  # `>` inert, renders as is
    assert "| mae | test | absolute | 0.812 | <= 0.80 (fail above) | **FAIL** |" in regression.replace(
        "\\<", "<"
    )
    assert "Baseline:** the base model: minilm-l6 without an adapter" in regression
    dimensions = [
        line for line in _section(regression, "Mean absolute error per dimension") if line.startswith("|")
    ]
    assert len(dimensions) == 2 + 8
    assert "| sourcing | 1.050 | n/a | n/a | n/a |" in regression
    chat = render_markdown(chat_results())
    assert "**REVIEW**: latency\\_p50\\_seconds 1.23 s \\> 1.00 s (review above)" in chat
    assert "| bleu | 27.4 | 9.9 | +17.5 (+12.5 to +22.5) | better |" in chat
    assert "| 1.23 s | 980 ms |" in chat
    assert "refusal\\_consistency | n/a | n/a |" in chat


def test_thin_evidence_is_a_gate_row_and_the_reason_for_review_in_both_reports() -> None:
    results = classification_results()
    results["sets"][0]["examples"] = 40
    for row in results["comparison"]["test"]:
        row["candidate_ci_low"], row["candidate_ci_high"] = row["candidate"] - 0.1, row["candidate"] + 0.05
    gate = GateConfig(absolute={"accuracy": Threshold(fail_below=0.7)}, evidence={"max_interval_width": 0.1})
    results["gate"] = decide(
        gate,
        {name: m["candidate"] for name, m in results["metrics"].items()},
        results["comparison"],
        MAIN_METRICS["classification"],
        set_sizes={s["name"]: s["examples"] for s in results["sets"]},
        profile="classification",
    )
    assert results["gate"]["decision"] == "REVIEW"
    markdown = render_markdown(results)
    assert (
        "**REVIEW**: not enough evidence: 40 test examples, fewer than 100; not enough evidence: the 95% "
        "interval of accuracy on test is 0.15 wide (0.81 to 0.96), wider than 0.10"
    ) in markdown
    checks = _section(markdown, "Gate checks")
    assert "| examples | test | evidence | 40 | at least 100 examples | **REVIEW** |" in checks
    assert (
        "| accuracy | test | evidence | 0.15 wide (0.81 to 0.96) | 95% interval at most 0.10 wide | **REVIEW** |"
        in checks
    )
    assert all(len(_cells(line)) == 6 for line in checks if line.startswith("|"))
    html = render_html(results, {})
    assert "<td>at least 100 examples</td>" in html
    assert "not enough evidence: 40 test examples, fewer than 100" in html


def test_minimal_results_render_without_crashing(tmp_path: Path) -> None:
    markdown = render_markdown(MINIMAL)
    assert "**REVIEW**: the gate gave no reasons" in markdown
    assert "No gate checks were recorded." in markdown
    assert make_plots(MINIMAL) == {}
    html = render_html(MINIMAL, {})
    assert '<span class="badge review">REVIEW</span>' in html
    sparse = dict(
        MINIMAL, metrics={"test": {"candidate": None}}, comparison={"test": None}, training={}, flipped=None
    )
    assert "### test" in render_markdown(sparse)
    assert make_plots(sparse) == {}
    paths = write_reports(sparse, tmp_path / "eval")
    assert json.loads(paths["results"].read_text())["comparison"] == {"test": None}


# --- HTML -------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Collects what the tests look at: tags, the badge's text, image sources, scripts and links."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.badge: list[str] = []
        self.external: list[str] = []
        self._in_badge = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag in {"link", "script"} or (tag != "img" and values.get("src")):
            self.external.append(tag)
        self._in_badge = "badge" in (values.get("class") or "").split()

    def handle_data(self, data: str) -> None:
        if self._in_badge:
            self.badge.append(data)
            self._in_badge = False


def test_html_has_the_badge_plots_and_escaped_text(classification_plots: dict[str, bytes]) -> None:
    results = classification_results()
    results["flipped"][0]["input"] = "<script>alert(1)</script> & more"
    html = render_html(results, classification_plots)
    page = _Page()
    page.feed(html)
    page.close()
    assert page.badge == ["DEPLOY"]
    assert "script" not in page.tags and page.external == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert len(page.images) == len(classification_plots) == 3
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert "http://" not in html and "https://" not in html
    assert "91.0%" in html and "top-label score below 14.2 means oos" in html


# --- plots ------------------------------------------------------------------------------------------


def test_plots_per_family(classification_plots: dict[str, bytes]) -> None:
    assert set(classification_plots) == {"deltas", "loss_curve", "confusion"}
    regression = make_plots(regression_results())
    assert set(regression) == {"deltas", "loss_curve", "per_dimension"}
    chat = make_plots(chat_results())
    assert set(chat) == {"deltas", "loss_curve"}
    for png in [*classification_plots.values(), *regression.values(), *chat.values()]:
        assert png.startswith(PNG_MAGIC) and len(png) > 5_000


def test_confusion_keeps_the_labels_with_the_most_errors() -> None:
    labels = [f"intent_{i}" for i in range(40)]
    matrix = [[10 if i == j else 0 for j in range(40)] for i in range(40)]
    matrix[3][7] = 5  # errors touch labels 3, 7, 11 and 39 only
    matrix[39][11] = 2
    shown, counts, title = confusion_subset(labels, matrix, limit=30)
    assert len(shown) == 30 and counts.shape == (30, 30)
    assert {"intent_3", "intent_7", "intent_11", "intent_39"} <= set(shown)
    assert shown == sorted(shown, key=labels.index)  # original order kept
    assert "30 of 40 labels with the most errors" in title
    assert (
        confusion_subset(labels[:5], [row[:5] for row in matrix[:5]])[2]
        == "Confusion matrix (candidate, test set)"
    )


def test_malformed_plot_data_is_left_out() -> None:
    results = classification_results()
    results["confusion"] = {"labels": ["a", "b"], "matrix": [[1, 2, 3]]}
    assert "confusion" not in make_plots(results)


# --- files ------------------------------------------------------------------------------------------


def test_write_reports_writes_three_whole_files(
    tmp_path: Path, classification_plots: dict[str, bytes]
) -> None:
    results = classification_results()
    results["metrics"]["test"]["candidate"]["macro_f1"] = float("nan")
    results["comparison"]["test"][1].update(candidate=float("nan"), delta=float("nan"))
    results["comparison"]["test"][0]["ci_high"] = float("inf")
    original = copy.deepcopy(results)
    folder = tmp_path / "adapters" / "intent-router" / "v1" / "eval"
    paths = write_reports(results, folder, plots=classification_plots)
    assert set(paths) == {"results", "markdown", "html"}
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.md", "results.json"]
    saved = json.loads(paths["results"].read_text())
    assert saved["metrics"]["test"]["candidate"]["macro_f1"] is None
    assert saved["comparison"]["test"][1]["delta"] is None
    assert saved["comparison"]["test"][0]["ci_high"] is None
    expected = json.loads(json.dumps(original).replace("NaN", "null").replace("Infinity", "null"))
    assert saved == expected
    assert paths["markdown"].read_text() == render_markdown(saved)
    assert "| macro\\_f1 | n/a | 85.0% | n/a | n/a |" in paths["markdown"].read_text()
    assert paths["html"].read_text().count("data:image/png;base64,") == 3
    write_reports(results, folder, plots={})  # replaced in place, still no leftovers
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.md", "results.json"]


# --- the page in a browser --------------------------------------------------------------------------


def test_html_report_renders_in_chromium(tmp_path: Path, classification_plots: dict[str, bytes]) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (CI installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (a dev extra)")
    from PIL import Image

    report = write_reports(classification_results(), tmp_path, plots=classification_plots)["html"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(report.as_uri())
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            badge = page.locator(".badge")
            assert badge.inner_text() == "DEPLOY"
            assert badge.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(26, 127, 55)"
            screenshot = page.screenshot(full_page=True)
            for decision, background in (("FAIL", "rgb(198, 40, 40)"), ("REVIEW", "rgb(179, 89, 0)")):
                failed = classification_results()
                failed["gate"]["decision"] = decision
                page.goto(write_reports(failed, tmp_path / decision, plots={})["html"].as_uri())
                colours = page.locator(".badge").evaluate(
                    "e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]"
                )
                assert colours == ["rgb(255, 255, 255)", background]  # white text, never red on red
        finally:
            browser.close()
    pixels = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB"))
    assert pixels.shape[0] > 900  # the whole report, longer than one screen
    non_white = float((pixels.min(axis=2) < 235).mean())
    assert non_white > 0.05, f"only {non_white:.1%} of the page is drawn"
    colours = np.unique(pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32))
    assert len(colours) > 200  # text, the green badge, the plots' colours


def test_golden_categories_get_their_own_table_in_both_reports() -> None:
    results = classification_results()
    results["by_category"] = {
        "golden": {
            "banking": {"examples": 6, "accuracy": 0.5, "macro_f1": 0.4},
            "out_of_scope": {"examples": 3, "accuracy": 1.0},
        }
    }
    markdown = render_markdown(results)
    assert "## By category (golden, candidate)" in markdown
    assert "| banking | 6 | 50.0% |" in markdown and "| out\\_of\\_scope | 3 | 100.0% |" in markdown
    html = render_html(results, {})
    assert "By category (golden, candidate)" in html and "<td>banking</td>" in html


def test_unknown_citation_ids_are_listed_in_both_reports() -> None:
    results = classification_results()
    results["unknown_sources"] = {"test": ["compute-resources:frontera", "software:nope"]}
    markdown = render_markdown(results)
    assert "## Citations of unknown sources (not in the source registry)" in markdown
    assert "- **test:** compute-resources:frontera, software:nope" in markdown
    assert "compute-resources:frontera, software:nope" in render_html(results, {})


def test_forgetting_is_a_section_of_both_reports_with_each_slices_figures_and_verdict() -> None:
    from pulse_pipeline.core.evaluation.config import ForgettingConfig
    from pulse_pipeline.core.evaluation.forgetting import OldSlice, summary
    from pulse_pipeline.core.evaluation.sets import EvalExample, EvalSet

    results = classification_results()
    old = "old-5e1f00c0ffee"
    results["sets"].append(
        {"name": old, "examples": 200, "source": "old slice: snapshot 5e1f00c0ffee1234 test split"}
    )
    results["metrics"][old] = {"candidate": {"accuracy": 0.8}, "baseline": {"accuracy": 0.9}}
    results["comparison"][old] = [_row("accuracy", 0.8, 0.9, 0.04)]
    examples = [EvalExample(str(i), "intent_label", "text", "balance") for i in range(200)]
    slices = [
        OldSlice(
            EvalSet(old, "old slice", examples), "5e1f00c0ffee1234", "2026-11-20T02:00:00+00:00", 12, False
        )
    ]
    notes = ["snapshot 0a0a0a0a0a0a0a0a: its test split is empty, so it gives no old slice"]
    change = GateConfig().change
    results["forgetting"] = summary(
        ForgettingConfig(), "classification", change, slices, notes, "intent-router-20261120-0200"
    )
    results["gate"] = decide(
        GateConfig(),
        {},
        results["comparison"],
        MAIN_METRICS["classification"],
        forgetting=results["forgetting"],
    )
    assert results["gate"]["decision"] == "REVIEW"

    markdown = render_markdown(results)
    section = _section(markdown, "Forgetting (old slices)")
    assert section[2] == (
        "accuracy on the test splits of up to 2 earlier snapshots, the candidate against production version "
        "intent-router-20261120-0200; worse by more than 0.02 with the 95% interval excluding 0 is REVIEW."
    )
    assert (
        "| old-5e1f00c0ffee | 5e1f00c0ffee1234 | 2026-11-20 02:00 | 200 | 90.0% | 80.0% | -10.0 pp "
        "| -14.0 pp to -6.0 pp | **REVIEW** |"
    ) in section
    assert "- snapshot 0a0a0a0a0a0a0a0a: its test split is empty, so it gives no old slice" in section
    assert any("12 test example(s) left out" in line for line in section)
    checks = _section(markdown, "Gate checks")
    assert (
        "| accuracy | old-5e1f00c0ffee | forgetting | -10.0 pp | worsens by \\<= 0.02 (or the 95% interval includes 0) | **REVIEW** |"
        in checks
    )
    html = render_html(results, {})
    assert "<h2>Forgetting (old slices)</h2>" in html
    assert '<td class="review" title="forgetting on old-5e1f00c0ffee (snapshot 5e1f00c0ffee1234)' in html

    # no production version: the slices are listed, nothing is judged, and the section says why
    results["forgetting"] = summary(ForgettingConfig(), "classification", change, slices, [], None)
    text = "\n".join(_section(render_markdown(results), "Forgetting (old slices)"))
    assert "Not judged: the baseline is the base model, not a production version" in text
    assert "## Forgetting" not in render_markdown(classification_results())  # off: no section
