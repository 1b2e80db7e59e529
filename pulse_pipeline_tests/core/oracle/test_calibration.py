"""Calibration and validation decisions, with a rule-based oracle (test_local_oracle.py runs a real one)."""

from __future__ import annotations

import json

import pytest

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.oracle.calibration import (
    CalibrationError,
    ModelScores,
    calibrate,
    model_scores,
    prompt_state,
    read_result,
    uses_model_strata,
)
from pulse_pipeline.core.oracle.corpus import read_corpus
from pulse_pipeline.core.oracle.prompts import load_prompt
from pulse_pipeline_tests.core.oracle.climate import climate_config, write_corpus
from pulse_pipeline_tests.core.oracle.rules import RuleOracle, climate_words, everything_climate

COUNTS = {"on_topic": 10, "off_topic": 10, "edge": 4}


@pytest.fixture
def world(tmp_path):
    family = climate_config(tmp_path).family("climate")
    items = read_corpus(write_corpus(tmp_path / "corpus.jsonl"))
    return family, load_prompt(family), items, open_artifact_store(str(tmp_path / "artifacts"))


def run(world, oracle, *, seed=0, validate=False, counts=COUNTS):
    family, prompt, items, artifacts = world
    return calibrate(family, prompt, oracle, items, artifacts, counts=counts, seed=seed, validate=validate)


def test_a_right_oracle_passes_and_the_report_says_why(world):
    family, prompt, _, artifacts = world
    result = run(world, RuleOracle(climate_words))
    assert result.decision == "PASS", result.reasons
    assert result.metrics["by_stratum"] == {"on_topic": 10, "off_topic": 10, "edge": 4}
    assert result.metrics["judged"] == 20 and result.metrics["agreed"] == 20  # edge items have no expectation
    assert (
        result.reasons[0].startswith("agreement 100 % [")
        and "0 of 10 off-topic items rated on topic" in result.reasons
    )
    stored = read_result(artifacts, "climate", prompt.version, "calibration")
    assert stored["decision"] == "PASS" and len(stored["items"]) == 24
    report = artifacts.read_text(result.report_key)
    assert report.startswith(f"# Oracle calibration: climate, prompt {prompt.version}\n\n**PASS**")
    assert prompt.template in report and "| oracle | rules |" in report
    assert artifacts.read_text(f"oracle/climate/{prompt.version}/prompt.txt") == prompt.template
    assert (
        prompt_state(artifacts, "climate", prompt.version).describe()
        == "calibration: PASS, validation: not run"
    )


def test_off_topic_items_rated_on_topic_fail_it_with_an_example(world):
    """The distillery's failure: a prompt that calls toothbrushes climate technology."""
    result = run(world, RuleOracle(everything_climate))
    assert result.decision == "FAIL"
    assert result.reasons[0].startswith("10 of 10 off-topic items were rated on topic (100 % > 10 %), e.g. '")
    assert result.reasons[0].endswith("-> climate")
    assert any(r.startswith("agreement 50 % [") and r.endswith("below 60 %") for r in result.reasons)
    assert sum(1 for r in result.items if r["off_topic_error"]) == 10
    report = world[3].read_text(result.report_key)
    assert "## Disagreements and unparsed answers (first 10 of 10)" in report


def test_answers_that_cannot_be_parsed_are_retried_then_fail_it(world):
    oracle = RuleOracle(
        lambda text: "I cannot tell." if "Oslo" in text or "Lyon" in text else climate_words(text)
    )
    result = run(world, oracle)
    unparsed = [r for r in result.items if r["answer"] is None]
    assert unparsed and all(
        r["error"].startswith("the answer names none of the family's labels") for r in unparsed
    )
    assert all(oracle.calls[r["text"]] == 3 for r in unparsed)  # the first answer and two retries
    share = len(unparsed) / 24
    assert (result.decision == "FAIL") == (share > 0.1)
    if share > 0.1:
        assert any(r.startswith(f"{len(unparsed)} of 24 answers could not be parsed") for r in result.reasons)


def test_failed_calls_are_reported_not_parsed(world):
    result = run(world, RuleOracle(lambda text: "ERROR"))
    assert result.decision == "FAIL"
    assert result.reasons[0] == (
        "every call to the oracle failed; first: HTTP 500 from POST http://oracle/v1/chat/completions: boom"
    )


def test_validation_needs_a_calibration_and_a_fresh_sample(world):
    family, prompt, items, artifacts = world
    with pytest.raises(
        CalibrationError, match="has no calibration yet: run `pulse calibrate --family climate"
    ):
        run(world, RuleOracle(climate_words), seed=1, validate=True)
    calibration = run(world, RuleOracle(climate_words), seed=0)
    with pytest.raises(CalibrationError, match="--seed 0 is the calibration's; pick another"):
        run(world, RuleOracle(climate_words), seed=0, validate=True)
    validation = run(world, RuleOracle(climate_words), seed=1, validate=True)
    assert validation.decision == "PASS" and validation.calibration_seed == 0
    assert not {r["id"] for r in validation.items} & {r["id"] for r in calibration.items}  # fresh items only
    assert prompt_state(artifacts, "climate", prompt.version).ready
    # a new calibration makes the earlier validation stale: it validated another sample
    run(world, RuleOracle(climate_words), seed=5)
    state = prompt_state(artifacts, "climate", prompt.version)
    assert not state.ready and state.describe() == "calibration: PASS, validation: not run"


