"""The schedules on real ticks against a real store and a test instance: which families run,
which are skipped and why, the run limits on every request, and what each request selects is
valid for the job it targets (the retrain requests against the real `retrain` job)."""

import datetime as dt

import dagster as dg
import orjson
import pytest
import yaml

from pulse_pipeline.core.families import ScheduleConfig
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.store import Store
from pulse_pipeline.definitions import RETRAIN_JOB, annotation_partitions, build_definitions
from pulse_pipeline.defs.automation.daily_report import daily_report_asset
from pulse_pipeline.defs.automation.schedules import build_schedules, run_limit_tags, watch_keys
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment
from pulse_pipeline.demo.data import DIMENSIONS
from pulse_pipeline_tests.conftest import PROJECT

NIGHT = dt.datetime(2026, 7, 1, 2, 0, tzinfo=dt.UTC)


def _qa(n, start=0, day="2026-06-30"):
    return [{"kind": "qa_pair", "family": "access-qa", "question": f"How many cores on node {i}?",
             "answer": f"{i} cores.", "annotator": "reviewer", "created_at": f"{day}T12:00:00Z"}
            for i in range(start, start + n)]  # fmt: skip


def _scores(n):
    return [{"kind": "score_label", "family": "article-scorer", "text": f"Article {i} on policy.",
             "scores": dict.fromkeys(DIMENSIONS, 5.0), "annotator": "editor", "created_at": "2026-06-30T12:00:00Z"}
            for i in range(n)]  # fmt: skip


def _with_schedules(config, name, **flags):
    family = config.family(name)
    automation = family.automation.model_copy(update={"schedules": ScheduleConfig(**flags)})
    families = {**config.families, name: family.model_copy(update={"automation": automation})}
    return config.model_copy(update={"families": families})


@pytest.fixture
def env(tmp_path):
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    resources = {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
        "training": TrainingEnvironment(home=str(tmp_path / "home")),
    }

    def ingest(config, records):
        with Store(url) as store:
            ingest_lines(store, [orjson.dumps(r) for r in records], config, source="test")

    return resources, ingest


def _chains(defs, config):
    return {
        f.name: sorted(defs.resolve_job_def(f"retrain_{f.snake}").asset_layer.executable_asset_keys)
        for f in config.families.values()
    }


def _schedules(config, chains):
    return {s.name: s for s in build_schedules(config, chains, annotation_partitions(config))}


def _tick(schedule, instance, resources=None, when=NIGHT):
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, resources=resources
    ) as ctx:
        return schedule(ctx)


def test_nightly_runs_families_at_their_minimum_and_says_why_for_the_rest(config, env):
    resources, ingest = env
    config = _with_schedules(config, "call-analysis", nightly=False)
    defs = build_definitions(config)
    chains = _chains(defs, config)
    nightly = _schedules(config, chains)["nightly_retrain"]
    assert nightly.cron_schedule == "0 2 * * *" and nightly.execution_timezone == "UTC"
    assert nightly.job_name == RETRAIN_JOB and nightly.default_status == dg.DefaultScheduleStatus.STOPPED
    ingest(config, _qa(37) + _scores(10))
    with dg.instance_for_test() as instance:
        skip = _tick(nightly, instance, resources)
        assert isinstance(skip, dg.SkipReason)
        assert skip.skip_message == (
            "call-analysis: not in nightly_retrain (automation.schedules.nightly: false); "
            "intent-router: 0 of 200 new annotations; article-scorer: 10 of 50 new annotations; "
            "access-qa: 37 of 50 new annotations"
        )
        ingest(config, _qa(13, start=100))
        (request,) = _tick(nightly, instance, resources)
        assert request.run_key == "nightly:access-qa:0"
        assert request.asset_selection == chains["access-qa"]
        assert request.tags == {"pulse/family": "access-qa", "pulse/new_annotations": "50",
                                "dagster/max_runtime": "5400"}  # fmt: skip
        # the request is valid for the real `retrain` job: its subset is this family's chain
        subset = defs.resolve_job_def(RETRAIN_JOB).get_subset(asset_selection=set(request.asset_selection))
        assert sorted(subset.asset_layer.executable_asset_keys) == chains["access-qa"]

        # the sensor's retrain of access-qa is running: the schedule does not start a second one
        instance.add_run(
            dg.DagsterRun(job_name="retrain_access_qa", run_id="0123456789abcdef",
                          status=dg.DagsterRunStatus.STARTED, tags={"pulse/family": "access-qa"})
        )  # fmt: skip
        busy = _tick(nightly, instance, resources)
        assert "access-qa: a retrain is already queued or running (run 01234567)" in busy.skip_message


