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


# --- minimum evidence -------------------------------------------------------------------------------

ACCURACY = GateConfig(absolute={"accuracy": Threshold(fail_below=0.5)})


def _evidence(out):
    return [c for c in out["checks"] if c["kind"] == "evidence"]


def test_three_test_examples_are_not_enough_evidence_to_deploy():
    # The tester's case: every threshold met, every delta +0.0, on a 3-example test split.
    gate = GateConfig(absolute={"accuracy": Threshold(fail_below=0.5)}, change=ChangeThresholds())
    flat = _row("accuracy", 1.0, 1.0, 0.0, 0.0, True)
    out = decide(
        gate, {"test": {"accuracy": 1.0}}, {"test": [flat]}, ("accuracy",),
        set_sizes={"test": 3}, profile="classification",
    )  # fmt: skip
    assert out["decision"] == "REVIEW"
    assert out["reasons"] == ["not enough evidence: 3 test examples, fewer than 100"]
    [check] = _evidence(out)
    assert check == {
        "metric": "examples", "set": "test", "kind": "evidence", "value": 3, "minimum": 100,
        "threshold": "at least 100 examples", "outcome": "review",
        "reason": "not enough evidence: 3 test examples, fewer than 100",
    }  # fmt: skip


def test_enough_examples_pass_the_evidence_check():
    out = decide(
        ACCURACY,
        {"test": {"accuracy": 0.9}},
        {},
        ("accuracy",),
        set_sizes={"test": 150},
        profile="classification",
    )
    assert out["decision"] == "DEPLOY" and out["reasons"] == []
    [check] = _evidence(out)
    assert check["outcome"] == "pass" and check["reason"] == "evidence: 150 test examples (at least 100)"


@pytest.mark.parametrize(
    ("profile", "minimum"),
    [("classification", 100), ("regression", 30), ("chat_structured", 20), ("chat_qa", 20)],
)
def test_each_task_has_its_default_minimum(profile, minimum):
    def run(n):
        return decide(ACCURACY, {"test": {"accuracy": 0.9}}, {}, (), set_sizes={"test": n}, profile=profile)

    below, at = run(minimum - 1), run(minimum)
    assert below["decision"] == "REVIEW"
    assert below["reasons"] == [f"not enough evidence: {minimum - 1} test examples, fewer than {minimum}"]
    assert at["decision"] == "DEPLOY" and _evidence(at)[0]["threshold"] == f"at least {minimum} examples"


def test_an_explicit_minimum_and_set_replace_the_task_default():
    gate = GateConfig(
        absolute={"accuracy": Threshold(fail_below=0.5)}, evidence={"min_examples": 10, "set": "golden"}
    )
    sizes = {"test": 500, "golden": 12}
    ok = decide(gate, {"test": {"accuracy": 0.9}}, {}, (), set_sizes=sizes, profile="classification")
    assert ok["decision"] == "DEPLOY"
    assert _evidence(ok)[0]["reason"] == "evidence: 12 golden examples (at least 10)"
    thin = decide(
        gate, {"test": {"accuracy": 0.9}}, {}, (), set_sizes={**sizes, "golden": 1}, profile="regression"
    )
    assert thin["reasons"] == ["not enough evidence: 1 golden example, fewer than 10"]
    with pytest.raises(ValidationError):
        GateConfig(evidence={"min_examples": 0})
    with pytest.raises(ValidationError):
        GateConfig(evidence={"max_interval_width": 0})
    with pytest.raises(ValidationError, match="extra"):
        GateConfig(evidence={"minimum": 5})


def test_a_missing_or_empty_test_set_is_no_evidence():
    for sizes in ({}, {"golden": 500}, {"test": 0}):
        out = decide(ACCURACY, {"test": {"accuracy": 0.9}}, {}, (), set_sizes=sizes, profile="classification")
        assert out["decision"] == "REVIEW"
        assert out["reasons"] == ["not enough evidence: no test examples"]


def test_thin_evidence_never_turns_a_fail_into_a_review():
    out = decide(
        ACCURACY, {"test": {"accuracy": 0.2}}, {}, (), set_sizes={"test": 3}, profile="classification"
    )
    assert out["decision"] == "FAIL"
    assert out["reasons"][0].startswith("accuracy 20.0% on test < 50.0%: FAIL")
    assert out["reasons"][1] == "not enough evidence: 3 test examples, fewer than 100"


def test_evidence_alone_is_not_a_gate_check_that_ran():
    # No thresholds and no comparison: a big enough set does not wave the version through.
    out = decide(GateConfig(), {}, {}, ("accuracy",), set_sizes={"test": 500}, profile="classification")
    assert out["decision"] == "REVIEW" and _evidence(out)[0]["outcome"] == "pass"
    assert out["reasons"] == [
        "no gate check could run (no thresholds, or no values for them): a person decides"
    ]


def test_without_set_sizes_or_a_profile_the_old_callers_work_as_before():
    out = decide(ACCURACY, {"test": {"accuracy": 0.9}}, {}, ())
    assert out["decision"] == "DEPLOY" and _evidence(out) == []
    unknown = decide(ACCURACY, {"test": {"accuracy": 0.9}}, {}, (), set_sizes={"test": 3})
    assert unknown["decision"] == "DEPLOY" and _evidence(unknown)[0]["outcome"] == "skipped"


