"""The offline metric modules: known answers by hand, sacrebleu's own scores, the four family
combinations through evaluate, and a package import that stays light."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from pulse_pipeline.core.evaluation import metrics

REFUSAL = (
    "I can't see live system status, so I can't answer that reliably. Check the ACCESS system status page "
    "or run `squeue` on Delta for current information. <<SRC:documentation:system-status>>"
)
DELTA_ANSWER = "Delta has 128 CPU cores per node. <<SRC:compute-resources:delta>>"
DELTA_REFERENCE = "A standard Delta compute node has 128 CPU cores. <<SRC:compute-resources:delta>>"
SOURCES = {
    "compute-resources:delta": {
        "title": "Delta",
        "url": "https://example.org/delta",
        "text": "Delta nodes have 128 CPU cores and NVIDIA A100 GPUs.",
    },
    "documentation:system-status": {"title": "ACCESS system status", "url": "https://example.org/status"},
}


def source_of(name: str) -> ModuleType:
    """A metric file imported as a module (lazily: it imports evaluate, so point evaluate's caches
    at this test's PULSE_HOME first, as `metrics.load` does)."""
    metrics.configure_cache()
    return importlib.import_module(f"pulse_pipeline.core.evaluation.metrics.{name}")


def compute(name: str, predictions: list, references: list, **kwargs: Any) -> dict[str, Any]:
    """The module's result through evaluate's own `compute` (Arrow round trip included)."""
    return metrics.load(name).compute(predictions=predictions, references=references, **kwargs)


# --- answer_overlap -------------------------------------------------------------------------------


def test_normalize_answer_follows_squad() -> None:
    ao = source_of("answer_overlap")
    assert ao.normalize_answer("The  Cat, sat!") == "cat sat"
    assert ao.normalize_answer("An apple a day") == "apple day"
    assert ao.normalize_answer("U.S.A.") == "usa"
    assert ao.normalize_answer("theater") == "theater"  # articles only as whole words
    assert ao.normalize_answer("the") == ""


def test_token_f1_by_hand() -> None:
    ao = source_of("answer_overlap")
    # [big, dog] vs [small, dog, barked]: overlap 1, P = 1/2, R = 1/3, F1 = 2PR / (P + R) = 0.4
    assert ao.token_f1("a big dog", "the small dog barked") == pytest.approx(0.4)
    # repeated tokens count once per match: [dog x3] vs [dog]: P = 1/3, R = 1, F1 = 0.5
    assert ao.token_f1("dog dog dog", "dog") == pytest.approx(0.5)
    assert ao.token_f1("", "") == 1.0  # SQuAD v2: both empty
    assert ao.token_f1("the", "") == 1.0  # an article alone normalizes to nothing
    assert ao.token_f1("", "answer") == 0.0
    assert ao.token_f1("answer", "") == 0.0
    assert ao.token_f1("cat", "dog") == 0.0


def test_answer_overlap_means_by_hand() -> None:
    predictions = ["The Cat sat.", "a big dog", "", "", "U.S.A!", "dog dog dog"]
    references = ["cat sat", "the small dog barked", "", "answer", "usa", "dog"]
    result = compute("answer_overlap", predictions, references)
    assert result["exact_match"] == pytest.approx(3 / 6)  # examples 0, 2 and 4
    assert result["token_f1"] == pytest.approx((1 + 0.4 + 1 + 0 + 1 + 0.5) / 6)
    assert isinstance(result["exact_match"], float)
    assert result["answer_accuracy"] == pytest.approx(4 / 6)  # F1 >= 0.5: examples 0, 2, 4, 5
    strict = metrics.load("answer_overlap")._compute(
        predictions=predictions, references=references, f1_threshold=0.9
    )
    assert strict["answer_accuracy"] == pytest.approx(3 / 6)


# --- bleu_chrf ------------------------------------------------------------------------------------


def test_bleu_and_chrf_equal_sacrebleu() -> None:
    import sacrebleu

    predictions = [
        "Delta has 128 CPU cores per node.",
        "Regular Expanse nodes have 256 GB of memory.",
        "Anvil is run by Purdue.",
        "",
    ]
    references = [
        "A standard Delta compute node has 128 CPU cores.",
        "Regular Expanse nodes have 256 GB of memory.",
        "Anvil is operated by Purdue.",
        "Stampede3 is operated by TACC.",
    ]
    result = compute("bleu_chrf", predictions, references)
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score
    chrf = sacrebleu.corpus_chrf(predictions, [references]).score
    assert 0 < bleu < 100 and 0 < chrf < 100
    assert result["bleu"] == pytest.approx(bleu, abs=1e-9)
    assert result["chrf"] == pytest.approx(chrf, abs=1e-9)
    # a resampled subset, as the paired bootstrap draws it (cached segment statistics reused)
    idx = [1, 1, 2, 0]
    sub_p, sub_r = [predictions[i] for i in idx], [references[i] for i in idx]
    sub = metrics.load("bleu_chrf")._compute(predictions=sub_p, references=sub_r)
    assert sub["bleu"] == pytest.approx(sacrebleu.corpus_bleu(sub_p, [sub_r]).score, abs=1e-9)
    assert sub["chrf"] == pytest.approx(sacrebleu.corpus_chrf(sub_p, [sub_r]).score, abs=1e-9)


# --- structured_output ----------------------------------------------------------------------------

CALL_REF = {
    "compliance": {"identity_verified": True, "recording_disclosure": False},
    "quality": 7,
    "sentiment": "positive",
    "summary": "Refund issued.",
    "topics": ["billing", "refund"],
}
SEGMENT_REF = {
    "assessment": {"action_detected": True, "quality_impact": "negative", "category": "hold"},
    "timestamp_end": 41.0,
    "timestamp_start": 30.5,
}


def structured_cases() -> tuple[list[str], list[str]]:
    pred_call = {
        "compliance": {"identity_verified": True, "recording_disclosure": True},  # 1 of 2 right
        "quality": 7.0000001,  # within 1e-6
        "sentiment": " Positive ",  # stripped, case-insensitive
        "summary": "refund issued.",
        "topics": ["Refund", "billing", "shipping"],  # not the same set: the leaf is wrong
    }  # 4 of 6 leaves right; topics F1: P = 2/3, R = 1 -> 0.8
    call_ref_2 = {**CALL_REF, "quality": 3, "sentiment": "negative", "topics": ["outage"]}
    pred_segment = {
        "assessment": {"action_detected": True, "quality_impact": "Negative", "category": "transfer"},
        "timestamp_start": 31.5,
        "timestamp_end": 40.0,
    }  # 2 of 5 leaves right; timestamp error (1 + 1) / 2 = 1.0
    segment_ref_2 = {
        "assessment": {"action_detected": False, "quality_impact": "none"},
        "timestamp_start": 10.0,
        "timestamp_end": 12.0,
    }
    pred_segment_2 = {"action_detected": 0, "quality_impact": "none", "timestamp_start": "10"}
    # top level is accepted for the named fields (0 is not false: wrong; "none": right), but not
    # for field_accuracy's dotted paths: 0 of 4 leaves; no usable timestamps
    predictions = [
        json.dumps(pred_call),
        '```json\n{"quality": 3}\n```',  # fenced: not a JSON object
        json.dumps(pred_segment),
        json.dumps(pred_segment_2),
    ]
    references = [
        json.dumps(CALL_REF),
        json.dumps(call_ref_2),
        json.dumps(SEGMENT_REF),
        json.dumps(segment_ref_2),
    ]
    return predictions, references


def test_structured_output_by_hand() -> None:
    predictions, references = structured_cases()
    result = compute("structured_output", predictions, references)
    assert result == pytest.approx(
        {
            "json_valid": 3 / 4,
            "field_accuracy": (4 + 0 + 2 + 0) / (6 + 6 + 5 + 4),
            "sentiment_accuracy": 1 / 2,
            "quality_accuracy": 1 / 2,
            "topics_f1": (0.8 + 0) / 2,
            "action_detected_accuracy": 1 / 2,
            "quality_impact_accuracy": 1.0,
            "timestamp_error_seconds": 1.0,
            "timestamp_missing_rate": 1 / 2,
        }
    )


def test_structured_output_perfect_and_not_applicable() -> None:
    perfect = compute("structured_output", [json.dumps(CALL_REF)], [json.dumps(CALL_REF)])
    assert perfect["json_valid"] == perfect["field_accuracy"] == perfect["topics_f1"] == 1.0
    # call corrections only: the segment-review keys have no example
    assert perfect["action_detected_accuracy"] is None
    assert perfect["timestamp_error_seconds"] is None and perfect["timestamp_missing_rate"] is None


def test_leaf_comparison_rules() -> None:
    so = source_of("structured_output")
    assert so.leaf_correct(True, True) and not so.leaf_correct(True, 1) and not so.leaf_correct(1, True)
    assert so.leaf_correct(2.5, 2.5000005) and not so.leaf_correct(2.5, 2.51)
    assert so.leaf_correct("Hold", " hold") and not so.leaf_correct("hold", "transfer")
    assert so.leaf_correct(["a", "B"], ["b", "A", "a"]) and not so.leaf_correct(["a"], ["a", "b"])
    assert so.parse_object("[1, 2]") is None and so.parse_object("not json") is None


# --- classification -------------------------------------------------------------------------------

CLS_REFS = ["a", "a", "b", "b", "c", "oos", "oos"]
CLS_PREDS = ["a", "b", "b", "b", "a", "oos", "a"]
CLS_SCORES = [0.9, 0.4, 0.8, 0.3, 0.95, 0.2, 0.7]


def test_classification_by_hand() -> None:
    result = compute("classification", CLS_PREDS, CLS_REFS)
    assert result["accuracy"] == pytest.approx(4 / 7)
    # F1 = 2TP / (2TP + FP + FN): a 2/(2+2+1), b 4/(4+1+0), c 0, oos 2/(2+0+1)
    assert result["macro_f1"] == pytest.approx((2 / 5 + 4 / 5 + 0 + 2 / 3) / 4)
    assert result["confusion_matrix"] == {
        "labels": ["a", "b", "c", "oos"],
        "matrix": [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]],
    }
    assert result["in_scope_accuracy"] == pytest.approx(3 / 5)
    assert result["oos_recall"] == pytest.approx(1 / 2)


