"""`@retry_transient` in real runs: a dropped database connection is retried with backoff and the
run succeeds; a training-style error fails at once; a connection that never comes back fails with
its own error after the last retry. The retrain chain's assets all carry it."""

import dagster as dg
import pytest
import sqlalchemy as sa

from pulse_pipeline.core.store import Annotations, Store
from pulse_pipeline.definitions import build_definitions
from pulse_pipeline.defs import retries
from pulse_pipeline.defs.automation.daily_report import daily_report_asset
from pulse_pipeline.defs.datasets.assets import review_queue_asset
from pulse_pipeline.defs.resources import AnnotationStore


def _dropped() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("SELECT ...", {}, Exception("server closed the connection unexpectedly"))


@pytest.fixture(autouse=True)
def no_wait(monkeypatch):
    monkeypatch.setattr(retries, "BASE_SECONDS", 0.01)


def _flaky(errors):
    calls = []

    @dg.asset
    @retries.retry_transient
    def flaky(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """A step whose first calls raise `errors`."""
        calls.append(context.retry_number)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return dg.MaterializeResult(metadata={"attempts": len(calls)})

    return flaky, calls


def _events(result, kind):
    return [e for e in result.all_events if e.event_type_value == kind]


def test_a_dropped_connection_is_retried_and_the_run_succeeds():
    flaky, calls = _flaky([_dropped()])
    result = dg.materialize([flaky])
    assert result.success and calls == [0, 1]
    (retry,) = _events(result, "STEP_UP_FOR_RETRY")
    assert retry.event_specific_data.seconds_to_wait == pytest.approx(0.01)
    assert flaky.op.description == "A step whose first calls raise `errors`."


def test_a_training_error_fails_at_once():
    flaky, calls = _flaky([ValueError("loss is NaN at step 12")])
    result = dg.materialize([flaky], raise_on_error=False)
    assert not result.success and calls == [0]
    assert not _events(result, "STEP_UP_FOR_RETRY")
    (failure,) = _events(result, "STEP_FAILURE")
    error = failure.event_specific_data.error.cause
    assert error.cls_name == "StepError" and error.message.strip().endswith(": loss is NaN at step 12")


def test_a_connection_that_stays_down_fails_with_its_own_error_after_three_retries():
    flaky, calls = _flaky([_dropped()] * 5)
    result = dg.materialize([flaky], raise_on_error=False)
    assert not result.success and calls == [0, 1, 2, 3]
    waits = [e.event_specific_data.seconds_to_wait for e in _events(result, "STEP_UP_FOR_RETRY")]
    assert waits == pytest.approx([0.01, 0.02, 0.04])  # exponential backoff
    (failure,) = _events(result, "STEP_FAILURE")
    error = failure.event_specific_data.error.cause
    assert error.cls_name == "StepError" and "server closed the connection unexpectedly" in error.message
    assert error.message.strip().endswith("(still after 3 retries)")


def test_a_real_asset_retries_when_the_store_drops_its_connection(config, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    Store(url).dispose()
    real, failures = Annotations.iter_family, [_dropped()]

    def iter_family(self, *args, **kwargs):
        if failures:
            raise failures.pop()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Annotations, "iter_family", iter_family)
    asset = review_queue_asset(config.family("intent-router"))
    result = dg.materialize([asset], resources={"annotation_store": AnnotationStore(database_url=url)})
    assert result.success and len(_events(result, "STEP_UP_FOR_RETRY")) == 1


def test_a_failing_step_stores_its_error_masked_with_its_frames(monkeypatch):
    """A secret in an error message never reaches the event log; where it was raised still does."""
    monkeypatch.setenv("PULSE_S3_SECRET_KEY", "s3cr3t-value-42")
    from pulse_pipeline.settings import get_settings

    get_settings.cache_clear()
    flaky, _ = _flaky([RuntimeError("cannot use postgresql://pulse:hunter2@db/pulse with key s3cr3t-value-42")])
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([flaky], raise_on_error=False, instance=instance)
        logged = " ".join(str(record.dagster_event) for record in instance.all_logs(result.run_id))
    (failure,) = _events(result, "STEP_FAILURE")
    error = failure.event_specific_data.error.cause
    assert "hunter2" not in error.to_string() and "s3cr3t-value-42" not in error.to_string()
    assert "hunter2" not in logged and "s3cr3t-value-42" not in logged
    assert "postgresql://pulse:***@db/pulse" in error.message
    assert any("raise errors[len(calls) - 1]" in frame for frame in error.stack)  # the original frames


def test_every_asset_that_reaches_a_store_retries_transient_errors(config):
    from pulse_pipeline.definitions import annotation_partitions

    defs = build_definitions(config)
    stages = ("review_queue", "examples", "dataset_snapshot", "adapter", "eval_report", "deployment")
    assets = [
        defs.resolve_assets_def(dg.AssetKey([family, stage]))
        for family in config.families
        for stage in stages
        if stage != "review_queue" or family == "intent-router"
    ]
    assets += [daily_report_asset(config.family("access-qa"), annotation_partitions(config))]
    for asset in assets:
        fn = asset.op.compute_fn.decorated_fn
        assert fn.__code__.co_name == "_with_retries", asset.key.to_user_string()
