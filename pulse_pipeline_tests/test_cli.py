import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from pulse_pipeline.cli import app
from pulse_pipeline_tests.conftest import PROJECT
from pulse_pipeline_tests.core.test_ingestion import HOSTILE

runner = CliRunner()


@pytest.fixture
def hostile(tmp_path):
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(HOSTILE) + b"\n")
    return path


def test_ingest_prints_the_four_counts(hostile):
    result = runner.invoke(app, ["ingest", str(hostile)])
    assert result.exit_code == 0, result.output
    counts = dict(line.split() for line in result.stdout.splitlines())
    assert set(counts) == {"accepted", "duplicates", "quarantined", "lines"}
    assert int(counts["accepted"]) + int(counts["duplicates"]) + int(counts["quarantined"]) == int(
        counts["lines"]
    )
    assert "line 3: not valid JSON" in result.stderr


def test_ingest_json_is_one_object_and_reingest_is_a_no_op(hostile, database_url, monkeypatch):
    monkeypatch.setenv("PULSE_DATABASE_URL", database_url)
    first = runner.invoke(app, ["ingest", str(hostile), "--json"])
    second = runner.invoke(app, ["ingest", str(hostile), "--json"])
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert first.exit_code == second.exit_code == 0
    assert a["accepted"] == 4 and b["accepted"] == 0 and b["duplicates"] == a["accepted"] + a["duplicates"]
    assert a["lines"] == a["accepted"] + a["duplicates"] + a["quarantined"]
    assert len(a["quarantine_reasons"]) == a["quarantined"]


def test_unreadable_file_exits_1_with_one_line(tmp_path):
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "nope.jsonl: cannot be read" in result.stderr


def test_bad_config_exits_1_naming_family_and_field(tmp_path, monkeypatch, hostile):
    bad = tmp_path / "pulse.yaml"
    bad.write_text(
        "families:\n  x-y:\n    task: chat_sft\n    annotation_kinds: [qa_pair]\n    base_model: tiny\n    lora_rank: 8\n"
    )
    monkeypatch.setenv("PULSE_CONFIG", str(bad))
    result = runner.invoke(app, ["ingest", str(hostile)])
    assert result.exit_code == 1
    assert "family 'x-y', field 'lora_rank': unknown key" in result.stderr


def test_unreachable_database_exits_1(hostile, monkeypatch):
    monkeypatch.setenv("PULSE_DATABASE_URL", "postgresql+psycopg2://u:secret@127.0.0.1:1/db")
    result = runner.invoke(app, ["ingest", str(hostile)])
    assert result.exit_code == 1 and "cannot connect" in result.stderr and "secret" not in result.stderr


def test_db_upgrade_and_quarantine_listing(hostile):
    first = runner.invoke(app, ["db", "upgrade", "--json"])
    assert json.loads(first.stdout) == {"from_revision": None, "revision": "0007"}
    again = runner.invoke(app, ["db", "upgrade"])
    assert again.stdout.strip() == "annotation store at revision 0007"
    runner.invoke(app, ["ingest", str(hostile)])
    listing = json.loads(runner.invoke(app, ["quarantine", "--json", "--limit", "3"]).stdout)["quarantined"]
    assert len(listing) == 3 and all(item["reason"].startswith("line ") for item in listing)


