import copy
import datetime as dt
import io
import re

import pytest

from pulse_pipeline.core.annotations import RecordError, content_hash, csv_records, parse_record, summarize

VALID = {
    "call_correction": {
        "kind": "call_correction",
        "family": "call-analysis",
        "call_id": "call-1",
        "transcript": [
            {"speaker": "Agent", "text": "Thank you for calling.", "start": 0.0, "end": 2.5},
            {"speaker": "Customer", "text": "My card was charged twice.", "start": 3.0, "end": 5.0},
        ],
        "corrected_output": {"sentiment": "negative", "quality": 6, "topics": ["billing"], "summary": "..."},
        "ai_output": {"sentiment": "neutral", "quality": 8, "topics": []},
    },
    "segment_review": {
        "kind": "segment_review",
        "family": "call-analysis",
        "call_id": "call-1",
        "segment_key": "call-1:verification",
        "segment_type": "compliance_flag",
        "segment_text": "Agent: can I confirm your date of birth?",
        "ai_assessment": {"action_detected": True, "quality_impact": "positive"},
        "trainer_assessment": {"action_detected": True, "quality_impact": "positive"},
        "session_id": "dojo-1",
        "disagreement_reason": "incorrect_timestamp",
        "timestamp_start": 12.0,
        "timestamp_end": 15.5,
        "original_timestamp_start": 10.0,
        "original_timestamp_end": 13.0,
        "segment_ids": ["s-1"],
    },
    "intent_label": {
        "kind": "intent_label",
        "family": "intent-router",
        "text": "freeze my account please",
        "label": "freeze_account",
        "predicted_label": "report_fraud",
        "confidence": 0.62,
        "provider": "llm_fallback",
        "language": "en",
        "conversation_id": "conv-1",
    },
    "score_label": {
        "kind": "score_label",
        "family": "article-scorer",
        "text": "An article.",
        "title": "T",
        "scores": {
            d: 5
            for d in (
                "clarity",
                "accuracy",
                "depth",
                "relevance",
                "originality",
                "structure",
                "engagement",
                "sourcing",
            )
        },
    },
    "qa_pair": {
        "kind": "qa_pair",
        "family": "access-qa",
        "question": "How many cores does a Delta node have?",
        "answer": "128 cores <<SRC:compute-resources:delta>>",
        "sources": ["compute-resources:delta"],
        "query_type": "static",
        "citation_expected": True,
    },
    "feedback": {
        "kind": "feedback",
        "family": "access-qa",
        "query": "q",
        "response": "r",
        "rating": 2,
        "corrected_response": "better",
        "sources": ["documentation:delta"],
        "interaction_id": "req-1",
    },
    "interaction": {
        "kind": "interaction",
        "family": "intent-router",
        "input": "freeze my account please",
        "output": {"intent": "freeze_account"},
        "model_version": "intent-router-20261101-0900",
        "predicted_label": "freeze_account",
        "confidence": 0.91,
        "provider": "encoder",
        "language": "en",
        "latency_ms": 12.5,
        "request_id": "r-1",
        "conversation_id": "conv-1",
        "metadata": {"channel": "web"},
    },
}


def valid(kind: str, **changes) -> dict:
    record = copy.deepcopy(VALID[kind])
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return record


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_kind_accepts_its_contract_record(config, kind):
    ann = parse_record(valid(kind), config)
    assert ann.kind == kind and ann.family == VALID[kind]["family"]
    assert ann.payload == valid(kind)  # the record as received
    assert len(ann.id) == 32 and len(ann.content_hash) == 64
    # required fields only
    needed = REQUIRED[kind] | ONE_OF.get(kind, set()) | {"kind", "family"}
    minimal = {k: v for k, v in valid(kind).items() if k in needed}
    assert parse_record(minimal, config).kind == kind


REQUIRED = {
    "call_correction": {"call_id", "transcript", "corrected_output"},
    "segment_review": {
        "call_id",
        "segment_key",
        "segment_type",
        "segment_text",
        "ai_assessment",
        "trainer_assessment",
    },
    "intent_label": {"text", "label"},
    "score_label": {"text", "scores"},
    "qa_pair": {"question", "answer"},
    "feedback": {"query", "response"},
    "interaction": {"input"},
}
ONE_OF = {"feedback": {"rating"}}  # a verdict: rating, thumbs or corrected_response


@pytest.mark.parametrize("verdict", [{"rating": 1}, {"thumbs": "down"}, {"corrected_response": "better"}])
def test_feedback_needs_one_verdict(config, verdict):
    bare = valid("feedback", rating=..., corrected_response=...)
    with pytest.raises(
        RecordError, match=r"^feedback.rating is missing: a verdict is needed \(rating 1..5, thumbs"
    ):
        parse_record(bare, config)
    assert parse_record(bare | verdict, config).kind == "feedback"


