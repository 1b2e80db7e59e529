"""The README and docs/ work as written: their links resolve, they name nothing outside the
repository, the contract matches the code, and every shell block marked to run does.

A block runs when the line before it is an HTML comment a reader does not see:
`<!-- docs-test: run -->` (on a fresh checkout) or `<!-- docs-test: run after make demo -->`
(after `make demo`). A file's marked blocks of one kind run in order in one shell, from a copy of
the project root (its entries linked), with no PULSE_, DAGSTER_ or MLFLOW_ variable set: as a new
user types them.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import typer.main

from pulse_pipeline.cli import app
from pulse_pipeline.settings import Settings
from pulse_pipeline_tests.conftest import PROJECT

DOCS = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
MARK = re.compile(r"<!-- docs-test: run( after make demo)? -->\n```sh\n(.*?)```", re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"(?m)^#+ (.+)$", text)}


def test_the_readme_is_a_front_page():
    assert len((PROJECT / "README.md").read_bytes()) <= 12_500


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(doc: Path):
    text = doc.read_text()
    assert "../shared" not in text and not re.search(r"(?<![\w$)])/work/", text)
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.exists(), f"{doc.name}: link to {target}: no such file"
        assert PROJECT in path.parents, f"{doc.name}: link to {target} leaves the repository"
        if anchor:
            assert anchor in _anchors(path), f"{doc.name}: link to {target}: no such heading"


def test_the_contract_lists_every_environment_variable_the_project_reads():
    contract = (PROJECT / "docs" / "contract.md").read_text()
    table = contract[contract.index("## Environment variables") :]
    table = table[: table.index("\n## ", 1)]
    listed = set(re.findall(r"`((?:PULSE|MLFLOW|DAGSTER)_[A-Z0-9_]+)`", table))
    read = {name.upper() for name in Settings.model_fields}
    assert read - listed == set(), "read by settings.py but not in docs/contract.md"
    deploy_only = {name for name in listed - read if name.startswith("DAGSTER_")}
    assert listed - read - deploy_only == set(), "in docs/contract.md but read by nothing"


def test_the_runbook_lists_every_metric_with_its_type_and_labels():
    from pulse_pipeline.core.metrics import METRICS

    text = (PROJECT / "docs" / "operations.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (counter|gauge) \| ([^|]+) \|", text, re.MULTILINE)
    documented = {name: (kind, re.findall(r"^\s*(\w+)|, (\w+)(?= \(|,|$)", labels)) for name, kind, labels in rows}
    assert set(documented) == set(METRICS)
    for name, spec in METRICS.items():
        kind, labels = documented[name]
        assert kind == spec.kind, name
        assert [a or b for a, b in labels][: len(spec.labels)] == list(spec.labels), name


def test_every_command_of_the_contract_exists():
    contract = (PROJECT / "docs" / "contract.md").read_text()
    commands = set(re.findall(r"^\| `pulse ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", contract, flags=re.M))
    commands |= set(re.findall(r"/ `pulse ([a-z]+ [a-z]+)`", contract))
    click = typer.main.get_command(app)
    for command in sorted(commands):
        group = click
        for word in command.split():
            if word.startswith("-") or not hasattr(group, "commands"):
                break
            assert word in group.commands, f"docs/contract.md names `pulse {command}`, which does not exist"
            group = group.commands[word]


def _marked(doc: Path, after_demo: bool) -> list[str]:
    return [block for demo, block in MARK.findall(doc.read_text()) if bool(demo) == after_demo]


def _run_as_a_new_user(tmp_path: Path, script: str, timeout: int) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "checkout"
    root.mkdir()
    for entry in PROJECT.iterdir():
        if not entry.name.startswith((".pulse", ".git", "test-artifacts")):
            (root / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "DAGSTER_", "MLFLOW_"))}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=root,
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


FRESH = [doc for doc in DOCS if _marked(doc, after_demo=False)]
AFTER_DEMO = [doc for doc in DOCS if _marked(doc, after_demo=True)]


def test_the_readme_tour_is_marked_to_run():
    assert PROJECT / "README.md" in AFTER_DEMO


@pytest.mark.slow
@pytest.mark.parametrize("doc", FRESH, ids=lambda p: p.name)
def test_marked_commands_run_on_a_fresh_checkout(tmp_path: Path, doc: Path):
    out = _run_as_a_new_user(tmp_path, "\n".join(_marked(doc, after_demo=False)), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


DEMO_ENDS = "=== make demo has finished ==="


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("doc", AFTER_DEMO, ids=lambda p: p.name)
def test_marked_commands_run_after_make_demo(tmp_path: Path, doc: Path, monkeypatch: pytest.MonkeyPatch):
    end_of_demo = f"echo {DEMO_ENDS}; date +%s.%N > demo-ended"
    script = "\n".join(["make demo", end_of_demo, *_marked(doc, after_demo=True)])
    out = _run_as_a_new_user(tmp_path, script, timeout=1400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    demo, tour = out.stdout.split(DEMO_ENDS)
    root = tmp_path / "checkout"
    monkeypatch.setenv("DAGSTER_HOME", str(root / ".pulse" / "dagster"))  # its dagster.yaml reads it
    _check_the_demo(demo, root / ".pulse", float((root / "demo-ended").read_text()))
    if doc.name == "README.md":
        assert "backfill" in tour.lower()
        assert re.search(r"intent-router-\d{8}-\d{4}", tour)


def _check_the_demo(stdout: str, home: Path, ended: float) -> None:
    """What `make demo` printed and recorded in its Dagster instance (runs before `ended`)."""
    import dagster as dg

    assert "3 quarantined" in stdout and "materialized 4 annotation assets" in stdout
    assert (home / "dagster" / "dagster.yaml").is_file()
    # Each family ends with the gate's decision and its report.
    gates = dict(re.findall(r"^gate +(\S+) +(DEPLOY|REVIEW|FAIL) ", stdout, flags=re.M))
    assert set(gates) == {"call-analysis", "intent-router", "article-scorer", "access-qa"}
    reports = re.findall(r"^gate .* (\S+/eval/report\.html)$", stdout, flags=re.M)
    assert len(reports) == 4 and all(Path(r).is_file() for r in reports)
    # A DEPLOY is promoted by the retrain run itself; the others wait (REVIEW) or stop (FAIL).
    current = dict(re.findall(r"^current +(\S+) +(\S+)", stdout, flags=re.M))
    for family, decision in gates.items():
        assert current[family].startswith(f"{family}-") == (decision == "DEPLOY"), (family, decision)
    assert stdout.count("adapter  ") == 4 and "(reused)" not in stdout
    assert len(re.findall(r"^drift +\S+ +(no drift|drift) against", stdout, flags=re.M)) == 4
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = [r for r in instance.get_run_records() if r.create_timestamp.timestamp() < ended]
        assert len(runs) == 20  # 14 days + snapshots + a retrain per family + the daily watch
        watch = [r.dagster_run for r in runs if r.dagster_run.job_name == "__ASSET_JOB"]
        assert any(
            {k.path[-1] for k in (r.asset_selection or ())} == {"drift_report", "production_accuracy"}
            for r in watch
        )
        for record in runs:
            run = record.dagster_run
            family = run.tags.get("pulse/family")
            # A retrain run stops at the blocking promotion_gate check when the gate says FAIL.
            failed_gate = run.job_name.startswith("retrain_") and gates.get(family) == "FAIL"
            expected = dg.DagsterRunStatus.FAILURE if failed_gate else dg.DagsterRunStatus.SUCCESS
            assert run.status == expected, (run.job_name, run.status)
        key = dg.AssetKey(["intent-router", "annotations"])
        assert len(instance.get_materialized_partitions(key)) == 14