def test_weekly_runs_on_any_new_annotation(config, env):
    resources, ingest = env
    chains = _chains(build_definitions(config), config)
    weekly = _schedules(config, chains)["weekly_retrain"]
    assert weekly.cron_schedule == "0 3 * * 0" and weekly.execution_timezone == "UTC"
    ingest(config, _scores(1))
    with dg.instance_for_test() as instance:
        (request,) = _tick(weekly, instance, resources, when=dt.datetime(2026, 7, 5, 3, tzinfo=dt.UTC))
    assert (
        request.run_key == "weekly:article-scorer:0" and request.asset_selection == chains["article-scorer"]
    )
    assert request.tags["dagster/max_runtime"] == "5400"


def test_quarterly_retrains_only_the_families_that_ask_even_with_nothing_new(config, env):
    resources, _ = env
    config = _with_schedules(config, "intent-router", quarterly=True)
    defs = build_definitions(config)
    chains = _chains(defs, config)
    quarterly = _schedules(config, chains)["quarterly_retrain"]
    assert quarterly.cron_schedule == "0 4 1 1,4,7,10 *"
    with dg.instance_for_test() as instance:
        (request,) = _tick(quarterly, instance, resources, when=dt.datetime(2026, 7, 1, 4, tzinfo=dt.UTC))
    assert request.run_key == "quarterly:intent-router:2026-07-01"
    assert request.tags == {"pulse/family": "intent-router", "dagster/max_runtime": "5400"}
    # training is forced (the same snapshot would otherwise reuse the last version), and the run
    # config is valid for the `retrain` job narrowed to this family's chain
    assert request.run_config == {"ops": {"intent_router__adapter": {"config": {"force": True}}}}
    subset = defs.resolve_job_def(RETRAIN_JOB).get_subset(asset_selection=set(request.asset_selection))
    assert dg.validate_run_config(subset, request.run_config)

    none = _schedules(_with_schedules(config, "intent-router", quarterly=False), chains)["quarterly_retrain"]
    with dg.instance_for_test() as instance:
        skip = _tick(none, instance, resources, when=dt.datetime(2026, 7, 1, 4, tzinfo=dt.UTC))
    assert (
        "intent-router: not in quarterly_retrain (automation.schedules.quarterly: false)" in skip.skip_message
    )