def _with_candidate_interval(row, low, high):
    return {**row, "candidate_ci_low": low, "candidate_ci_high": high}


def test_a_wide_candidate_interval_asks_a_person_when_a_width_is_configured():
    gate = GateConfig(absolute={"accuracy": Threshold(fail_below=0.5)}, evidence={"max_interval_width": 0.2})
    row = _row("accuracy", 0.7, 0.7, -0.05, 0.05, True)
    wide = {"test": [_with_candidate_interval(row, 0.55, 0.86)]}
    narrow = {"test": [_with_candidate_interval(row, 0.65, 0.75)]}
    sizes = {"test": 400}
    out = decide(
        gate, {"test": {"accuracy": 0.7}}, wide, ("accuracy",), set_sizes=sizes, profile="classification"
    )
    assert out["decision"] == "REVIEW"
    assert out["reasons"] == [
        "not enough evidence: the 95% interval of accuracy on test is 0.31 wide (0.55 to 0.86), wider than 0.20"
    ]
    width = _evidence(out)[1]
    assert width["metric"] == "accuracy" and width["value"] == pytest.approx(0.31)
    assert width["threshold"] == "95% interval at most 0.20 wide"
    ok = decide(
        gate, {"test": {"accuracy": 0.7}}, narrow, ("accuracy",), set_sizes=sizes, profile="classification"
    )
    assert ok["decision"] == "DEPLOY"
    assert _evidence(ok)[1]["reason"] == (
        "evidence: the 95% interval of accuracy on test is 0.10 wide (0.65 to 0.75) (at most 0.20)"
    )


def test_the_width_check_reads_the_first_main_metric_with_a_value_or_the_named_one():
    rows = [
        {**_row("answer_accuracy", 0.0, 0.0, 0.0, 0.0, True), "candidate": None},  # no applicable example
        _with_candidate_interval(_row("token_f1", 0.6, 0.5, 0.05, 0.15, True), 0.3, 0.9),
        _with_candidate_interval(_row("mae", 0.8, 0.9, -0.2, 0.0, False), 0.7, 0.9),
    ]
    gate = GateConfig(change=ChangeThresholds(metrics=()), evidence={"max_interval_width": 0.25})
    main = ("answer_accuracy", "token_f1")
    out = decide(gate, {}, {"test": rows}, main)
    assert _evidence(out)[0]["metric"] == "token_f1" and _evidence(out)[0]["outcome"] == "review"
    named = GateConfig(evidence={"max_interval_width": 0.25, "metric": "mae"})
    assert _evidence(decide(named, {}, {"test": rows}, main))[0]["outcome"] == "pass"
    missing = GateConfig(evidence={"max_interval_width": 0.25, "metric": "bleu"})
    check = _evidence(decide(missing, {}, {"test": rows}, main))[0]
    assert check["outcome"] == "skipped" and check["reason"] == "evidence: no interval of bleu on test"


def test_a_candidate_below_the_frozen_encoder_floor_fails_with_both_figures_and_the_interval():
    from pulse_pipeline.core.evaluation.comparison import against_floor

    gate = GateConfig(absolute={"accuracy": Threshold(review_below=0.85, fail_below=0.70)})
    references = ["a", "b"] * 500
    floor = ["a", "b"] * 466 + ["b"] * 68  # 96.6 % right
    candidate = ["a", "b"] * 465 + ["b"] * 70  # 96.5 %: a fine-tune worse than no fine-tune
    below = against_floor(references, candidate, floor)
    assert (below["candidate"], below["floor"]) == (0.965, 0.966)
    out = decide(gate, {"test": {"accuracy": 0.965}}, {}, ("accuracy",), floor=below)
    assert out["decision"] == "FAIL"
    (reason,) = out["reasons"]
    assert reason.startswith("top-1 accuracy 96.5% on test against the frozen-encoder floor's 96.6%, difference -0.1 pp")
    assert "95 % interval" in reason and reason.endswith("below the floor: FAIL")
    above = against_floor(references, floor, candidate)
    assert above["ci_low"] <= above["delta"] <= above["ci_high"]
    assert decide(gate, {"test": {"accuracy": 0.966}}, {}, ("accuracy",), floor=above)["decision"] == "DEPLOY"


# --- forgetting on old slices -------------------------------------------------------------------------


def _forgetting(**rule):
    """forgetting.summary's shape: two old slices, accuracy with a 1-point tolerance, against production."""
    slices = [
        {"name": "old-aaaaaaaaaaaa", "dataset_version": "aaaaaaaaaaaa0001", "examples": 400},
        {"name": "old-bbbbbbbbbbbb", "dataset_version": "bbbbbbbbbbbb0002", "examples": 300},
    ]
    return {
        "snapshots": 2, "metric": "accuracy", "max_drop": 0.01, "decision": "review",
        "require_significant": True, "confidence": 0.95, "baseline": "intents-20261120-0200",
        "slices": slices, "notes": [], **rule,
    }  # fmt: skip


