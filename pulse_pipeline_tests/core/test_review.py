import json
import xml.etree.ElementTree as ET

import pytest

from pulse_pipeline.core.review import (
    LabelStudioError,
    from_label_studio,
    labeling_config,
    review_queue,
    to_label_studio,
)
from pulse_pipeline_tests.core.test_annotations import valid
from pulse_pipeline_tests.core.test_examples import rows


def capture(text, confidence, provider="encoder", **extra):
    record = valid("intent_label", text=text, confidence=confidence, provider=provider, **extra)
    return record


def test_queue_is_priority_first_and_settled_by_human_review(config):
    family = config.family("intent-router")
    queue = review_queue(rows(config, [
        capture("a", 0.80),
        capture("b", 0.40),
        capture("c", 0.95, provider="llm_fallback"),
        capture("d", 0.99),  # auto-approved: not queued
        capture("e", 0.75),
        valid("intent_label", text="E", label="balance", annotator="amy"),  # settles "e"
    ]), family)  # fmt: skip
    assert [i.text for i in queue.items] == ["b", "c", "a"]
    assert [str(i.status) for i in queue.items] == ["priority_review", "priority_review", "needs_review"]
    assert queue.settled == 1
    assert queue.by_status == {
        "needs_review": 2,
        "priority_review": 2,
        "auto_approved": 1,
        "human_reviewed": 1,
    }


def test_label_studio_round_trip(config):
    family = config.family("intent-router")
    queue = review_queue(rows(config, [capture("freeze it", 0.6, conversation_id="conv-9")]), family)
    tasks = json.loads(json.dumps(to_label_studio(queue, family)))
    assert tasks[0]["data"]["text"] == "freeze it"
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == ["report_fraud"]
    # what a reviewer sends back from Label Studio
    tasks[0]["id"] = 17
    tasks[0]["annotations"] = [
        {"completed_by": {"email": "amy@example.com"}, "updated_at": "2026-11-22T10:00:00.123Z",
         "result": [{"from_name": "intent", "to_name": "text", "type": "choices", "value": {"choices": ["freeze_account"]}}]},
    ]  # fmt: skip
    records, unanswered = from_label_studio(
        tasks + [{"data": {"text": "skipped"}, "annotations": []}], family
    )
    assert unanswered == 1
    [record] = records
    assert record["label"] == "freeze_account" and record["predicted_label"] == "report_fraud"
    assert record["annotator"] == "label-studio:amy@example.com" and record["conversation_id"] == "conv-9"
    from pulse_pipeline.core.annotations import parse_record

    assert parse_record(record, config).kind == "intent_label"  # valid under the contract


def test_label_studio_errors_name_the_task(config):
    with pytest.raises(LabelStudioError, match="task 2: no data.text"):
        from_label_studio([{"data": {"text": "x"}}, {"data": {}}], config.family("intent-router"))


def test_labeling_config_lists_every_label(config):
    family = config.family("intent-router")
    root = ET.fromstring(labeling_config(family))
    assert len(root.find("Choices")) == len(family.labels)