def test_macro_f1_matches_scikit_learn() -> None:
    f1_score = pytest.importorskip("sklearn.metrics").f1_score
    ours = source_of("classification").macro_f1(CLS_PREDS, CLS_REFS)
    assert ours == pytest.approx(f1_score(CLS_REFS, CLS_PREDS, average="macro", zero_division=0))


def test_classification_threshold_by_hand() -> None:
    result = compute("classification", CLS_PREDS, CLS_REFS, scores=CLS_SCORES, threshold=0.5)
    # below 0.5 -> oos: predictions become [a, oos, b, oos, a, oos, a]
    assert result["accuracy"] == pytest.approx(3 / 7)
    assert result["in_scope_accuracy"] == pytest.approx(2 / 5)
    assert result["oos_recall"] == pytest.approx(1 / 2)
    assert result["confusion_matrix"]["matrix"][0] == [1, 0, 0, 1]  # reference a: one a, one oos
    with pytest.raises(ValueError, match="scores"):
        metrics.load("classification")._compute(predictions=CLS_PREDS, references=CLS_REFS, threshold=0.5)


def test_choose_threshold_picks_the_best_lowest() -> None:
    choose = source_of("classification").choose_threshold
    scores = [0.9, 0.6, 0.5, 0.3, 0.2]
    predictions = ["a", "b", "b", "c", "a"]
    references = ["a", "oos", "b", "oos", "oos"]
    # correct: -inf 2, 0.2 2, 0.3 3, 0.5 4, 0.6 3, 0.9 4 -> the lowest of the best is 0.5
    assert choose(scores, predictions, references) == 0.5
    # when every prediction is right, thresholding cannot help: -inf
    assert choose([0.1, 0.9], ["a", "b"], ["a", "b"]) == float("-inf")
    assert choose([0.3, 0.3, 0.8], ["x", "y", "z"], ["none", "none", "z"], out_of_scope_label="none") == 0.8


