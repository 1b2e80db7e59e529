"""`new_annotations_<family>` ticks against a real store: a skip with the count below the minimum,
one run request at it (the same run key on every later tick), counting only what is new, and a
version trained on newer data starting the count again (a snapshot alone does not), and a tick
while a training holds the family's lock naming the holder."""

import datetime as dt
import os
import socket

import dagster as dg
import orjson
from dagster._core.utils import make_new_run_id

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.registry import Registry
from pulse_pipeline.core.retraining import NewAnnotations
from pulse_pipeline.core.store import LockHolder, Store
from pulse_pipeline.defs.automation.runs import RETRAIN_KEY_TAG, retrain_request
from pulse_pipeline.defs.automation.sensors import new_annotations_sensor
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment
from pulse_pipeline_tests.core.registry.conftest import adapter_folder


def _qa(n, start=0):
    return [
        {"kind": "qa_pair", "family": "access-qa", "question": f"How many cores on node {i}?",
         "answer": f"{i} cores.", "annotator": "reviewer", "created_at": "2026-06-30T12:00:00Z"}
        for i in range(start, start + n)
    ]  # fmt: skip


def _ingest(config, url, tmp_path, records, name):
    path = tmp_path / name
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with Store(url) as store:
        ingest_file(store, path, config)


def _resources(url, tmp_path):
    return {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
        "training": TrainingEnvironment(home=str(tmp_path / "home")),
    }


def test_skips_below_the_minimum_then_requests_one_run_per_watermark(config, tmp_path):
    family = config.family("access-qa")  # minimum 50
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    resources = _resources(url, tmp_path)
    sensor = new_annotations_sensor(family, "retrain_access_qa")
    _ingest(config, url, tmp_path, _qa(37), "a.jsonl")
    with dg.instance_for_test() as instance:

        def tick(cursor):
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                return sensor(context), context.cursor

        result, cursor = tick(None)
        assert isinstance(result, dg.SkipReason) and result.skip_message == "37 of 50 new annotations"
        assert NewAnnotations.from_cursor(cursor) == NewAnnotations(0, 37, 37)

        _ingest(config, url, tmp_path, _qa(20, start=100), "b.jsonl")
        result, cursor = tick(cursor)
        (request,) = result.run_requests
        assert request.run_key == "access-qa:0" and request.tags["pulse/new_annotations"] == "57"
        assert NewAnnotations.from_cursor(cursor) == NewAnnotations(0, 57, 57)  # only the 20 new rows read
        again, cursor = tick(cursor)
        assert [r.run_key for r in again.run_requests] == ["access-qa:0"]  # same data, same run key

        # A snapshot alone (`pulse snapshot`) trains nothing: still 57 new.
        (tmp_path / "artifacts" / "datasets" / "access-qa" / "v1").mkdir(parents=True)
        (tmp_path / "artifacts" / "datasets" / "access-qa" / "v1" / "manifest.json").write_bytes(
            orjson.dumps({"dataset_version": "v1", "watermark": {"seq": 57}})
        )
        (tmp_path / "artifacts" / "datasets" / "access-qa" / "latest.json").write_bytes(
            orjson.dumps({"dataset_version": "v1", "created_at": dt.datetime.now(dt.UTC).isoformat()})
        )
        result, cursor = tick(cursor)
        assert [r.run_key for r in result.run_requests] == ["access-qa:0"]

        # A version trained on that snapshot up to seq 57: counting starts again from there.
        _trained(url, tmp_path, "v1", 57)
        result, cursor = tick(cursor)
        assert result.skip_message == "0 of 50 new annotations"
        assert NewAnnotations.from_cursor(cursor) == NewAnnotations(57, 57, 0)

        # While a training of the family holds its lock, a tick that reaches the minimum says who.
        _ingest(config, url, tmp_path, _qa(50, start=200), "c.jsonl")
        with Store(url) as store:
            holder = LockHolder("cli:alice", "abcdef0123456789", socket.gethostname(), os.getpid())
            assert store.locks.insert("access-qa", holder)
            result, cursor = tick(cursor)
            assert result.skip_message.startswith("access-qa: training already in progress since ")
            assert "cli:alice (run abcdef01, pid" in result.skip_message
            store.locks.release("access-qa", holder)
        result, cursor = tick(cursor)
        assert [r.run_key for r in result.run_requests] == ["access-qa:57"]


def _trained(url, tmp_path, dataset, watermark):
    """A version of access-qa trained on `dataset` up to store seq `watermark`, as a training records it."""
    with Store(url) as store:
        registry = Registry(store, LocalArtifactStore(tmp_path / "artifacts"))
        record = registry.begin(
            "access-qa", dataset_version=dataset, base_model="tiny", training_config={}, created_by="t",
            watermark=watermark,
        )  # fmt: skip
        registry.publish(record, adapter_folder(tmp_path, watermark), {})