def test_logged_kinds_belong_to_every_family(config):
    # interactions and feedback are what production logs, whatever the family learns from
    chat = valid("interaction", family="call-analysis", input=[{"role": "user", "content": "hi"}])
    chat.pop("predicted_label")
    assert parse_record(chat, config).family == "call-analysis"
    assert parse_record(valid("feedback", family="intent-router"), config).family == "intent-router"
    # ... but a kind a family neither learns from nor logs still does not
    with pytest.raises(RecordError, match="qa_pair records do not belong to family 'intent-router'"):
        parse_record(valid("qa_pair", family="intent-router"), config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"input": {"text": "hi"}},
            "interaction.input must be the text classified, for classification family",
        ),
        (
            {"predicted_label": "nope"},
            "interaction.predicted_label 'nope' is not a label of family 'intent-router'",
        ),
        ({"confidence": 1.5}, "interaction.confidence 1.5"),
        ({"latency_ms": -1}, "interaction.latency_ms -1"),
        ({"input": ""}, "interaction.input"),
    ],
)
def test_an_interaction_is_checked_against_its_classification_family(config, changes, message):
    with pytest.raises(RecordError, match="^" + re.escape(message)):
        parse_record(valid("interaction", **changes), config)


@pytest.mark.parametrize(
    ("kind", "field"), [(k, f) for k, fs in sorted(REQUIRED.items()) for f in sorted(fs)]
)
def test_missing_required_field_is_named(config, kind, field):
    with pytest.raises(RecordError, match=rf"^{kind}\.{field} is missing"):
        parse_record(valid(kind, **{field: ...}), config)


@pytest.mark.parametrize(
    ("kind", "changes", "message"),
    [
        (
            "call_correction",
            {"transcript": 5},
            "call_correction.transcript 5: Input should be a valid string or",
        ),
        ("call_correction", {"transcript": ""}, "call_correction.transcript"),
        (
            "call_correction",
            {"corrected_output": {"topics": "billing"}},
            "call_correction.corrected_output.topics",
        ),
        ("segment_review", {"segment_type": "greeting"}, "segment_review.segment_type 'greeting'"),
        ("segment_review", {"disagreement_reason": "rude"}, "segment_review.disagreement_reason 'rude'"),
        (
            "segment_review",
            {"timestamp_start": 15.5, "timestamp_end": 12.0},
            "segment_review.timestamp_end 12.0 is before timestamp_start 15.5",
        ),
        (
            "segment_review",
            {"original_timestamp_end": 1.0},
            "original_timestamp_end 1.0 is before original_timestamp_start 10.0",
        ),
        ("segment_review", {"timestamp_start": -1.0}, "segment_review.timestamp_start -1.0"),
        (
            "segment_review",
            {"timestamp_start": ..., "timestamp_end": ...},
            "incorrect_timestamp needs timestamp_start",
        ),
        (
            "intent_label",
            {"confidence": 1.7},
            "intent_label.confidence 1.7: Input should be less than or equal to 1",
        ),
        ("intent_label", {"confidence": "high"}, "intent_label.confidence 'high'"),
        (
            "intent_label",
            {"label": "order_pizza"},
            "intent_label.label 'order_pizza' is not a label of family 'intent-router'",
        ),
        ("intent_label", {"predicted_label": "nope"}, "intent_label.predicted_label 'nope'"),
        (
            "intent_label",
            {"lable": "x"},
            "intent_label.lable is not a field of intent_label (did you mean 'label'?)",
        ),
        ("intent_label", {"text": 42}, "intent_label.text 42"),
        ("score_label", {"scores": {"clarity": 5}}, "score_label.scores is missing dimension(s) accuracy"),
        (
            "score_label",
            {"scores": {**VALID["score_label"]["scores"], "clarty": 3}},
            "scores.clarty is not a dimension",
        ),
        (
            "score_label",
            {"scores": {**VALID["score_label"]["scores"], "depth": 11}},
            "scores.depth 11 is outside",
        ),
        (
            "score_label",
            {"scores": {**VALID["score_label"]["scores"], "depth": "high"}},
            "score_label.scores.depth 'high'",
        ),
        ("qa_pair", {"sources": ["not a source"]}, "qa_pair.sources.0 'not a source'"),
        ("qa_pair", {"query_type": "live"}, "qa_pair.query_type 'live'"),
        ("feedback", {"rating": 9}, "feedback.rating 9: Input should be less than or equal to 5"),
        ("feedback", {"rating": 0}, "feedback.rating 0"),
        ("feedback", {"rating": "5"}, "feedback.rating '5': Input should be a valid integer"),
        ("feedback", {"rating": 4.5}, "feedback.rating 4.5"),
        ("feedback", {"created_at": "yesterday"}, "feedback.created_at 'yesterday'"),
        ("feedback", {"annotator": ""}, "feedback.annotator ''"),
    ],
)
def test_rejections_name_kind_field_and_value(config, kind, changes, message):
    with pytest.raises(RecordError) as exc:
        parse_record(valid(kind, **changes), config)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], "a record must be a JSON object, got list"),
        ({"family": "access-qa", "question": "q", "answer": "a"}, "kind is missing"),
        ({"kind": "thumbs_up", "family": "access-qa"}, "kind 'thumbs_up' is not an annotation kind"),
        ({"kind": "qa_pair", "question": "q", "answer": "a"}, "qa_pair.family is missing"),
        (
            {"kind": "qa_pair", "family": "weather-bot", "question": "q", "answer": "a"},
            "qa_pair.family 'weather-bot' is not declared in pulse.yaml",
        ),
        (
            {"kind": "qa_pair", "family": "intent-router", "question": "q", "answer": "a"},
            "qa_pair records do not belong to family 'intent-router'",
        ),
        (
            {"kind": "qa_pair", "family": "access-qa", "question": "q\u0000", "answer": "a"},
            "qa_pair.question contains a NUL character",
        ),
    ],
)
def test_envelope_rejections(config, obj, message):
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_record(obj, config)


