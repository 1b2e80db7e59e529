"""`pulse annotations invalidate`, `pulse ingest --replace-day` and `pulse sessions close`: counts
on stdout (one JSON object with --json), one clear line and exit status 1 on a bad argument."""

import datetime as dt
import json

from typer.testing import CliRunner

from pulse_pipeline.cli import app
from pulse_pipeline.core.annotations import parse_record
from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.snapshots import write_snapshot
from pulse_pipeline.core.store import Store
from pulse_pipeline.settings import get_settings
from pulse_pipeline_tests.core.test_review_sessions import segment
from pulse_pipeline_tests.core.test_store_data_fixes import intent, lines

runner = CliRunner()
DAY1, DAY2 = dt.date(2026, 6, 29), dt.date(2026, 6, 30)


def _file(path, records):
    path.write_bytes(b"\n".join(lines(records)) + b"\n")
    return path


def _json(args):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _exported_ids():
    result = runner.invoke(app, ["export", "--family", "intent-router"])
    assert result.exit_code == 0, result.output
    return {json.loads(line)["id"] for line in result.stdout.splitlines()}


def _snapshot(config) -> str:
    """What `pulse snapshot` writes, without the Dagster run (kept fast)."""
    family = config.family("intent-router")
    with Store(get_settings().database_url) as store:
        table, stats = build_examples(store, family)
    return write_snapshot(get_settings().artifact_store(), family, table, stats).version


def test_invalidate_ids_or_a_whole_day_and_exports_and_status_follow(tmp_path, config):
    labels = ["balance", "greeting"]
    records = [intent(i, DAY1, labels[i % 2]) for i in range(4)] + [
        intent(i, DAY2, labels[i % 2]) for i in range(4, 10)
    ]
    assert _json(["ingest", str(_file(tmp_path / "a.jsonl", records))])["accepted"] == 10
    exported = _exported_ids()
    assert (
        len(exported) == 10 and _json(["status", "--family", "intent-router"])["new_annotations_count"] == 10
    )
    day2 = [parse_record(r, config).id for r in records[4:]]

    out = _json(["annotations", "invalidate", "-f", "intent-router", "--day", str(DAY2), "--ids", day2[0], day2[1], "--reason", "mislabeled"])  # fmt: skip
    assert (out["invalidated"], out["already_invalidated"], out["reason"]) == (2, 0, "mislabeled")
    assert _exported_ids() == exported - set(day2[:2])
    assert _json(["status", "--family", "intent-router"])["new_annotations_count"] == 8

    wrong = runner.invoke(
        app, ["annotations", "invalidate", "-f", "intent-router", "--day", str(DAY1), "--ids", day2[2]]
    )
    assert wrong.exit_code == 1 and wrong.stdout == ""
    assert (
        wrong.stderr == f"pulse: annotation '{day2[2]}' is not a intent-router annotation of {DAY1} (UTC)\n"
    )

    built = _snapshot(config)  # holds day2[2:], which the next command invalidates
    whole = runner.invoke(app, ["annotations", "invalidate", "-f", "intent-router", "--day", str(DAY2)])
    assert whole.exit_code == 0, whole.output
    assert whole.stdout == f"invalidated 4 intent-router annotations of {DAY2} (2 were invalidated already)\n"
    assert f"`pulse backfill --family intent-router --day {DAY2}`" in whole.stderr  # the next step
    assert _exported_ids() == exported - set(day2)  # from that snapshot, without what was fixed since
    assert _snapshot(config) != built

    bad_day = runner.invoke(app, ["annotations", "invalidate", "-f", "intent-router", "--day", "30/06/2026"])
    assert bad_day.exit_code == 1 and "--day '30/06/2026' is not a day (YYYY-MM-DD)" in bad_day.stderr


def test_ingest_replace_day_prints_the_five_counts_and_refuses_another_day(tmp_path):
    old = [intent(i, DAY2) for i in range(5)]
    _json(["ingest", str(_file(tmp_path / "old.jsonl", old))])
    fixed = _file(tmp_path / "fixed.jsonl", [*old[:3], intent(3, DAY2, label="greeting"), old[0]])
    result = runner.invoke(app, ["ingest", str(fixed), "--replace-day", str(DAY2)])
    assert result.exit_code == 0, result.output
    counts = dict(line.split() for line in result.stdout.splitlines())
    assert counts == {"accepted": "1", "restored": "3", "invalidated": "2", "duplicates": "1", "quarantined": "0", "lines": "5"}  # fmt: skip
    wrong = _file(tmp_path / "wrong.jsonl", [old[0], intent(9, DAY1)])
    refused = runner.invoke(app, ["ingest", str(wrong), "--replace-day", str(DAY2), "--json"])
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and f"line 2: created_at 2026-06-29T12:00:00+00:00 is not on the replaced day {DAY2}" in refused.stderr  # fmt: skip


def test_sessions_close_records_once_and_names_an_unknown_session(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_bytes(b"\n".join([segment(1, "dojo-1"), segment(2, "dojo-1")]) + b"\n")
    _json(["ingest", str(path)])
    closed = _json(["sessions", "close", "dojo-1", "--by", "lead"])
    assert {k: closed[k] for k in ("session_id", "family", "closed_by", "segment_reviews")} == {
        "session_id": "dojo-1", "family": "call-analysis", "closed_by": "lead", "segment_reviews": 2
    }  # fmt: skip
    again = runner.invoke(app, ["sessions", "close", "dojo-1"])
    assert again.exit_code == 1 and again.stderr.startswith("pulse: session 'dojo-1' was already closed at ")
    assert again.stderr.rstrip().endswith("by lead")
    unknown = runner.invoke(app, ["sessions", "close", "dojo-2"])
    assert unknown.exit_code == 1
    assert unknown.stderr == "pulse: no segment review carries session_id 'dojo-2': unknown session\n"