def test_validation_clearly_worse_than_calibration_is_overfitting(world):
    run(world, RuleOracle(climate_words), seed=0)
    # right on the calibration's texts only: as if the prompt had been tuned to them
    seen = {r["text"] for r in read_result(world[3], "climate", world[1].version, "calibration")["items"]}
    tuned = RuleOracle(lambda text: climate_words(text) if text in seen else "climate")
    result = run(world, tuned, seed=1, validate=True)
    assert result.decision == "FAIL"  # off-topic items rated on topic, too
    assert result.warnings and result.warnings[0].startswith(
        "overfitting: validation agreement 50 % is clearly below calibration's 100 %"
    )


def test_a_family_without_prefilter_rules_draws_one_plain_sample(tmp_path):
    family = climate_config(tmp_path, prefilter={"on_topic": [], "off_topic": []}).family("climate")
    items = read_corpus(write_corpus(tmp_path / "corpus.jsonl"))
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    result = calibrate(
        family, load_prompt(family), RuleOracle(climate_words), items, artifacts, counts=COUNTS, seed=0
    )
    assert result.metrics["by_stratum"] == {"unstratified": 24}
    # only the items a person labelled can be checked; off-topic ones cannot be told apart
    labelled = sum(1 for r in result.items if r["expected"])
    assert result.metrics["judged"] == labelled
    assert json.dumps(result.to_dict())  # JSON all through


def test_without_prefilter_rules_the_current_model_draws_the_strata_and_says_what_to_expect(tmp_path):
    config = climate_config(tmp_path, prefilter={"on_topic": [], "off_topic": []})
    family = config.family("climate")
    assert uses_model_strata(family)
    items = read_corpus(write_corpus(tmp_path / "corpus.jsonl"))
    # the production model: sure about most items, unsure about the edge ones
    model = ModelScores(
        "climate-v1",
        {i.id: 0.95 if i.id.startswith("off") else 0.05 if i.id.startswith("on") else 0.5 for i in items},
    )
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    prompt = load_prompt(family)
    args = {"counts": COUNTS, "seed": 0, "model": model}
    good = calibrate(family, prompt, RuleOracle(climate_words), items, artifacts, **args)
    assert good.decision == "PASS" and good.strata == "model climate-v1", good.reasons
    assert good.metrics["by_stratum"] == {"on_topic": 10, "off_topic": 10, "edge": 4}
    assert {json.dumps(r["expected"]) for r in good.items if r["stratum"] == "off_topic"} == {
        '{"model": "off_topic"}'
    }
    assert "| strata by | model climate-v1 |" in artifacts.read_text(good.report_key)

    bad = calibrate(family, prompt, RuleOracle(everything_climate), items, artifacts, **args)
    assert bad.decision == "FAIL" and bad.metrics["off_topic_errors"] == 10

    # no rules and no production version: one unstratified sample, said so
    plain = calibrate(family, prompt, RuleOracle(climate_words), items, artifacts, counts=COUNTS, seed=0)
    assert plain.strata == "none" and plain.metrics["by_stratum"] == {"unstratified": 24}


@pytest.mark.slow
def test_model_scores_come_from_a_trained_classification_adapter(tmp_path, model_cache):
    from pulse_pipeline.core.training.base_models import resolve_base_model
    from pulse_pipeline.core.training.config import resolve_training_config
    from pulse_pipeline.core.training.recipe import TrainingJob, train

    config = climate_config(tmp_path, prefilter={"on_topic": [], "off_topic": []})
    family = config.family("climate")
    items = read_corpus(write_corpus(tmp_path / "corpus.jsonl", n_on=40, n_off=40, n_edge=0))
    data = [
        {"id": i.id, "text": i.text, "label": "other" if i.id.startswith("off") else "climate", "weight": 1.0}
        for i in items
    ]
    train_data, val = data[::2] + data[1::4], data[3::4]
    settings = resolve_training_config(
        family.task.value, family.training, {"epochs": 2, "micro_batch_size": 8}
    )
    job = TrainingJob(
        family,
        settings,
        "climate-v1",
        train_data,
        val,
        resolve_base_model("minilm-l6", model_cache),
        tmp_path / "work",
    )
    folder = train(job).folder
    scores = model_scores(family, folder, "climate-v1", items)
    off = [scores.off_topic[i.id] for i in items if i.id.startswith("off")]
    on = [scores.off_topic[i.id] for i in items if i.id.startswith("on")]
    assert min(off) > max(on), (off, on)
    assert sum(scores.stratum(i.id) == "off_topic" for i in items if i.id.startswith("off")) >= 30