def test_rejection_keeps_family_and_day_when_readable(config):
    with pytest.raises(RecordError) as exc:
        parse_record(valid("feedback", rating=9, created_at="2026-03-04T10:00:00+02:00"), config)
    assert exc.value.family == "access-qa"
    assert exc.value.created_at == dt.datetime(2026, 3, 4, 8, tzinfo=dt.UTC)


def test_ids_are_stable_and_content_derived(config):
    a = parse_record(valid("intent_label"), config)
    reordered = dict(reversed(list(valid("intent_label").items())))
    assert parse_record(reordered, config).id == a.id  # key order does not matter
    assert parse_record(valid("intent_label", text="other text"), config).id != a.id
    given = parse_record(valid("intent_label", id="my-id-1"), config)
    assert given.id == "my-id-1" and given.content_hash == a.content_hash  # the id is not content
    assert content_hash({"b": 1, "a": 2}) == content_hash({"a": 2, "b": 1})


def test_created_at_is_normalized_to_utc(config):
    naive = parse_record(valid("qa_pair", created_at="2026-05-01T12:00:00"), config)
    offset = parse_record(valid("qa_pair", created_at="2026-05-01T14:00:00+02:00"), config)
    assert naive.created_at == offset.created_at == dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
    assert parse_record(valid("qa_pair"), config).created_at is None  # "now", set by the store


def test_summary_counts_the_breakdowns(config):
    class Row:
        def __init__(self, ann):
            self.__dict__.update(
                kind=ann.kind,
                payload=ann.payload,
                annotator=ann.annotator,
                id=ann.id,
                content_hash=ann.content_hash,
            )

    rows = [
        Row(parse_record(valid("segment_review"), config)),
        Row(parse_record(valid("segment_review", disagreement_reason=..., segment_key="k2"), config)),
        Row(parse_record(valid("intent_label", annotator="amy"), config)),
    ]
    s = summarize(rows)
    assert s.count == 3
    assert s.by_kind == {"segment_review": 2, "intent_label": 1}
    assert s.by_disagreement == {"incorrect_timestamp": 1, "agreed": 1}
    assert s.by_segment_type == {"compliance_flag": 2}
    assert s.by_label == {"freeze_account": 1} and s.low_confidence == 1
    assert summarize(rows[:2]).digest != s.digest


def test_csv_rows_become_records_with_typed_cells(config):
    table = io.StringIO(
        "text,label,confidence,annotator\n"
        "what is my balance,balance,0.9,ann\n"
        '"a, quoted one",transfer,,\n'
        "bad confidence,transfer,high,ann\n"
    )
    rows = list(csv_records(table, family="intent-router", kind="intent_label"))
    assert [n for n, _ in rows] == [2, 3, 4]
    assert rows[0][1] == {
        "family": "intent-router", "kind": "intent_label", "text": "what is my balance",
        "label": "balance", "confidence": 0.9, "annotator": "ann",
    }  # fmt: skip
    assert rows[1][1] == {
        "family": "intent-router",
        "kind": "intent_label",
        "text": "a, quoted one",
        "label": "transfer",
    }
    assert parse_record(rows[0][1], config).annotator == "ann"
    with pytest.raises(RecordError, match="intent_label.confidence 'high'"):
        parse_record(rows[2][1], config)


def test_csv_columns_win_over_the_defaults_and_json_cells_are_read(config):
    table = io.StringIO(
        'kind,family,text,scores\nscore_label,article-scorer,an article,"{""relevance"": 7}"\n'
    )
    ((_, obj),) = csv_records(table, family="intent-router", kind="intent_label")
    assert obj["kind"] == "score_label" and obj["family"] == "article-scorer"
    assert obj["scores"] == {"relevance": 7}
