"""docs/families.md's "Add your own family" section works exactly as written."""

import json
import os
import re
import subprocess

import pytest

from pulse_pipeline_tests.conftest import PROJECT


def _section(title: str) -> str:
    text = (PROJECT / "docs" / "families.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


@pytest.mark.slow
def test_add_your_own_family_runs_as_written(tmp_path):
    blocks = re.findall(r"```sh\n(.*?)```", _section("Add your own family"), flags=re.S)
    assert len(blocks) == 3
    (tmp_path / ".venv").symlink_to(PROJECT / ".venv")  # "from the project root": its .venv
    (tmp_path / "benchmarks").symlink_to(PROJECT / "benchmarks")
    readme = (PROJECT / "README.md").read_text()
    (benchmark,) = re.findall(r"`(\.venv/bin/python benchmarks/intent_quality\.py [^`]*)`", readme)
    blocks.append(benchmark + "\n")  # the README's next step after the walk-through
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "DAGSTER_", "MLFLOW_"))}
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(blocks)],
        cwd=tmp_path,
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("accepted     90") == 2 and "quarantined  0" in out.stdout
    assert "quarantined  1" not in out.stdout
    assert re.search(r"version\s+support-router-\d{8}-\d{4}", out.stdout)
    assert re.search(r"version\s+review-scorer-\d{8}-\d{4}", out.stdout)
    for name in ("adapter_model.safetensors", "head_config.json", "training_metadata.json", "loss_curve.png"):
        assert name in out.stdout.split()
    # the records without an annotator trained (--annotator); the router was judged on its own test file
    (results,) = (tmp_path / ".pulse-mine" / "artifacts" / "adapters" / "support-router").glob("*/eval/results.json")
    sets = json.loads(results.read_text())["sets"]
    assert [(s["name"], s["examples"]) for s in sets] == [("test", 30)]
    (manifest,) = (tmp_path / ".pulse-mine" / "artifacts" / "datasets" / "support-router").glob("*/manifest.json")
    counts = json.loads(manifest.read_text())["counts"]
    assert counts["test"] == 0 and counts["train"] + counts["val"] == 90
    assert "| support | floor: frozen encoder + logistic regression" in out.stdout
    assert "| support | recipe (publishes: " in out.stdout


def test_the_readmes_own_dataset_section_is_the_tested_walk_through():
    readme = (PROJECT / "README.md").read_text()
    section = readme[readme.index("## Bring your own intent dataset\n") :]
    section = section[: section.index("\n## ")]
    walk_through = _section("Add your own family")
    (commands,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    for line in commands.strip().splitlines():
        assert line in walk_through, line
    (family,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    for line in family.strip().splitlines()[1:]:
        assert line.split("#")[0].rstrip() in walk_through, line
    assert "benchmarks/intent_quality.py --train support.csv --test support-test.csv" in section
