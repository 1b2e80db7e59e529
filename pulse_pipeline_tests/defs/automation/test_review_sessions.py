"""`closed_review_sessions_<family>` ticks against a real store and a real test instance: closing a
session with new segment reviews requests the retrain once; a session whose reviews are all in the
newest snapshot is skipped by name; a tick with no new closure requests nothing."""


import dagster as dg

from pulse_pipeline.core.artifacts import LocalArtifactStore
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.review_sessions import close_session
from pulse_pipeline.core.store import Store
from pulse_pipeline.defs.automation.review_sessions import closed_sessions_sensor
from pulse_pipeline.defs.resources import AnnotationStore, ArtifactStorage, TrainingEnvironment
from pulse_pipeline_tests.core.test_review_sessions import segment
from pulse_pipeline_tests.versions import trained_version


def test_closing_a_session_with_new_reviews_requests_one_retrain(config, tmp_path):
    family = config.family("call-analysis")
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    resources = {
        "annotation_store": AnnotationStore(database_url=url),
        "artifact_storage": ArtifactStorage(location=str(tmp_path / "artifacts")),
        "training": TrainingEnvironment(home=str(tmp_path / "home")),
    }
    sensor = closed_sessions_sensor(family, "retrain_call_analysis")
    assert sensor.name == "closed_review_sessions_call_analysis"
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    with Store(url) as store:
        ingest_lines(store, [segment(i, "dojo-old") for i in range(2)], config, source="a")
        trained_version(store, LocalArtifactStore(tmp_path / "artifacts"), "call-analysis",
                        store.annotations.latest_seq("call-analysis"))  # fmt: skip
        ingest_lines(store, [segment(i, "dojo-new") for i in range(2, 6)], config, source="b")
    with dg.instance_for_test() as instance:

        def tick(cursor):
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                return sensor(context), context.cursor

        result, cursor = tick(None)
        assert result.skip_message == "no review session of call-analysis closed since the last tick"
        with Store(url) as store:
            old = close_session(store, config, "dojo-old", by="lead")
        result, cursor = tick(cursor)
        assert (
            result.skip_message == "no segment review newer than the last training in closed session(s) dojo-old"
        )
        assert cursor == str(old.seq)

        with Store(url) as store:
            new = close_session(store, config, "dojo-new", by="lead")
        result, cursor = tick(cursor)
        (request,) = result.run_requests
        assert request.run_key == "session:dojo-new" and request.job_name in (None, "retrain_call_analysis")
        assert (
            request.tags["pulse/new_segment_reviews"] == "4"
            and request.tags["pulse/family"] == "call-analysis"
        )
        assert cursor == str(new.seq)

        again, cursor = tick(cursor)  # nothing closed since: no second request
        assert isinstance(again, dg.SkipReason) and cursor == str(new.seq)