# --- regression -----------------------------------------------------------------------------------


def test_regression_by_hand() -> None:
    predictions = [[1.0, 2.0], [3.0, 5.5], [0.0, 0.0]]
    references = [[2.0, 2.0], [1.0, 5.0], [0.0, 3.0]]
    result = compute("regression", predictions, references, dimension_names=["clarity", "depth"])
    # clarity errors -1, 2, 0; depth errors 0, 0.5, -3
    assert result == pytest.approx(
        {
            "mae": (1 + 2 + 0 + 0 + 0.5 + 3) / 6,
            "rmse": math.sqrt((1 + 4 + 0 + 0 + 0.25 + 9) / 6),
            "mae_clarity": 1.0,
            "rmse_clarity": math.sqrt(5 / 3),
            "mae_depth": 3.5 / 3,
            "rmse_depth": math.sqrt(9.25 / 3),
            "regression_missing_rate": 0.0,
        }
    )


def test_regression_missing_values_are_counted_not_hidden() -> None:
    result = metrics.load("regression")._compute(
        predictions=[[1.0, None], [2.0, 4.0]], references=[[0.0, 1.0], [2.0, 2.0]], dimension_names=["x", "y"]
    )
    assert result["mae_x"] == pytest.approx(0.5) and result["mae_y"] == pytest.approx(2.0)
    assert result["mae"] == pytest.approx(1.0)
    assert result["regression_missing_rate"] == pytest.approx(1 / 4)