def test_daily_capture_report_materializes_yesterdays_report_of_every_family(config, env):
    resources, ingest = env
    partitions = annotation_partitions(config)
    report = _schedules(config, {})["daily_capture_report"]
    assert report.cron_schedule == "0 2 * * *" and report.execution_timezone == "UTC"
    ingest(config, _qa(3, day="2026-11-30") + _qa(2, start=10, day="2026-12-01"))
    defs = dg.Definitions(
        assets=[daily_report_asset(f, partitions) for f in config.families.values()],
        schedules=[report],
        resources=resources,
    )
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance=instance, scheduled_execution_time=dt.datetime(2026, 12, 1, 2, tzinfo=dt.UTC), repository_def=defs.get_repository_def()
        ) as context,
    ):
        requests = report.evaluate_tick(context).run_requests  # as the daemon does: partition checked
        assert [r.run_key for r in requests] == [
            f"daily_report:{name}:2026-11-30" for name in config.families
        ]
        assert {r.partition_key for r in requests} == {"2026-11-30"}
        (qa,) = [r for r in requests if r.tags["pulse/family"] == "access-qa"]
        assert qa.tags["dagster/max_runtime"] == "5400"
        job = defs.resolve_job_def(report.job_name)
        result = job.execute_in_process(
            instance=instance, partition_key=qa.partition_key, asset_selection=qa.asset_selection
        )
        assert result.success
        (event,) = result.asset_materializations_for_node("access_qa__daily_report")
        assert event.partition == "2026-11-30"
        assert event.metadata["annotations"].value == 3  # not the two of December 1st
        assert event.metadata["human_judged"].value == 3
        assert event.metadata["new_trainable_annotations"].value == 5
        assert event.metadata["training_threshold_reached"].value is False

        early = _tick(report, instance, when=dt.datetime(2025, 1, 1, 2, tzinfo=dt.UTC))
        assert early.skip_message == "2024-12-31 is before the first annotation partition"


def test_daily_watch_materializes_drift_and_production_accuracy(config):
    config = config.model_copy(
        update={"families": {**config.families, "call-analysis": config.family("call-analysis").model_copy(
            update={"automation": config.family("call-analysis").automation.model_copy(
                update={"drift": config.family("call-analysis").automation.drift.model_copy(
                    update={"enabled": False})})})}}
    )  # fmt: skip
    watch = _schedules(config, {})["daily_watch"]
    assert watch.cron_schedule == "30 1 * * *" and watch.job_name == "daily_watch"
    stand_ins = [  # the assets other modules build, by key
        dg.AssetSpec(dg.AssetKey([f.name, name]))
        for f in config.families.values()
        for name in ("drift_report", "production_accuracy")
    ]

    @dg.multi_asset(specs=stand_ins, can_subset=True)
    def watched(context: dg.AssetExecutionContext):
        for key in context.selected_asset_keys:
            yield dg.MaterializeResult(asset_key=key)

    job = dg.define_asset_job("daily_watch", selection=dg.AssetSelection.assets(watched))
    defs = dg.Definitions(assets=[watched], jobs=[job], schedules=[watch])
    with dg.instance_for_test() as instance:
        requests = _tick(watch, instance, when=dt.datetime(2026, 7, 1, 1, 30, tzinfo=dt.UTC))
        by_family = {r.tags["pulse/family"]: r for r in requests}
        assert by_family["call-analysis"].asset_selection == [
            dg.AssetKey(["call-analysis", "production_accuracy"])
        ]
        assert by_family["intent-router"].asset_selection == watch_keys(config.family("intent-router"))
        assert by_family["intent-router"].run_key == "daily_watch:intent-router:2026-07-01"
        assert all(r.tags["dagster/max_runtime"] == "5400" for r in requests)
        run = defs.resolve_job_def("daily_watch").execute_in_process(
            instance=instance, asset_selection=by_family["intent-router"].asset_selection
        )
        materialized = {e.asset_key for e in run.get_asset_materialization_events()}
        assert materialized == set(watch_keys(config.family("intent-router")))


def test_run_limit_comes_from_the_family_and_dagster_yaml_enforces_it(config, tmp_path, monkeypatch):
    family = config.family("intent-router")
    slow = family.model_copy(
        update={"automation": family.automation.model_copy(update={"max_run_minutes": 240})}
    )
    assert run_limit_tags(family) == {"dagster/max_runtime": "5400"}  # the default 90 minutes
    assert run_limit_tags(slow) == {"dagster/max_runtime": "14400"}
    (tmp_path / "dagster.yaml").write_text((PROJECT / "pulse_pipeline" / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled  # without it the daemon never stops a run
    assert yaml.safe_load((PROJECT / "pulse_pipeline" / "dagster.yaml").read_text())["run_monitoring"]["enabled"] is True
