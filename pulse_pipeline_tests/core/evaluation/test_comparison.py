"""Paired bootstrap and flipped examples, on labels whose answers are known."""

import random

from pulse_pipeline.core.evaluation import metrics
from pulse_pipeline.core.evaluation.comparison import Inputs, SystemOutputs, flipped, paired_bootstrap
from pulse_pipeline.core.evaluation.sets import EvalExample


def _systems(n=200, good=0.9, bad=0.6, seed=1):
    rng = random.Random(seed)
    labels = ["a", "b", "c"]
    refs = [rng.choice(labels) for _ in range(n)]

    def answer(p):
        return [r if rng.random() < p else next(x for x in labels if x != r) for r in refs]

    return refs, answer(good), answer(bad)


def test_bootstrap_is_reproducible_and_brackets_the_delta():
    refs, good, bad = _systems()
    modules = [metrics.load("classification")]
    inputs = Inputs(refs)
    rows = paired_bootstrap(modules, SystemOutputs(good), SystemOutputs(bad), inputs, resamples=300, seed=7)
    again = paired_bootstrap(modules, SystemOutputs(good), SystemOutputs(bad), inputs, resamples=300, seed=7)
    other = paired_bootstrap(modules, SystemOutputs(good), SystemOutputs(bad), inputs, resamples=300, seed=8)
    assert rows == again  # same inputs, same intervals
    acc = next(r for r in rows if r["metric"] == "accuracy")
    assert acc["ci_low"] > 0 and acc["ci_low"] < acc["delta"] < acc["ci_high"]
    assert (
        acc["delta"]
        == sum(g == r for g, r in zip(good, refs)) / 200 - sum(b == r for b, r in zip(bad, refs)) / 200
    )
    assert next(r for r in other if r["metric"] == "accuracy")["ci_low"] != acc["ci_low"]
    assert {r["metric"] for r in rows} >= {"accuracy", "macro_f1"}  # scalars only: no confusion matrix


def test_identical_systems_have_an_interval_of_zero():
    refs, good, _ = _systems(n=50)
    rows = paired_bootstrap(
        [metrics.load("classification")],
        SystemOutputs(good),
        SystemOutputs(good),
        Inputs(refs),
        resamples=100,
    )
    assert all(r["delta"] == 0 and r["ci_low"] == 0 and r["ci_high"] == 0 for r in rows)


def test_the_candidate_interval_brackets_its_value_and_narrows_with_more_examples():
    def accuracy_row(n):
        refs, good, bad = _systems(n=n)
        rows = paired_bootstrap(
            [metrics.load("classification")], SystemOutputs(good), SystemOutputs(bad), Inputs(refs),
            resamples=300, seed=3,
        )  # fmt: skip
        return next(r for r in rows if r["metric"] == "accuracy")

    small, large = accuracy_row(30), accuracy_row(600)
    for row in (small, large):
        assert row["candidate_ci_low"] < row["candidate"] < row["candidate_ci_high"]
        assert row["ci_low"] < row["delta"] < row["ci_high"]  # the delta's interval is still there
    width = {n: r["candidate_ci_high"] - r["candidate_ci_low"] for n, r in ((30, small), (600, large))}
    assert width[600] < width[30] / 2  # ~1/sqrt(n): 20x the examples, about 4.5x narrower
    lone = paired_bootstrap(
        [metrics.load("classification")], SystemOutputs(["a"]), SystemOutputs(["b"]), Inputs(["a"])
    )
    assert all(r["candidate_ci_low"] is None and r["candidate_ci_high"] is None for r in lone)


def test_flipped_lists_right_to_wrong_only():
    examples = [EvalExample(f"e{i}", "intent_label", f"text {i}", "a") for i in range(4)]
    out = flipped(
        examples, ["a"] * 4, candidate_right=[True, False, False, True], baseline_right=[True, True, False, False],
        candidate=["a", "b", "b", "a"], baseline=["a", "a", "b", "b"], set_name="test", limit=10,
    )  # fmt: skip
    assert [f["id"] for f in out] == ["e1"]
    assert out[0] == {
        "set": "test",
        "id": "e1",
        "input": "text 1",
        "reference": "a",
        "candidate": "b",
        "baseline": "a",
    }