# --- citations ------------------------------------------------------------------------------------


def test_citation_presence_validity_and_unknown_sources() -> None:
    predictions = [
        DELTA_ANSWER,  # a valid, known id
        "Stampede3 has 112 cores. <<SRC:compute-resources:stampede3>>",  # well formed, not in the registry
        "See the docs. <<SRC:delta>>",  # malformed: no domain
        "No citation here.",  # not expected to cite
        "Anvil is operated by Purdue.",  # expected, missing
    ]
    references = [
        DELTA_REFERENCE,
        "A standard Stampede3 compute node has 112 CPU cores.",
        "The Delta user guide is linked from its ACCESS resource page.",
        "No citation here.",
        "Anvil is operated by Purdue. <<SRC:compute-resources:anvil>>",
    ]
    result = compute(
        "citations",
        predictions,
        references,
        sources=SOURCES,
        citation_expected=[True, True, True, False, True],
    )
    assert result["citation_presence"] == pytest.approx(3 / 4)
    assert result["citation_validity"] == pytest.approx(1 / 3)
    assert result["unknown_sources"] == ["compute-resources:stampede3"]
    assert result["hallucination_rate"] == 0.0  # every claim is in a cited source or the reference


def test_citation_validity_none_without_markers() -> None:
    result = metrics.load("citations")._compute(predictions=["No marker."], references=["x"], sources=SOURCES)
    assert result["citation_validity"] is None and result["unknown_sources"] == []
    assert result["citation_presence"] == 0.0


def hallucination(prediction: str, reference: str = DELTA_REFERENCE) -> float | None:
    result = metrics.load("citations")._compute(
        predictions=[prediction], references=[reference], sources=SOURCES
    )
    return result["hallucination_rate"]


def test_hallucination_both_ways() -> None:
    assert hallucination(DELTA_ANSWER) == 0.0
    assert hallucination("Delta has 64 CPU cores per node. <<SRC:compute-resources:delta>>") == 1.0
    assert hallucination("Delta is operated by SDSC. <<SRC:compute-resources:delta>>") == 1.0
    assert hallucination("It has 128 cores, like Stampede4. <<SRC:compute-resources:delta>>") == 1.0
    # grounded by the cited source's text, not by the reference; uncited, the same claim is not grounded
    assert hallucination("Delta also offers NVIDIA A100 GPUs. <<SRC:compute-resources:delta>>") == 0.0
    assert hallucination("Delta also offers NVIDIA A100 GPUs.") == 1.0
    assert hallucination("yes, that works.") is None  # no checkable claim


def test_claims_extraction() -> None:
    numbers, entities = source_of("citations").claims(
        "The Delta system, run by NCSA, has 1,024 nodes with NVIDIA A100 GPUs. <<SRC:compute-resources:x9>>"
    )
    assert numbers == {"1024", "100"}  # "A100" also holds the number 100; the marker is ignored
    assert entities == {"delta", "ncsa", "nvidia a100 gpus"}


# --- refusals -------------------------------------------------------------------------------------


def test_refusal_detection() -> None:
    is_refusal = source_of("refusals").is_refusal
    assert is_refusal(REFUSAL)
    assert not is_refusal(DELTA_ANSWER)
    assert is_refusal("I don’t have access to real-time queue data; please check the status page.")
    assert is_refusal("Sorry, I cannot know the current wait time.")
    assert not is_refusal("Yes: create a virtual environment in your home or project space on Delta.")


def test_refusal_accuracy_both_ways() -> None:
    predictions = [REFUSAL, DELTA_ANSWER, REFUSAL, DELTA_ANSWER, DELTA_ANSWER]
    query_types = ["dynamic", "static", "static", "dynamic", None]
    refs = [""] * 5
    result = compute("refusals", predictions, refs, query_types=query_types)
    assert result["refusal_accuracy"] == pytest.approx(2 / 4)  # the untyped example is left out
    right = compute("refusals", predictions[:2], refs[:2], query_types=query_types[:2])
    assert right["refusal_accuracy"] == 1.0
    assert compute("refusals", predictions, refs)["refusal_accuracy"] is None


