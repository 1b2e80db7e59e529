"""Importing a labelled dataset: records without annotators are captures waiting for review, and
the snapshot says so in one line; `pulse ingest --annotator` makes them human labels."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pulse_pipeline.cli import app
from pulse_pipeline.core.families import load_config
from pulse_pipeline_tests.conftest import PROJECT

runner = CliRunner()
LABELS = load_config(PROJECT / "pulse.yaml").family("intent-router").labels[:3]


def _dataset(path):
    """60 intent labels in the shape a public dataset comes in: text and label, nothing else."""
    rows = [
        {"kind": "intent_label", "family": "intent-router", "text": f"utterance {n} about {label}",
         "label": label, "created_at": "2026-11-30T12:00:00Z"}
        for label in LABELS for n in range(20)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_labels_without_annotators_say_why_nothing_trains_and_annotator_makes_them_trainable(tmp_path):
    data = _dataset(tmp_path / "labelled.jsonl")
    assert runner.invoke(app, ["ingest", str(data)]).exit_code == 0

    stopped = runner.invoke(app, ["snapshot", "--family", "intent-router"])
    assert stopped.exit_code == 1 and stopped.stderr.count("\n") == 1, stopped.output
    assert (
        "intent-router: no trainable examples: 60 of 60 intent_label records have no annotator, so they "
        "wait in the review queue as captures (60 needs_review)"
    ) in stopped.stderr
    assert "`pulse ingest FILE --annotator NAME`" in stopped.stderr

    signed = runner.invoke(app, ["ingest", str(data), "--annotator", "clinc-crowd", "--json"])
    assert signed.exit_code == 0 and json.loads(signed.stdout)["accepted"] == 60, signed.output
    built = runner.invoke(app, ["snapshot", "--family", "intent-router", "--json"])
    assert built.exit_code == 0, built.output
    snapshot = json.loads(built.stdout)
    assert snapshot["total"] == 60 and min(snapshot["splits"].values()) > 0


def test_an_empty_annotator_is_refused(tmp_path):
    out = runner.invoke(app, ["ingest", str(_dataset(tmp_path / "d.jsonl")), "--annotator", " "])
    assert out.exit_code == 1 and "--annotator: give a name" in out.stderr


def test_a_csv_of_text_and_label_imports_with_family_and_annotator(tmp_path):
    path = tmp_path / "labelled.csv"
    path.write_text("text,label\n" + "".join(f"utterance {n} about {lab},{lab}\n" for lab in LABELS for n in range(20)))
    missing = runner.invoke(app, ["ingest", str(path)])
    assert missing.exit_code == 1 and "no family column: give the family" in missing.stderr
    out = runner.invoke(app, ["ingest", str(path), "--family", "intent-router", "--annotator", "crowd", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["accepted"] == 60, out.output
    built = runner.invoke(app, ["snapshot", "--family", "intent-router", "--json"])
    assert built.exit_code == 0 and json.loads(built.stdout)["total"] == 60, built.output