def test_a_data_fix_makes_the_next_tick_count_again(config, tmp_path):
    family = config.family("access-qa")
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    resources = _resources(url, tmp_path)
    sensor = new_annotations_sensor(family, "retrain_access_qa")
    _ingest(config, url, tmp_path, _qa(40), "a.jsonl")  # all on 2026-06-30
    with dg.instance_for_test() as instance:

        def tick(cursor):
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                return sensor(context), context.cursor

        result, cursor = tick(None)
        assert result.skip_message == "40 of 50 new annotations"
        with Store(url) as store:
            store.fixes.invalidate("access-qa", day=dt.date(2026, 6, 30), reason="broken export", by="test")
        later = [{**r, "created_at": "2026-07-01T09:00:00Z"} for r in _qa(10, start=500)]
        _ingest(config, url, tmp_path, later, "b.jsonl")
        result, cursor = tick(cursor)  # 40 + 10 without the fix; the 40 no longer count
        assert result.skip_message == "10 of 50 new annotations"
        assert NewAnnotations.from_cursor(cursor).count == 10


def _past_run(instance, status, key, family="access-qa"):
    run = dg.DagsterRun(
        job_name=f"retrain_{family.replace('-', '_')}",
        run_id=make_new_run_id(),
        status=status,
        tags={"pulse/family": family, RETRAIN_KEY_TAG: key},
    )
    instance.add_run(run)
    return run


def test_a_retrain_under_way_skips_and_a_failed_one_is_tried_again_up_to_three_times(config, tmp_path):
    family = config.family("access-qa")
    key = "access-qa:57"
    store = Store(f"sqlite:///{tmp_path / 'pulse.db'}")
    training = TrainingEnvironment(home=str(tmp_path / "home"))
    with dg.instance_for_test() as instance:

        def request():
            return retrain_request(
                instance, family, key, {"pulse/new_annotations": "60"}, job_name="retrain_access_qa",
                store=store, training=training,
            )  # fmt: skip

        first = request()
        assert (
            first.run_key == key
            and first.tags[RETRAIN_KEY_TAG] == key
            and first.tags["pulse/family"] == "access-qa"
        )
        running = _past_run(instance, dg.DagsterRunStatus.STARTED, key)
        skipped = request()  # e.g. a closed review session asking while the sensor's run trains
        assert (
            skipped.skip_message
            == f"a retrain of access-qa is already queued or running (run {running.run_id[:8]})"
        )
        instance.delete_run(running.run_id)  # it finished: below, how it ended
        _past_run(instance, dg.DagsterRunStatus.FAILURE, key)
        assert request().run_key == f"{key}:attempt-2"  # Dagster never launches a run key twice
        _past_run(instance, dg.DagsterRunStatus.FAILURE, key)
        assert request().run_key == f"{key}:attempt-3"
        last = _past_run(instance, dg.DagsterRunStatus.CANCELED, key)
        gave_up = request()
        assert gave_up.skip_message.startswith(
            f"the retrain of access-qa for this data ({key}) failed 3 times (last run {last.run_id[:8]})"
        )
        _past_run(instance, dg.DagsterRunStatus.SUCCESS, key)
        assert request().run_key == key  # done: the key of a finished run, which Dagster never relaunches


def test_the_tick_interval_is_the_familys_setting(config):
    family = config.family("access-qa")
    assert new_annotations_sensor(family, "retrain_access_qa").minimum_interval_seconds == 300  # the default
    faster = family.model_copy(
        update={"automation": family.automation.model_copy(update={"new_annotations_interval_seconds": 5})}
    )
    assert new_annotations_sensor(faster, "retrain_access_qa").minimum_interval_seconds == 5


def test_a_tick_that_requests_a_run_evaluates_as_the_daemon_evaluates_it(config, tmp_path):
    """The daemon runs `evaluate_tick`, which refuses a SensorResult carrying a cursor after
    `context.update_cursor` (a direct call does not): the request and the cursor both come through."""
    family = config.family("access-qa")
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    resources = _resources(url, tmp_path)
    sensor = new_annotations_sensor(family, "retrain_access_qa")
    _ingest(config, url, tmp_path, _qa(50), "a.jsonl")
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(instance=instance, resources=resources) as context,
    ):
        data = sensor.evaluate_tick(context)
    assert [r.run_key for r in data.run_requests] == ["access-qa:0"]
    assert NewAnnotations.from_cursor(data.cursor) == NewAnnotations(0, 50, 50)


def test_a_crashed_run_that_dagster_will_retry_is_not_requested_again(config, tmp_path):
    """Between a crashed run's failure and the launch of its automatic retry (run_retries), a tick
    would otherwise ask for a second run of the same data: it skips until the retry is launched."""
    family = config.family("access-qa")
    key = "access-qa:57"
    store = Store(f"sqlite:///{tmp_path / 'pulse.db'}")
    training = TrainingEnvironment(home=str(tmp_path / "home"))
    with dg.instance_for_test() as instance:

        def request():
            return retrain_request(
                instance, family, key, {}, job_name="retrain_access_qa", store=store, training=training
            )

        crashed = _past_run(instance, dg.DagsterRunStatus.FAILURE, key)
        instance.add_run_tags(crashed.run_id, {"dagster/will_retry": "true"})
        skipped = request()
        assert skipped.skip_message == f"a retrain of access-qa is already queued or running (run {crashed.run_id[:8]})"
        instance.add_run_tags(crashed.run_id, {"dagster/auto_retry_run_id": make_new_run_id()})
        assert request().run_key == f"{key}:attempt-2"  # the retry is its own run now (here: gone)