def test_hedging_rate() -> None:
    predictions = [
        "I think Delta has 128 cores.",
        DELTA_ANSWER,
        "I'm not sure, please contact support.",
        "It probably has 128 cores.",
        "The limit may be 48 hours.",
        REFUSAL,
    ]
    assert compute("refusals", predictions, [""] * 6)["hedging_rate"] == pytest.approx(4 / 6)


# --- script_consistency ---------------------------------------------------------------------------


def test_script_consistency_both_ways() -> None:
    hindi = "डेल्टा में प्रति नोड 128 सीपीयू कोर हैं। `squeue` https://example.org/x <<SRC:compute-resources:delta>>"
    mixed = "Delta नोड में 128 CPU cores हैं"
    result = compute("script_consistency", [hindi, mixed, DELTA_ANSWER, "128"], [""] * 4)
    assert result["script_consistency"] == pytest.approx(1 / 3)  # "128" has no letters
    share = source_of("script_consistency").script_share
    assert share("कखगघङचछजझञटठडढणतथदध A") == pytest.approx(19 / 20)  # >= 0.9: consistent
    assert share("कखगघङचछज AB") == pytest.approx(8 / 10)
    assert compute("script_consistency", ["कखगघङचछज AB"], [""])["script_consistency"] == 0.0
    assert compute("script_consistency", ["42 <<SRC:a:b>>"], [""])["script_consistency"] is None


# --- latency --------------------------------------------------------------------------------------


def test_latency_percentiles_match_numpy() -> None:
    latencies = [0.5, 0.1, 2.0, 0.3, 0.7, 1.1]
    result = compute("latency", ["x"] * 6, ["y"] * 6, latencies=latencies)
    assert result["latency_p50_seconds"] == pytest.approx(float(np.percentile(latencies, 50)))
    assert result["latency_p95_seconds"] == pytest.approx(float(np.percentile(latencies, 95)))
    assert result["latency_mean_seconds"] == pytest.approx(sum(latencies) / 6)
    assert result["latency_p95_seconds"] == pytest.approx(1.1 + 0.75 * 0.9)  # linear, by hand
    assert all(v is None for v in compute("latency", ["x"], ["y"]).values())


# --- no applicable example ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(metrics.MODULES))
def test_no_example_gives_none(name: str) -> None:
    kwargs = {"dimension_names": ["a"]} if name == "regression" else {}
    result = metrics.load(name)._compute(predictions=[], references=[], **kwargs)
    assert result and all(v is None or v == [] for v in result.values()), result


# --- the four combinations ------------------------------------------------------------------------


def qa_inputs() -> tuple[list, list, dict[str, Any]]:
    predictions = [REFUSAL, DELTA_ANSWER, "Delta has 64 cores, I think.", "डेल्टा में 128 कोर हैं।"]
    references = [REFUSAL, DELTA_REFERENCE, DELTA_REFERENCE, DELTA_REFERENCE]
    kwargs = {
        "latencies": [0.2, 0.4, 0.6, 0.8],
        "query_types": ["dynamic", "static", "static", "static"],
        "citation_expected": [False, True, True, True],
        "sources": SOURCES,
        "script": "devanagari",
    }
    return predictions, references, kwargs


def structured_inputs() -> tuple[list, list, dict[str, Any]]:
    predictions, references = structured_cases()
    return predictions, references, {"latencies": [1.0, 2.0, 3.0, 4.0]}


def classification_inputs() -> tuple[list, list, dict[str, Any]]:
    kwargs = {"latencies": [0.01] * 7, "scores": CLS_SCORES, "threshold": 0.5, "out_of_scope_label": "oos"}
    return CLS_PREDS, CLS_REFS, kwargs


def regression_inputs() -> tuple[list, list, dict[str, Any]]:
    kwargs = {"latencies": [0.1, 0.2, 0.3], "dimension_names": ["clarity", "depth"]}
    return [[1.0, 2.0], [3.0, 5.5], [0.0, 0.0]], [[2.0, 2.0], [1.0, 5.0], [0.0, 3.0]], kwargs


COMBINATIONS = {
    "chat_structured": (["answer_overlap", "bleu_chrf", "structured_output", "latency"], structured_inputs),
    "chat_qa": (
        ["answer_overlap", "bleu_chrf", "citations", "refusals", "latency", "script_consistency"],
        qa_inputs,
    ),
    "classification": (["classification", "latency"], classification_inputs),
    "regression": (["regression", "latency"], regression_inputs),
}