def _forgetting_rows(first, second):
    return {"old-aaaaaaaaaaaa": [first], "old-bbbbbbbbbbbb": [second]}


def _checks(out, kind="forgetting"):
    return [c for c in out["checks"] if c["kind"] == kind]


def test_a_drop_beyond_tolerance_on_an_old_slice_asks_a_person_or_fails_when_configured():
    kept = _row("accuracy", 0.90, 0.905, -0.02, 0.01, True)  # within 1 point
    lost = _row("accuracy", 0.80, 0.90, -0.14, -0.06, True)  # 10 points, the interval below zero
    out = decide(GateConfig(), {}, _forgetting_rows(kept, lost), ("accuracy",), forgetting=_forgetting())
    assert out["decision"] == "REVIEW"
    first, second = _checks(out)
    assert (first["set"], first["outcome"]) == ("old-aaaaaaaaaaaa", "pass")
    assert (second["set"], second["outcome"]) == ("old-bbbbbbbbbbbb", "review")
    assert out["reasons"] == [second["reason"]]
    assert second["reason"] == (
        "forgetting on old-bbbbbbbbbbbb (snapshot bbbbbbbbbbbb0002): accuracy 90.0% (production) to 80.0% "
        "(candidate), -10.0 pp (-14.0 to -6.0) (95% interval); max drop 0.01: REVIEW"
    )
    assert second["value"] == pytest.approx(-0.1)
    assert second["threshold"] == "worsens by <= 0.01 (or the 95% interval includes 0)"

    failing = decide(
        GateConfig(), {}, _forgetting_rows(kept, lost), ("accuracy",), forgetting=_forgetting(decision="fail")
    )
    assert failing["decision"] == "FAIL" and _checks(failing)[1]["reason"].endswith("max drop 0.01: FAIL")


def test_forgetting_within_tolerance_or_inside_the_interval_passes():
    small = _row("accuracy", 0.895, 0.90, -0.009, -0.001, True)  # surely worse, but within 1 point
    noisy = _row("accuracy", 0.85, 0.90, -0.12, 0.02, True)  # 5 points worse, the interval holds zero
    out = decide(GateConfig(), {}, _forgetting_rows(small, noisy), ("accuracy",), forgetting=_forgetting())
    assert out["decision"] == "DEPLOY" and [c["outcome"] for c in _checks(out)] == ["pass", "pass"]
    assert _checks(out)[1]["reason"].endswith("worse by more than 0.01, but the interval includes 0")
    # require_significant false: the point estimate alone decides
    strict = decide(
        GateConfig(), {}, _forgetting_rows(small, noisy), ("accuracy",),
        forgetting=_forgetting(require_significant=False),
    )  # fmt: skip
    assert [c["outcome"] for c in _checks(strict)] == ["pass", "review"]
    assert _checks(strict)[0]["threshold"] == "worsens by <= 0.01"


def test_forgetting_reads_lower_is_better_metrics_upwards():
    worse = _row("mae", 1.0, 0.8, 0.1, 0.3, False)
    better = _row("mae", 0.6, 0.8, -0.3, -0.1, False)
    rule = _forgetting(metric="mae", max_drop=0.05)
    out = decide(GateConfig(), {}, _forgetting_rows(better, worse), ("mae",), forgetting=rule)
    assert [c["outcome"] for c in _checks(out)] == ["pass", "review"]
    assert "mae 0.800 (production) to 1.000 (candidate), +0.200" in _checks(out)[1]["reason"]


def test_without_a_production_version_or_an_old_slice_forgetting_is_skipped_with_the_reason():
    no_production = _forgetting(
        baseline=None,
        skipped="the baseline is the base model, not a production version: nothing to have forgotten yet",
    )
    gate = GateConfig(absolute={"accuracy": Threshold(fail_below=0.5)})
    out = decide(gate, {"test": {"accuracy": 0.9}}, {}, ("accuracy",), forgetting=no_production)
    assert out["decision"] == "DEPLOY"
    (check,) = _checks(out)
    assert check["outcome"] == "skipped" and check["set"] == "old slices"
    assert check["reason"] == (
        "forgetting: the baseline is the base model, not a production version: nothing to have forgotten yet"
    )
    # a slice without the metric or without an interval is skipped, never passed
    missing = {"old-aaaaaaaaaaaa": [], "old-bbbbbbbbbbbb": [_row("accuracy", 0.0, 1.0, None, None, True)]}
    out = decide(gate, {"test": {"accuracy": 0.9}}, missing, ("accuracy",), forgetting=_forgetting())
    assert [c["outcome"] for c in _checks(out)] == ["skipped", "skipped"]
    assert _checks(out)[0]["reason"].endswith("no accuracy on this slice")
    assert _checks(out)[1]["reason"].endswith("accuracy: no interval (too few examples)")
    # forgetting checks alone are metric checks that ran: a gate with nothing else still decides
    kept = _row("accuracy", 0.90, 0.90, -0.01, 0.01, True)
    alone = decide(GateConfig(), {}, _forgetting_rows(kept, kept), (), forgetting=_forgetting())
    assert alone["decision"] == "DEPLOY"