def test_installed_entry_point_runs(hostile, pulse_env):
    exe = PROJECT / ".venv" / "bin" / "pulse"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pulse_pipeline.cli"]
    out = subprocess.run([*cmd, "ingest", str(hostile), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accepted"] == 4


@pytest.fixture
def demo_loaded(tmp_path):
    from pulse_pipeline.demo.data import DemoScale, write_demo_file

    demo = write_demo_file(
        tmp_path / "demo.jsonl", anchor=dt.date(2026, 6, 30), scale=DemoScale().scaled(0.3)
    )
    assert runner.invoke(app, ["ingest", str(demo.path)]).exit_code == 0
    return demo


def test_snapshot_prints_version_and_reuses_it(demo_loaded):
    first = runner.invoke(app, ["snapshot", "--family", "intent-router", "--json"])
    assert first.exit_code == 0, first.output
    a = json.loads(first.stdout)
    assert set(a["splits"]) == {"train", "val", "test"} and sum(a["splits"].values()) == a["total"]
    b = json.loads(runner.invoke(app, ["snapshot", "--family", "intent-router", "--json"]).stdout)
    assert b["dataset_version"] == a["dataset_version"] and b["created_at"] == a["created_at"]  # reused
    plain = runner.invoke(app, ["snapshot", "--family", "intent-router"]).stdout.splitlines()
    assert plain[0] == f"dataset_version {a['dataset_version']}"


def test_export_from_the_store_then_from_the_snapshot(demo_loaded):
    before = runner.invoke(app, ["export", "--family", "article-scorer", "--limit", "3"])
    assert before.exit_code == 0, before.output
    rows = [json.loads(line) for line in before.stdout.splitlines()]
    assert (
        len(rows) == 3
        and "split" not in rows[0]
        and len(rows[0]["labels"]) == len(rows[0]["dimension_names"])
    )
    runner.invoke(app, ["snapshot", "--family", "article-scorer"])
    everything = [
        json.loads(x)
        for x in runner.invoke(app, ["export", "--family", "article-scorer"]).stdout.splitlines()
    ]
    page = json.loads(
        runner.invoke(
            app, ["export", "--family", "article-scorer", "--offset", "2", "--limit", "2", "--format", "json"]
        ).stdout
    )
    assert page == everything[2:4]
    assert {r["split"] for r in everything} == {"train", "val", "test"}
    assert runner.invoke(app, ["export", "--family", "article-scorer", "--format", "csv"]).exit_code == 1


def test_status_counts_new_trainable_annotations_since_the_last_training(demo_loaded, tmp_path):
    st = json.loads(runner.invoke(app, ["status", "--family", "access-qa", "--json"]).stdout)
    assert st["new_annotations_count"] > 0 and st["min_annotations_required"] == 50
    assert {"is_training", "lock_acquired_at", "current_version", "available_versions"} <= set(st)
    runner.invoke(app, ["snapshot", "--family", "access-qa"])  # a snapshot alone trains nothing
    snapshotted = json.loads(runner.invoke(app, ["status", "--family", "access-qa", "--json"]).stdout)
    assert snapshotted["new_annotations_count"] == st["new_annotations_count"]
    new = tmp_path / "new.jsonl"
    new.write_text(
        '{"kind":"qa_pair","family":"access-qa","question":"Quota?","answer":"Yes","annotator":"a"}\n'
        '{"kind":"feedback","family":"access-qa","query":"Q","response":"R","rating":4}\n'
    )
    runner.invoke(app, ["ingest", str(new)])
    after = json.loads(runner.invoke(app, ["status", "--json"]).stdout)["families"]["access-qa"]
    assert after["new_annotations_count"] == st["new_annotations_count"] + 2


def test_review_export_and_import_through_label_studio_files(demo_loaded, tmp_path):
    tasks_file, config_file = tmp_path / "tasks.json", tmp_path / "config.xml"
    out = runner.invoke(
        app,
        [
            "review",
            "export",
            "--family",
            "intent-router",
            "--out",
            str(tasks_file),
            "--label-config",
            str(config_file),
        ],
    )
    assert out.exit_code == 0, out.output
    tasks = json.loads(tasks_file.read_text())
    assert tasks and "<Choices" in config_file.read_text()
    for task in tasks[:3]:
        task["annotations"] = [
            {"completed_by": 1, "result": [{"from_name": "intent", "value": {"choices": ["balance"]}}]}
        ]
    tasks_file.write_text(json.dumps(tasks))
    done = json.loads(
        runner.invoke(
            app, ["review", "import", str(tasks_file), "--family", "intent-router", "--json"]
        ).stdout
    )
    assert done["accepted"] == 3 and done["unanswered_tasks"] == len(tasks) - 3
    again = runner.invoke(app, ["review", "export", "--family", "intent-router"])
    assert len(json.loads(again.stdout)) == len(tasks) - 3  # the reviewed ones left the queue
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    failed = runner.invoke(app, ["review", "import", str(bad), "--family", "intent-router"])
    assert failed.exit_code == 1 and "JSON list of tasks" in failed.stderr


def test_train_runs_the_retrain_job_then_needs_new_annotations(demo_loaded, pulse_env):
    args = ["train", "--family", "access-qa", "--epochs", "1", "--max-samples", "16"]
    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["version"].startswith("access-qa-") and report["samples_used"] == 16
    assert report["new_annotations_count"] >= 50
    # A tiny model after one epoch misses the QA gate; the answer says why and where the report is.
    assert report["decision"] == "FAIL" and any(r.startswith("answer_accuracy") for r in report["reasons"])
    assert report["report"].endswith(f"{report['version']}/eval/report.html")
    assert Path(report["report"]).is_file()
    assert (
        json.loads(
            (
                pulse_env / "artifacts/adapters/access-qa" / report["version"] / "training_metadata.json"
            ).read_text()
        )["created_by"]
        == "cli"
    )
    assert (
        pulse_env / "artifacts" / "adapters" / "access-qa" / report["version"] / "adapter_model.safetensors"
    ).is_file()
    st = json.loads(runner.invoke(app, ["status", "--family", "access-qa", "--json"]).stdout)
    assert st["available_versions"] == [report["version"]] and st["new_annotations_count"] == 0
    with dg.DagsterInstance.from_config(str(pulse_env / "dagster")) as instance:
        (run,) = instance.get_runs()
        # The blocking promotion_gate check failed: the run stops there, as it will before promotion.
        assert run.job_name == "retrain_access_qa" and run.status == dg.DagsterRunStatus.FAILURE

    judged = runner.invoke(
        app,
        [
            "evaluate",
            "--family",
            "access-qa",
            "--eval-file",
            str(PROJECT / "golden" / "access-qa.jsonl"),
            "--json",
        ],
    )
    assert judged.exit_code == 0, judged.output
    out = json.loads(judged.stdout)
    assert out["version"] == report["version"] and out["baseline"] == "base_model"
    assert set(out["metrics"]) == {"test", "golden", "access-qa"}  # the golden set, then the extra file
    assert out["metrics"]["golden"]["citation_presence"] == out["metrics"]["access-qa"]["citation_presence"]
    assert out["decision"] == "FAIL" and out["report"] == report["report"]
    bad = runner.invoke(app, ["evaluate", "--family", "access-qa", "--version", "../../etc"])
    assert bad.exit_code == 1 and "is not a version name of family access-qa" in bad.stderr

    again = runner.invoke(app, args)
    assert again.exit_code == 4
    assert again.stderr.strip() == (
        "pulse: access-qa: 0 new annotations of the 50 required to train; --force trains anyway"
    )
    forced = runner.invoke(app, [*args, "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    second = json.loads(forced.stdout)["version"]
    assert second != report["version"]  # --force trains again: a new version
    st = json.loads(runner.invoke(app, ["status", "--family", "access-qa", "--json"]).stdout)
    assert st["available_versions"] == [report["version"], second]


def test_training_entry_point_without_dagster(demo_loaded, pulse_env):
    cmd = [sys.executable, "-m", "pulse_pipeline.core.training", "--family", "call-analysis"]
    missing = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        "pulse training: call-analysis has no dataset snapshot yet: run `pulse snapshot --family call-analysis` first"
    )
    assert runner.invoke(app, ["snapshot", "--family", "call-analysis"]).exit_code == 0
    out = subprocess.run(
        [*cmd, "--epochs", "1", "--max-samples", "8", "--no-tracking", "--json"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["version"].startswith("call-analysis-") and report["mlflow_run_id"] is None
    assert "step 1/1 epoch 1/1" in out.stderr  # progress lines when stderr is not a terminal


def test_the_cli_starts_without_ml_libraries():
    """`pulse status` and friends stay quick: torch and MLflow load only for the commands that train."""
    code = (
        "import sys, pulse_pipeline.cli; print(','.join(m for m in ('torch', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT
    )
    assert out.stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_entry_point_without_dagster_holds_the_same_lock(demo_loaded, pulse_env):
    """`python -m pulse_pipeline.core.training` takes the family's lock like `pulse train`: each
    refuses while the other trains, and a dead holder's lock (a heartbeat 5 minutes old) is taken over."""
    from pulse_pipeline.core.store import LockHolder, Store
    from pulse_pipeline.settings import get_settings

    assert runner.invoke(app, ["snapshot", "--family", "call-analysis"]).exit_code == 0
    cmd = [sys.executable, "-m", "pulse_pipeline.core.training", "--family", "call-analysis", "--no-tracking"]
    slow_one = subprocess.Popen(
        [*cmd, "--epochs", "2", "--json"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = get_settings().database_url
    with Store(url) as store:
        deadline = time.monotonic() + 120
        while store.locks.get("call-analysis") is None:  # the first training holds the lock
            assert slow_one.poll() is None and time.monotonic() < deadline, slow_one.stderr.read()[-2000:]
            time.sleep(0.2)
        held = store.locks.get("call-analysis")
        assert held.holder.pid == slow_one.pid and held.holder.run_id is None  # no Dagster run
        st = json.loads(runner.invoke(app, ["status", "--family", "call-analysis", "--json"]).stdout)
        assert st["is_training"] is True and st["lock_acquired_at"] == held.acquired_at.isoformat()
        second = subprocess.run(
            [*cmd, "--force", "--epochs", "1"], cwd=PROJECT, capture_output=True, text=True
        )
        refused = runner.invoke(app, ["train", "--family", "call-analysis", "--force"])
    since = f"{held.acquired_at:%Y-%m-%d %H:%M:%S} UTC"
    assert second.returncode == 3
    assert (
        f"call-analysis: training already in progress since {since} (cli (pid {slow_one.pid} on "
        in second.stderr
    )
    assert refused.exit_code == 3 and f"training already in progress since {since}" in refused.stderr
    stdout, stderr = slow_one.communicate(timeout=300)
    assert slow_one.returncode == 0, stderr[-2000:]

    with Store(url) as store:  # a holder on another machine whose heartbeat stopped 5 minutes ago
        assert store.locks.get("call-analysis") is None  # released at the end
        gone = LockHolder("cli:bob", None, "another-host", 4242)
        assert store.locks.insert("call-analysis", gone, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    st = json.loads(runner.invoke(app, ["status", "--family", "call-analysis", "--json"]).stdout)
    assert st["is_training"] is False and st["lock_acquired_at"] is None  # stale: not training
    out = subprocess.run(
        [*cmd, "--force", "--epochs", "1", "--max-samples", "8"], cwd=PROJECT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        "warning: took over call-analysis: a dead training's lock (cli:bob (pid 4242 on another-host)"
        in out.stderr
    )
    assert re.search(r"no heartbeat for 30\d s \(stale after 120 s\)", out.stderr), out.stderr


def test_promote_rollback_cleanup_and_status_through_the_jobs(pulse_env, tmp_path):
    from pulse_pipeline.core.artifacts import LocalArtifactStore
    from pulse_pipeline.core.registry import Registry
    from pulse_pipeline.core.store import Store
    from pulse_pipeline.settings import get_settings
    from pulse_pipeline_tests.core.registry.conftest import FAMILY, trained

    with Store(get_settings().database_url) as store:
        registry = Registry(store, LocalArtifactStore(pulse_env / "artifacts"))
        a, b, c = (trained(registry, tmp_path, m, "DEPLOY") for m in range(3))
        bad = trained(registry, tmp_path, 3, "FAIL")
        review = trained(registry, tmp_path, 4, "REVIEW")

    first = runner.invoke(app, ["promote", "--family", FAMILY, "--version", a, "--json"])
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert (out["version"], out["previous_version"], out["serving"]) == (a, None, "not configured")
    second = json.loads(runner.invoke(app, ["promote", "--family", FAMILY, "--version", b, "--json"]).stdout)
    assert (second["version"], second["previous_version"], second["forced"]) == (b, a, False)
    refused = runner.invoke(app, ["promote", "--family", FAMILY, "--version", bad])
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert "judged FAIL" in refused.stderr and "--force with --reason" in refused.stderr
    no_reason = runner.invoke(app, ["promote", "--family", FAMILY, "--version", review, "--force"])
    assert no_reason.exit_code == 1 and "--force needs a --reason" in no_reason.stderr
    back = json.loads(runner.invoke(app, ["promote", "--family", FAMILY, "--previous", "--json"]).stdout)
    assert (back["version"], back["previous_version"], back["action"]) == (a, b, "rollback")
    evil = runner.invoke(app, ["promote", "--family", FAMILY, "--version", "../../etc"])
    assert evil.exit_code == 1 and "not a version name" in evil.stderr

    st = json.loads(runner.invoke(app, ["status", "--family", FAMILY, "--json"]).stdout)
    assert set(st) >= {
        "is_training", "lock_acquired_at", "current_version", "available_versions",
        "new_annotations_count", "min_annotations_required", "unrecorded_versions",
    }  # fmt: skip
    assert st["current_version"]["version"] == a and st["available_versions"] == [a, b, c, bad, review]
    listed = json.loads(runner.invoke(app, ["registry", "versions", "--family", FAMILY, "--json"]).stdout)
    states = {row["version"]: (row["state"], row["decision"]) for row in listed["versions"]}
    assert states == {
        a: ("production", "DEPLOY"), b: ("retired", "DEPLOY"), c: ("evaluated", "DEPLOY"),
        bad: ("evaluated", "FAIL"), review: ("evaluated", "REVIEW"),
    }  # fmt: skip

    gone = json.loads(runner.invoke(app, ["cleanup", "--family", FAMILY, "--keep", "1", "--json"]).stdout)
    assert gone == {"removed": [c, bad], "kept": [a, b, review]}  # production, previous, the newest
    forced = runner.invoke(
        app,
        [
            "promote",
            "--family",
            FAMILY,
            "--version",
            review,
            "--force",
            "--reason",
            "read the report",
            "--json",
        ],
    )
    assert forced.exit_code == 0 and json.loads(forced.stdout)["forced"] is True
    consistent = runner.invoke(app, ["registry", "reconcile", "--family", FAMILY])
    assert consistent.exit_code == 0 and "the registry is consistent" in consistent.stdout
    with dg.DagsterInstance.from_config(str(pulse_env / "dagster")) as instance:
        assert {r.job_name for r in instance.get_runs()} == {
            "promote_adapter", "cleanup_adapters", "reconcile_adapters",
        }  # fmt: skip


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql+psycopg2://u:pw-9Zk@127.0.0.1:99999/db", 'invalid port number: "99999"'),
        ("postgresql+psycopg2://u:pw-9Zk@127.0.0.1:12x/db", "is not a database URL"),
        ("host=127.0.0.1 port=1 dbname=x user=u password=pw-9Zk", "cannot connect to the annotation store"),
        (
            "postgresql+psycopg2://u@127.0.0.1:1/db?sslpassword=pw-9Zk",
            "cannot connect to the annotation store",
        ),
    ],
    ids=["port out of range", "port not a number", "libpq string", "secret query parameter"],
)
def test_a_bad_database_url_is_one_masked_line_without_a_class_path(monkeypatch, url, says):
    monkeypatch.setenv("PULSE_DATABASE_URL", url)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("pulse: ") and says in result.stderr
    assert (
        "pw-9Zk" not in result.stderr and "Error:" not in result.stderr and "Traceback" not in result.stderr
    )
    debug = runner.invoke(app, ["--debug", "status"])
    assert "Traceback (most recent call last)" in debug.stderr and "pw-9Zk" not in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1] == result.stderr.rstrip()  # the same line, last


def test_a_version_name_with_a_trailing_newline_is_refused(pulse_env):
    result = runner.invoke(
        app, ["promote", "--family", "intent-router", "--version", "intent-router-20261122-0930\n"]
    )
    assert result.exit_code == 1 and "is not a version name of family intent-router" in result.stderr


def test_two_commands_at_once_on_a_new_home_create_one_dagster_storage(pulse_env):
    """Two `pulse` processes that both run a job first on a new DAGSTER_HOME: both succeed."""
    exe = PROJECT / ".venv" / "bin" / "pulse"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pulse_pipeline.cli"]
    procs = [
        subprocess.Popen([*cmd, "cleanup", "--family", "intent-router", "--keep", "5", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outs]
    assert all(json.loads(out) == {"removed": [], "kept": []} for out, _ in outs)