def subset(values: Any, idx: list[int], n: int) -> Any:
    return [values[i] for i in idx] if isinstance(values, list) and len(values) == n else values


@pytest.mark.parametrize("family", sorted(COMBINATIONS))
def test_combination_through_evaluate(family: str) -> None:
    names, inputs = COMBINATIONS[family]
    predictions, references, kwargs = inputs()
    combined = metrics.combine(names).compute(predictions=predictions, references=references, **kwargs)
    separate: dict[str, Any] = {}
    for name in names:
        module = metrics.load(name)
        result = module._compute(predictions=predictions, references=references, **kwargs)
        assert not set(result) & set(separate), f"{name} repeats a key"
        separate.update(result)
        # a resampled subset: _compute directly equals evaluate's compute on it
        n = len(predictions)
        idx = [n - 1, 0, 0, 1]
        sub = {k: subset(v, idx, n) for k, v in kwargs.items()}
        direct = module._compute(
            predictions=subset(predictions, idx, n), references=subset(references, idx, n), **sub
        )
        via = metrics.load(name).compute(
            predictions=subset(predictions, idx, n), references=subset(references, idx, n), **sub
        )
        assert direct == via
    assert combined == separate  # no key prefixed or lost
    assert all(isinstance(v, float) for v in metrics.scalar_metrics(combined).values())
    assert combined["latency_mean_seconds"] == pytest.approx(float(np.mean(kwargs["latencies"])))


def test_qa_combination_values() -> None:
    predictions, references, kwargs = qa_inputs()
    names = COMBINATIONS["chat_qa"][0]
    result = metrics.combine(names).compute(predictions=predictions, references=references, **kwargs)
    assert result["refusal_accuracy"] == 1.0
    assert result["hedging_rate"] == pytest.approx(1 / 4)
    assert result["citation_presence"] == pytest.approx(1 / 3)  # expected: 3, with a marker: 1
    assert result["citation_validity"] == pytest.approx(1.0)  # both markers resolve
    assert result["hallucination_rate"] == pytest.approx(1 / 4)  # "64" is nowhere
    assert result["script_consistency"] == pytest.approx(1 / 4)


# --- package API ----------------------------------------------------------------------------------


def test_load_unknown_module_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="bleu_chrff.*answer_overlap"):
        metrics.load("bleu_chrff")


def test_evaluate_uses_the_configured_modules_cache() -> None:
    module = metrics.load("latency")
    import evaluate

    # the package set HF_MODULES_CACHE before evaluate was imported, and evaluate copied the module there
    assert str(evaluate.config.HF_MODULES_CACHE) == os.environ["HF_MODULES_CACHE"]
    copied = Path(inspect.getfile(type(module))).resolve()
    assert copied.is_relative_to(Path(os.environ["HF_MODULES_CACHE"]).resolve())
    assert copied.read_bytes() == metrics.MODULES["latency"].read_bytes()


def test_higher_is_better() -> None:
    for key in ("mae", "rmse_clarity", "mae_depth", "timestamp_error_seconds", "hallucination_rate"):
        assert not metrics.higher_is_better(key)
    for key in ("hedging_rate", "latency_p50_seconds", "latency_p95_seconds"):
        assert not metrics.higher_is_better(key)
    for key in ("accuracy", "bleu", "token_f1", "oos_recall", "script_consistency", "field_accuracy"):
        assert metrics.higher_is_better(key)


def test_scalar_metrics_keeps_floats_only() -> None:
    result = {"a": 0.5, "b": None, "c": ["x"], "d": {"labels": []}, "e": 2, "f": True}
    assert metrics.scalar_metrics(result) == {"a": 0.5, "e": 2.0}


def test_package_import_is_light(tmp_path: Path) -> None:
    code = (
        "import os, sys, pulse_pipeline.core.evaluation.metrics; "
        "print(sorted(m for m in ('evaluate', 'datasets', 'sacrebleu', 'torch') if m in sys.modules)); "
        "print(os.environ['HF_MODULES_CACHE']); print(os.environ['HF_METRICS_CACHE'])"
    )
    env = {**os.environ, "PULSE_HOME": str(tmp_path / "home"), "HF_MODULES_CACHE": str(tmp_path / "mine")}
    env.pop("HF_METRICS_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    heavy, modules_cache, metrics_cache = out.stdout.splitlines()
    assert heavy == "[]"
    assert modules_cache == str(tmp_path / "mine")  # the user's own setting wins
    assert Path(metrics_cache) == (tmp_path / "home").resolve() / "cache" / "huggingface" / "metrics"
