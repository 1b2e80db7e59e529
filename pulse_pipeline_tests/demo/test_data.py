import datetime as dt
import json
import re
from collections import Counter

import pytest

from pulse_pipeline.core.ingestion import ingest_file
from pulse_pipeline.core.store import Store
from pulse_pipeline.demo.data import DemoScale, write_demo_file
from pulse_pipeline_tests.conftest import CLINC150

ANCHOR = dt.date(2026, 6, 30)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo.jsonl"
    info = write_demo_file(path, anchor=ANCHOR, clinc150_dir=CLINC150 if CLINC150.is_dir() else None)
    records = [json.loads(line) for line in path.read_bytes().splitlines()[: -info.flawed_lines]]
    return info, records


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_demo_file(tmp_path / "a.jsonl", anchor=ANCHOR, scale=DemoScale().scaled(0.1))
    b = write_demo_file(tmp_path / "b.jsonl", anchor=ANCHOR, scale=DemoScale().scaled(0.1))
    c = write_demo_file(tmp_path / "c.jsonl", anchor=ANCHOR, scale=DemoScale().scaled(0.1), seed=8)
    assert a.path.read_bytes() == b.path.read_bytes() != c.path.read_bytes()


def test_every_kind_is_generated_and_valid(demo, config, tmp_path):
    info, records = demo
    assert set(info.counts) == {
        "call_correction",
        "segment_review",
        "intent_label",
        "score_label",
        "qa_pair",
        "feedback",
    }
    assert info.counts["segment_review"] == DemoScale().segment_review
    with Store(f"sqlite:///{tmp_path / 'd.db'}") as store:
        result = ingest_file(store, info.path, config)
    assert result.accepted == len(records)
    assert result.quarantined == info.flawed_lines  # only the deliberately flawed lines


def test_created_at_spans_the_days_before_the_anchor(demo):
    _, records = demo
    days = {dt.datetime.fromisoformat(r["created_at"]).date() for r in records}
    assert max(days) == ANCHOR and min(days) == ANCHOR - dt.timedelta(days=DemoScale().days - 1)


def test_call_transcripts_carry_pii_for_the_redaction_step(demo):
    _, records = demo
    text = "\n".join(t["text"] for r in records if r["kind"] == "call_correction" for t in r["transcript"])
    assert re.search(r"[\w.]+@(?:mail\.)?example\.(?:com|org|net)", text)
    assert re.search(r"\(?\+?\d[\d ()-]{8,}\d", text)
    assert re.search(r"\b(?:\d[ -]?){13,16}\b", text)
    assert "may be recorded for quality and training purposes" in text
    speakers = {t["speaker"] for r in records if r["kind"] == "call_correction" for t in r["transcript"]}
    assert speakers == {"Agent", "Customer"}


def test_segment_reviews_mix_agreement_reasons_and_timestamp_fixes(demo):
    _, records = demo
    reviews = [r for r in records if r["kind"] == "segment_review"]
    reasons = Counter(r.get("disagreement_reason", "agreed") for r in reviews)
    assert 0.4 < reasons["agreed"] / len(reviews) < 0.7
    assert {"false_positive", "incorrect_timestamp", "too_harsh", "too_lenient", "wrong_category"} <= set(
        reasons
    )
    fixed = [r for r in reviews if r.get("disagreement_reason") == "incorrect_timestamp"]
    assert all(r["original_timestamp_start"] != r["timestamp_start"] for r in fixed)
    assert {r["segment_type"] for r in reviews} == {"agent_action", "score_impact", "compliance_flag"}
    assert len({r["session_id"] for r in reviews}) > 1


@pytest.mark.skipif(not CLINC150.is_dir(), reason="../shared/data/clinc150 is not beside the project")
def test_intent_labels_come_from_clinc150(demo, config):
    info, records = demo
    assert "CLINC150" in info.intent_source
    clinc = json.loads((CLINC150 / "data_full.json").read_text())
    known = {tuple(x) for x in clinc["train"] + clinc["oos_train"]}
    intents = [r for r in records if r["kind"] == "intent_label"]
    captures = [r for r in intents if "annotator" not in r]  # the router's own label, not reviewed yet
    assert 0.25 < len(captures) / len(intents) < 0.45
    assert all(r["label"] == r["predicted_label"] for r in captures)
    intents = [r for r in intents if "annotator" in r]
    assert all((r["text"], r["label"]) in known for r in intents)
    assert all(r["label"] in config.families["intent-router"].label_set for r in intents)
    assert {r["provider"] for r in intents} == {"encoder", "llm_fallback"}
    low = [r for r in intents if r["confidence"] < 0.7]
    high = [r for r in intents if r["confidence"] > 0.85]
    wrong = lambda rs: sum(r["predicted_label"] != r["label"] for r in rs) / len(rs)  # noqa: E731
    assert wrong(low) > wrong(high)


def test_intent_labels_fall_back_to_generated_text(tmp_path, config):
    labels = config.families["intent-router"].labels
    info = write_demo_file(
        tmp_path / "f.jsonl", anchor=ANCHOR, scale=DemoScale().scaled(0.1), intent_labels=labels
    )
    assert "generated" in info.intent_source
    with Store(f"sqlite:///{tmp_path / 'f.db'}") as store:
        assert ingest_file(store, info.path, config).quarantined == info.flawed_lines


def test_qa_pairs_cite_sources_and_dynamic_questions_are_refused(demo):
    _, records = demo
    qa = [r for r in records if r["kind"] == "qa_pair"]
    marker = re.compile(r"<<SRC:([\w.-]+:[\w./-]+)>>")
    assert all(marker.search(r["answer"]) for r in qa)
    assert all(set(marker.findall(r["answer"])) <= set(r["sources"]) for r in qa)
    dynamic = [r for r in qa if r["query_type"] == "dynamic"]
    assert 0.05 < len(dynamic) / len(qa) < 0.3
    assert all("can't" in r["answer"] for r in dynamic)
    low = [r for r in records if r["kind"] == "feedback" and r["rating"] <= 2]
    assert any("corrected_response" in r for r in low) and any("corrected_response" not in r for r in low)


def test_scores_cover_eight_dimensions_and_follow_the_text(demo):
    _, records = demo
    scored = [r for r in records if r["kind"] == "score_label"]
    assert all(len(r["scores"]) == 8 for r in scored)
    cited = [r["scores"]["sourcing"] for r in scored if "According to" in r["text"]]
    uncited = [r["scores"]["sourcing"] for r in scored if "According to" not in r["text"]]
    assert sum(cited) / len(cited) > sum(uncited) / len(uncited) + 3
