"""`pulse backfill`: a real Dagster backfill of the families' annotations partitions, recorded in the
instance at DAGSTER_HOME (the UI's Overview > Backfills) and, with no daemon running, executed by
the command itself; typed as the README has it, with only `.venv/bin/pulse` (no `dagster` on PATH,
no DAGSTER_HOME set). A bad family or day is one line and exit status 1."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from pulse_pipeline.cli import app
from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.core.test_store_data_fixes import intent, lines

PULSE = Path(sys.executable).parent / "pulse"
DAY = "2026-12-01"
KEY = dg.AssetKey(["intent-router", "annotations"])
runner = CliRunner()


def _pulse(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`pulse ARGS` as a new user types it: a bare PATH, PULSE_HOME only, from another folder."""
    clean = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "PULSE_HOME": str(home)}
    clean |= {"PULSE_CONFIG": str(PROJECT / "pulse.yaml"), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([str(PULSE), *args], capture_output=True, text=True, env=clean, cwd=home.parent)


def _instance(home: Path) -> dg.DagsterInstance:
    """The instance `pulse` made at its default DAGSTER_HOME, $PULSE_HOME/dagster."""
    os.environ["DAGSTER_HOME"] = str(home / "dagster")  # its dagster.yaml reads it; the test's env
    return dg.DagsterInstance.from_config(str(home / "dagster"))


def _backfills(home: Path) -> list:
    with _instance(home) as instance:
        return instance.get_backfills()


@pytest.mark.slow  # four `pulse` processes: ~12 s on two cores
def test_a_backfill_of_an_ingested_day_is_recorded_executed_and_materializes_the_partition(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", "")  # restored after the test; `_instance` sets it
    home = tmp_path / "fresh-home"
    day_file = tmp_path / "day.jsonl"
    day_file.write_bytes(b"\n".join(lines([intent(i, DAY, "balance") for i in range(6)])) + b"\n")
    ingested = _pulse(home, "ingest", str(day_file), "--json")
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["accepted"] == 6

    done = _pulse(home, "backfill", "--family", "intent-router", "--day", DAY, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["status"], report["executed_by"]) == ("COMPLETED_SUCCESS", "this command")
    assert report["assets"] == ["intent-router/annotations"] and report["partitions"] == [DAY]
    assert [(r["partition"], r["status"]) for r in report["runs"]] == [(DAY, "SUCCESS")]

    with _instance(home) as instance:
        backfill = instance.get_backfill(report["backfill_id"])
        assert backfill is not None and backfill.status.value == "COMPLETED_SUCCESS"
        assert backfill.asset_selection == [KEY] and backfill.is_asset_backfill
        assert instance.get_materialized_partitions(KEY) == {DAY}
        event = instance.get_latest_materialization_event(KEY)
        assert event.asset_materialization.metadata["annotations"].value == 6
        (run,) = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
        assert run.run_id == report["runs"][0]["run_id"] and run.tags["dagster/partition"] == DAY

    text = _pulse(home, "backfill", "--family", "intent-router", "--from", "2026-11-30", "--to", DAY)
    assert text.returncode == 0, text.stderr
    first, see = text.stdout.splitlines()
    backfill_id = first.split()[1].rstrip(":")
    assert first == (
        f"backfill {backfill_id}: intent-router/annotations, 2 partitions (2026-11-30 to {DAY}): "
        "completed success, 2 runs succeeded"
    )
    assert see == "see it in the Dagster UI: `make ui`, then Overview > Backfills"
    assert "next: `pulse snapshot --family intent-router`" in text.stderr and "Warning" not in text.stderr
    assert len(_backfills(home)) == 2

    broken = _pulse(
        home, "backfill", "-f", "intent-router", "--day", DAY,
        PULSE_DATABASE_URL="postgresql+psycopg2://u:pw-7Qx@127.0.0.1:1/db",
    )  # fmt: skip
    assert broken.returncode == 1 and broken.stdout == ""
    (line,) = broken.stderr.splitlines()
    assert line.startswith("pulse: backfill ") and f"of {DAY} failed: run " in line
    assert "setting up its resources: cannot connect to the annotation store" in line
    assert "pw-7Qx" not in line
    assert _backfills(home)[0].status.value == "COMPLETED_FAILED"  # newest first


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-f", "weather-bot", "--day", DAY], "pulse: unknown family 'weather-bot' (declared: "),
        (
            ["-f", "intent-router", "--day", "2025-06-01"],
            "pulse: 2025-06-01 is before the first annotation partition, 2026-11-21 "
            "(annotations_start_date in pulse.yaml)",
        ),
        (["-f", "intent-router", "--day", "2999-01-01"], "pulse: 2999-01-01 is not an annotation partition yet"),
        (["-f", "intent-router", "--from", "2026-12-02", "--to", DAY], "pulse: --to 2026-12-01 is before --from"),
        (["-f", "intent-router", "--from", DAY], "pulse: give --day DAY, or --from DAY and --to DAY"),
        (["-f", "intent-router", "--day", DAY, "--to", DAY], "pulse: give --day DAY, or --from DAY and --to DAY"),
        (["-f", "intent-router", "--day", "01/12/2026"], "pulse: --day '01/12/2026' is not a day (YYYY-MM-DD)"),
    ],
    ids=["unknown family", "before the partitions", "after today", "range reversed", "no end", "both", "not a day"],
)
def test_a_bad_family_or_day_is_one_line_and_nothing_is_launched(pulse_env, args, says):
    result = runner.invoke(app, ["backfill", *args])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(says)
    assert not (pulse_env / "dagster").exists() or _backfills(pulse_env) == []


def test_with_a_daemon_running_the_backfill_is_left_to_it(pulse_env):
    from dagster._daemon.types import DaemonHeartbeat

    from pulse_pipeline.cli.runs import instance

    with instance() as dagster:  # a live dagster-daemon's backfill loop, as its heartbeat shows it
        dagster.add_daemon_heartbeat(DaemonHeartbeat(time.time(), "BACKFILL", None, None))
    result = runner.invoke(app, ["backfill", "-f", "intent-router", "--day", DAY])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.endswith(": requested; the running dagster-daemon executes it")
    (backfill,) = _backfills(pulse_env)
    assert backfill.status.value == "REQUESTED" and f"backfill {backfill.backfill_id}:" in first
    with _instance(pulse_env) as dagster:
        assert dagster.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id})) == []
