"""`pulse calibrate` and `pulse label` end to end with the local oracle (SmolLM2-135M in process):
a deliberately bad prompt FAILs calibration, a good one PASSes calibration and validation, labelling
is refused before and works after, and a labelling killed with SIGKILL resumes without asking again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pulse_pipeline.cli import app
from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.core.oracle.climate import BAD_PROMPT, FAMILY, GOOD_PROMPT, write_corpus

runner = CliRunner()
pytestmark = pytest.mark.slow


@pytest.fixture
def climate(pulse_env, tmp_path, monkeypatch, smollm2):
    """pulse.yaml with the `climate` family; the session's SmolLM2 checkpoint in this PULSE_HOME."""
    family = json.loads(json.dumps(FAMILY)) | {}
    family["oracle"]["prompt"] = "climate-prompt.txt"
    (tmp_path / "pulse.yaml").write_text(yaml.safe_dump({"families": {"climate": family}}))
    (tmp_path / "climate-prompt.txt").write_text(GOOD_PROMPT)
    monkeypatch.setenv("PULSE_CONFIG", str(tmp_path / "pulse.yaml"))
    (pulse_env / "models").mkdir(parents=True)
    (pulse_env / "models" / "smollm2-135m").symlink_to(smollm2)
    return tmp_path


def cli(*args: str):
    out = runner.invoke(app, list(args))
    return out


def test_a_bad_prompt_fails_a_good_one_passes_and_only_then_labelling_starts(climate):
    corpus = write_corpus(climate / "corpus.jsonl", n_on=16, n_off=16, n_edge=4)
    (climate / "climate-prompt.txt").write_text(BAD_PROMPT)
    refused = cli("label", "--family", "climate", "--input", str(corpus))
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1, refused.output
    assert (
        "has not passed calibration and validation (calibration: not run, validation: not run)"
        in refused.stderr
    )
    assert f"run `pulse calibrate --family climate --input {corpus}`" in refused.stderr

    sample = ["--n-positive", "8", "--n-negative", "8", "--n-edge", "2"]
    bad = cli("calibrate", "--family", "climate", "--input", str(corpus), *sample, "--json")
    assert bad.exit_code == 0, bad.output
    bad = json.loads(bad.stdout)
    assert bad["decision"] == "FAIL" and bad["metrics"]["off_topic_errors"] > 1, bad["reasons"]
    assert any("off-topic items were rated on topic" in r for r in bad["reasons"])

    (climate / "climate-prompt.txt").write_text(GOOD_PROMPT)  # a new prompt version
    good = cli("calibrate", "--family", "climate", "--input", str(corpus), *sample)
    assert good.exit_code == 0, good.output
    assert good.stdout.splitlines()[0].endswith("calibration: PASS"), good.stdout
    assert f"next: pulse calibrate --family climate --input {corpus} --validate --seed 1" in good.stdout
    validated = cli(
        "calibrate", "--family", "climate", "--input", str(corpus), *sample, "--validate", "--seed", "1"
    )
    assert validated.exit_code == 0 and "validation: PASS" in validated.stdout, validated.output

    labelled = cli("label", "--family", "climate", "--input", str(corpus), "--json")
    assert labelled.exit_code == 0, labelled.output
    out = json.loads(labelled.stdout)
    assert out["labelled"] + out["quarantined"] == 36 and out["calibration"] == out["validation"] == "PASS"
    status = cli("status", "--family", "climate", "--json")
    assert json.loads(status.stdout)["new_annotations_count"] == out["labelled"]


def _journalled(db) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("select count(*) from oracle_labels").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_a_labelling_killed_with_sigkill_resumes_without_asking_again(climate, pulse_env):
    corpus = write_corpus(climate / "corpus.jsonl", n_on=15, n_off=15, n_edge=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    args = [
        sys.executable,
        "-m",
        "pulse_pipeline.cli",
        "label",
        "--family",
        "climate",
        "--input",
        str(corpus),
    ]
    args += ["--override-calibration", "testing the resume"]
    proc = subprocess.Popen(args, env=env, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = pulse_env / "pulse.db"
    deadline = time.monotonic() + 240
    while _journalled(db) < 5:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the labelling journalled nothing in 240 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _journalled(db)
    assert 5 <= done < 30

    again = subprocess.run(
        [*args, "--json"], env=env, cwd=PROJECT, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["already_done"] == done and out["labelled"] + out["quarantined"] == 30 - done
    assert out["override"] == "testing the resume"
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from oracle_labels").fetchone()[0] == 30
        stored = conn.execute(
            "select count(*) from annotations where json_extract(payload, '$.source') = 'oracle'"
        )
        assert (
            stored.fetchone()[0]
            == 30
            - conn.execute("select count(*) from oracle_labels where status = 'quarantined'").fetchone()[0]
        )


def test_generate_qa_with_the_local_oracle_sends_cited_pairs_to_the_review_queue(
    pulse_env, tmp_path, monkeypatch, smollm2
):
    """One of the example's documents (two passages; docs/oracle.md's test runs both) through
    `pulse generate-qa` and `pulse review export`: whatever the 135M model writes, every stored
    pair cites a passage of the registry and waits for review, and the rest is accounted for
    (rejected or unparsed, in the quarantine)."""
    family = {
        "task": "chat_sft",
        "annotation_kinds": ["qa_pair", "feedback"],
        "base_model": "tiny",
        "prompts": {"system": "You answer questions about the Delta cluster.", "qa_pair": "{question}"},
        "oracle": {},
    }
    (tmp_path / "pulse.yaml").write_text(yaml.safe_dump({"families": {"cluster-help": family}}))
    monkeypatch.setenv("PULSE_CONFIG", str(tmp_path / "pulse.yaml"))
    (pulse_env / "models").mkdir(parents=True)
    (pulse_env / "models" / "smollm2-135m").symlink_to(smollm2)
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(PROJECT / "examples" / "oracle" / "docs" / "storage.md", docs)

    out = cli("generate-qa", "--family", "cluster-help", "--docs", str(docs), "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["passages"] == 2 and result["failed"] == 0 and result["remaining"] == 0
    registry = json.loads(Path(result["sources"]).read_text())
    with sqlite3.connect(pulse_env / "pulse.db") as db:
        rows = [json.loads(p) for (p,) in db.execute("select payload from annotations")]
        quarantined = db.execute("select count(*) from quarantine").fetchone()[0]
    assert len(rows) == result["generated"]
    assert quarantined >= result["rejected"] + result["unparsed"]
    for p in rows:
        [source] = p["sources"]
        assert source in registry and p["answer"].endswith(f"<<SRC:{source}>>") and p["source"] == "generated"

    tasks_file = tmp_path / "tasks.json"
    exported = cli(
        "review",
        "export",
        "--family",
        "cluster-help",
        "--out",
        str(tasks_file),
        "--label-config",
        str(tmp_path / "config.xml"),
    )
    assert exported.exit_code == 0, exported.output
    tasks = json.loads(tasks_file.read_text())
    assert len(tasks) == result["generated"] and all(t["data"]["pulse_kind"] == "qa_pair" for t in tasks)
    assert '<Choice value="reject"/>' in (tmp_path / "config.xml").read_text()

    again = cli("generate-qa", "--family", "cluster-help", "--docs", str(docs), "--json")
    assert json.loads(again.stdout)["already_done"] == 2, again.output
