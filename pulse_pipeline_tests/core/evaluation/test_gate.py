"""The promotion gate on hand-made metrics: absolute bounds, change limits with intervals, the
worst outcome wins, and every check's outcome is a reason a person can read."""

import pytest
from pydantic import ValidationError

from pulse_pipeline.core.evaluation.config import ChangeThresholds, GateConfig, Threshold
from pulse_pipeline.core.evaluation.gate import decide

SCORER = GateConfig(absolute={"mae": Threshold(review_above=1.0, fail_above=1.2)})
MAIN = ("mae",)


def _row(metric, candidate, baseline, low, high, higher_is_better):
    return {
        "metric": metric, "candidate": candidate, "baseline": baseline, "delta": candidate - baseline,
        "ci_low": low, "ci_high": high, "higher_is_better": higher_is_better,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("mae", "decision"), [(0.8, "DEPLOY"), (1.0, "REVIEW"), (1.1, "REVIEW"), (1.2, "REVIEW"), (1.3, "FAIL")]
)  # the bands: < 1.0 DEPLOY, 1.0-1.2 REVIEW, > 1.2 FAIL
def test_scorer_mae_bands(mae, decision):
    out = decide(SCORER, {"test": {"mae": mae}}, {}, MAIN)
    assert out["decision"] == decision
    assert out["checks"][0]["metric"] == "mae" and out["checks"][0]["kind"] == "absolute"
    if decision != "DEPLOY":
        assert out["reasons"] == [out["checks"][0]["reason"]] and "mae" in out["reasons"][0]
        assert decision in out["reasons"][0]
    else:
        assert out["reasons"] == []


def test_regression_beyond_tolerance_fails_only_when_the_interval_excludes_zero():
    gate = GateConfig(change=ChangeThresholds(tolerance=0.02))
    real = _row("accuracy", 0.80, 0.90, -0.14, -0.06, True)
    noisy = _row("accuracy", 0.80, 0.90, -0.25, 0.03, True)
    small = _row("accuracy", 0.89, 0.90, -0.02, -0.001, True)  # excludes zero but within tolerance
    assert decide(gate, {}, {"test": [real]}, ("accuracy",))["decision"] == "FAIL"
    assert decide(gate, {}, {"test": [noisy]}, ("accuracy",))["decision"] == "DEPLOY"
    assert decide(gate, {}, {"test": [small]}, ("accuracy",))["decision"] == "DEPLOY"
    reason = decide(gate, {}, {"test": [real]}, ("accuracy",))["reasons"][0]
    assert reason.startswith("accuracy worsened from 90.0% to 80.0% on test (-10.0 pp") and "FAIL" in reason


def test_lower_is_better_metrics_regress_upwards_and_review_can_replace_fail():
    gate = GateConfig(change=ChangeThresholds(tolerances={"mae": 0.05}, on_regression="REVIEW"))
    worse = _row("mae", 1.0, 0.8, 0.1, 0.3, False)
    better = _row("mae", 0.6, 0.8, -0.3, -0.1, False)
    assert decide(gate, {}, {"test": [worse]}, MAIN)["decision"] == "REVIEW"
    assert decide(gate, {}, {"test": [better]}, MAIN)["decision"] == "DEPLOY"


def test_worst_outcome_wins_and_missing_metrics_are_skipped_unless_required():
    gate = GateConfig(
        absolute={
            "accuracy": Threshold(fail_below=0.95),
            "citation_presence": Threshold(review_below=0.9),
            "refusal_accuracy": Threshold(fail_below=0.9),
        }
    )
    out = decide(gate, {"test": {"accuracy": 0.97, "citation_presence": 0.5}}, {}, ())
    assert out["decision"] == "REVIEW" and [c["outcome"] for c in out["checks"]] == [
        "pass",
        "review",
        "skipped",
    ]
    assert out["checks"][2]["reason"] == "refusal_accuracy: no value on test (no applicable example)"
    required = GateConfig(absolute={"refusal_accuracy": Threshold(fail_below=0.9, required=True)})
    assert decide(required, {"test": {}}, {}, ())["decision"] == "FAIL"


def test_thresholds_must_be_ordered_and_name_a_bound():
    with pytest.raises(ValidationError, match="at least one"):
        Threshold()
    with pytest.raises(ValidationError, match="fail_below must not exceed review_below"):
        Threshold(fail_below=0.9, review_below=0.8)


def test_a_gate_with_nothing_to_check_asks_a_person_and_nan_is_no_value():
    gate = GateConfig(absolute={"accuracy": Threshold(fail_below=0.9, set="golden")})
    out = decide(gate, {"test": {"accuracy": 0.99}}, {}, ("accuracy",))  # no golden set, no comparison
    assert out["decision"] == "REVIEW" and out["checks"][0]["outcome"] == "skipped"
    assert out["reasons"] == [
        "no gate check could run (no thresholds, or no values for them): a person decides"
    ]
    nan = decide(SCORER, {"test": {"mae": float("nan")}}, {}, MAIN)
    assert nan["decision"] == "REVIEW" and nan["checks"][0]["value"] is None


def test_a_change_without_an_interval_is_skipped_not_passed():
    gate = GateConfig(change=ChangeThresholds(tolerance=0.02))
    lone = _row("accuracy", 0.0, 1.0, None, None, True)  # one example: no bootstrap interval
    out = decide(gate, {}, {"test": [lone]}, ("accuracy",))
    assert out["checks"][0]["outcome"] == "skipped" and "no interval" in out["checks"][0]["reason"]
    assert out["decision"] == "REVIEW"


def test_lower_is_better_regressions_read_as_worsening():
    gate = GateConfig(change=ChangeThresholds(tolerances={"mae": 0.05}, confidence=0.9))
    out = decide(gate, {}, {"test": [_row("mae", 1.0, 0.8, 0.1, 0.3, False)]}, MAIN)
    assert out["reasons"][0].startswith("mae worsened from 0.800 to 1.000 on test (+0.200")
    assert "90% interval" in out["reasons"][0]
