"""QA pairs from documents: passages with source ids, parsed and checked pairs citing them, stored
for review (never straight to training), resumable, and settled by a reviewer in Label Studio."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from pulse_pipeline.core.artifacts import open_artifact_store
from pulse_pipeline.core.examples import build_examples
from pulse_pipeline.core.families import parse_config
from pulse_pipeline.core.oracle.oracles import Completion, OracleError
from pulse_pipeline.core.oracle.qa_generation import (
    DocumentsError,
    PairsError,
    check_pair,
    document_id,
    generate_qa,
    load_qa_prompt,
    parse_pairs,
    read_documents,
    split_passages,
)
from pulse_pipeline.core.review import from_label_studio, labeling_config, review_queue, to_label_studio
from pulse_pipeline.core.snapshots import no_examples_reason
from pulse_pipeline.core.store import Store, quarantine
from pulse_pipeline.core.triage import ReviewStatus, triage

DOCS = {
    "gpu-jobs.md": """# GPU jobs

## Partitions

The gpuA100x4 partition has nodes with four A100 GPUs and 256 GB of memory each.

## Time limits

A job on a GPU partition may run for at most 48 hours. The interactive queue allows 1 hour.
""",
    "guides/Storage Notes.txt": "Home folders hold 50 GB and are backed up every night.\n",
    "logo.png": "not a document",
}


def write_docs(root: Path, docs: dict[str, str] = DOCS) -> Path:
    for name, text in docs.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


class PassageOracle:
    """Answers each passage with a grounded pair made from its first sentence, one made-up pair
    (for the grounding check), and the same fixed question every time (for deduplication)."""

    name = model = "scripted"
    max_concurrency = 1

    def __init__(self, *, stop_after: int | None = None, garbage: bool = False, fail: bool = False):
        self.calls: Counter[str] = Counter()
        self.stop_after, self.garbage, self.fail = stop_after, garbage, fail
        self.lock = threading.Lock()

    def complete(self, messages, *, temperature, seed, max_tokens) -> Completion:
        passage = re.search(r"Passage \(.*?\):\n(.*)\n\nWrite", messages[-1]["content"], re.DOTALL).group(1)
        with self.lock:
            if self.stop_after is not None and sum(self.calls.values()) >= self.stop_after:
                raise KeyboardInterrupt
            self.calls[passage] += 1
        if self.fail:
            raise OracleError("HTTP 503 from POST http://oracle/v1/chat/completions: overloaded")
        if self.garbage:
            return Completion("I cannot help with that.", 200, 8, 0.01)
        first = re.split(r"(?<=[.!?])\s", passage)[0]
        reply = json.dumps(
            [
                {"question": f"What does the guide say about {first.split()[1]}?", "answer": first},
                {
                    "question": "Who won the football cup in 1998?",
                    "answer": "France beat Brazil three to nil.",
                },
                {"question": "Where is the documentation kept?", "answer": first},
            ]
        )
        return Completion(reply, 200, 60, 0.01)

    def close(self) -> None:
        pass


@pytest.fixture
def world(tmp_path):
    config = parse_config(
        {
            "families": {
                "cluster-help": {
                    "task": "chat_sft",
                    "annotation_kinds": ["qa_pair", "feedback"],
                    "base_model": "tiny",
                    "prompts": {"system": "You answer questions about the cluster.", "qa_pair": "{question}"},
                    "oracle": {"generate_qa": {"per_passage": 3}},
                }
            }
        },
        source=str(tmp_path / "pulse.yaml"),
        base_dir=tmp_path,
    )
    family = config.family("cluster-help")
    docs = write_docs(tmp_path / "docs")
    artifacts = open_artifact_store(str(tmp_path / "artifacts"))
    with Store(f"sqlite:///{tmp_path / 'pulse.db'}") as store:
        yield config, family, docs, artifacts, store


def run(world, oracle, **kwargs):
    config, family, docs, artifacts, store = world
    return generate_qa(
        store, artifacts, config, family, load_qa_prompt(family), oracle, docs, who="cli:test", **kwargs
    )


def stored(store):
    return [r for r in store.annotations.iter_family("cluster-help")]


def quarantined(store):
    with store.connect() as conn:
        return [r.reason for r in conn.execute(sa.select(quarantine.c.reason))]


def test_documents_split_into_passages_with_source_ids_a_citation_can_name(tmp_path):
    passages, skipped = read_documents(write_docs(tmp_path), passage_chars=200)
    assert skipped == ["logo.png"]
    assert [p.source_id for p in passages] == ["gpu-jobs:p1", "gpu-jobs:p2", "guides-storage-notes:p1"]
    assert passages[1].title == "gpu-jobs.md: Time limits"
    assert passages[1].text.startswith("A job on a GPU partition may run for at most 48 hours.")
    assert document_id("guides/GPU Jobs (v2).md") == "guides-gpu-jobs-v2"

    # paragraphs merge up to the limit; one longer than it is cut at sentence ends
    text = "\n\n".join(["First short paragraph."] * 3 + ["Long sentence number one. " * 20])
    parts = split_passages(text, limit=200)
    assert parts[0][1].count("First short paragraph.") == 3
    assert all(len(body) <= 200 for _, body in parts)
    assert sum(body.count("Long sentence number one.") for _, body in parts) == 20

    (tmp_path / "gpu-jobs.txt").write_text("Another document with the same id as gpu-jobs.md.")
    with pytest.raises(
        DocumentsError, match="gpu-jobs.txt: its source id 'gpu-jobs' is the same as 'gpu-jobs.md'"
    ):
        read_documents(tmp_path, passage_chars=200)
    with pytest.raises(DocumentsError, match="not a folder"):
        read_documents(tmp_path / "missing", passage_chars=200)


def test_pairs_are_parsed_from_json_or_q_and_a_lines_and_checked_against_their_passage(tmp_path):
    assert parse_pairs('Sure! [{"question": "Q one?", "answer": "A\none."}]') == [
        {"question": "Q one?", "answer": "A\none."}
    ]
    assert parse_pairs('{"Question": "Q?", "Answer": "A."} and {"question": "R?", "answer": "B."}') == [
        {"question": "Q?", "answer": "A."},
        {"question": "R?", "answer": "B."},
    ]
    assert parse_pairs("1. Q: How long may a job run?\nA: At most 48\nhours.\n2. Q: Who?\nA: Nobody.") == [
        {"question": "How long may a job run?", "answer": "At most 48 hours."},
        {"question": "Who?", "answer": "Nobody."},
    ]
    with pytest.raises(PairsError, match="no question-answer pair in the answer: 'I cannot help.'"):
        parse_pairs("I cannot help.")

    [passage, *_] = read_documents(write_docs(tmp_path), passage_chars=200)[0]
    grounded = {"question": "How much memory has a gpuA100x4 node?", "answer": "256 GB of memory."}
    assert check_pair(grounded, passage, 0.6) is None
    made_up = {"question": "How much memory has a gpuA100x4 node?", "answer": "It has 512 TB of fast flash."}
    assert "not grounded in its passage" in check_pair(made_up, passage, 0.6)
    assert (
        check_pair({"question": "Memory?", "answer": "256 GB"}, passage, 0.6)
        == "the question is empty or too short"
    )


def test_generated_pairs_cite_their_passage_and_wait_for_review(world):
    config, family, docs, artifacts, store = world
    result = run(world, PassageOracle())
    assert (result.passages, result.documents, result.skipped_files) == (3, 2, ["logo.png"])
    # per passage: one grounded pair kept, one made-up pair rejected; the fixed question once only
    assert (result.generated, result.rejected, result.duplicates) == (4, 3, 2)
    rows = stored(store)
    assert len(rows) == 4
    for row in rows:
        p = row.payload
        [source] = p["sources"]
        assert p["answer"].endswith(f" <<SRC:{source}>>")
        assert p["source"] == "generated" and p["annotator"].startswith("oracle:scripted@")
        assert p["context"] and p["citation_expected"] is True
        assert triage(row.kind, p, family) is ReviewStatus.needs_review
    registry = orjson.loads(artifacts.read_bytes(result.sources_key))
    assert set(registry) == {"gpu-jobs:p1", "gpu-jobs:p2", "guides-storage-notes:p1"}
    assert registry["gpu-jobs:p2"]["text"].startswith("A job on a GPU partition")
    reasons = quarantined(store)
    assert len(reasons) == 3 and all("not grounded in its passage" in r for r in reasons)

    # nothing trains on them before a person reviewed them
    table, stats = build_examples(store, family)
    assert table.num_rows == 0 and stats.by_status["needs_review"] == 4
    assert "4 of 4 records are QA pairs generated from documents waiting for review" in no_examples_reason(
        family, stats
    )
    assert len(review_queue(store.annotations.iter_family(family.name), family).items) == 4

    # a second run asks nothing and stores nothing twice
    again = PassageOracle()
    second = run(world, again)
    assert sum(again.calls.values()) == 0 and second.already_done == 3 and len(stored(store)) == 4


def test_an_interrupted_generation_resumes_without_asking_again(world):
    config, family, docs, artifacts, store = world
    first = PassageOracle(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        run(world, first)
    assert len(stored(store)) == 3  # two passages: two grounded pairs and the fixed question
    second = PassageOracle()
    result = run(world, second)
    assert result.already_done == 2 and sum(second.calls.values()) == 1
    assert len(stored(store)) == 4


def test_unparseable_answers_are_retried_then_quarantined(world):
    config, family, docs, artifacts, store = world
    garbage = PassageOracle(garbage=True)
    result = run(world, garbage)
    assert result.unparsed == 3 and result.generated == 0
    assert set(garbage.calls.values()) == {1 + family.oracle.parse_retries}
    assert sum("no question-answer pair after 3 attempt(s)" in r for r in quarantined(store)) == 3


def test_failed_calls_are_not_journalled_and_are_asked_again(world):
    config, family, docs, artifacts, store = world
    failing = run(world, PassageOracle(fail=True))
    assert failing.failed == 3 and failing.remaining == 3 and "HTTP 503" in failing.first_error
    assert run(world, PassageOracle()).generated == 4


def test_the_cost_cap_stops_the_job(world):
    # each passage costs 0.01: a third would pass the cap, so it is never asked
    result = run(world, PassageOracle(), max_cost=0.025)
    assert result.stopped.startswith("cost cap 0.025 reached") and result.remaining == 1
    assert result.total_cost == pytest.approx(0.02)


def test_a_reviewer_accepts_edits_or_rejects_generated_pairs_in_label_studio(world):
    config, family, docs, artifacts, store = world
    run(world, PassageOracle())
    queue = review_queue(store.annotations.iter_family(family.name), family)
    tasks = to_label_studio(queue, family)
    assert '<Choice value="accept"/>' in labeling_config(family) and "$context" in labeling_config(family)
    assert len(tasks) == 4
    first, second = tasks[0], tasks[1]
    assert first["data"]["context"] and first["data"]["pulse_kind"] == "qa_pair"
    [answer_pre, verdict_pre] = first["predictions"][0]["result"]
    assert answer_pre["value"]["text"] == [first["data"]["pulse_answer"]]
    assert verdict_pre["value"]["choices"] == ["accept"]

    source = first["data"]["pulse_sources"]
    completed = [
        {
            **first,
            "id": 1,
            "annotations": [
                {
                    "id": 10,
                    "completed_by": {"email": "ana@example.org"},
                    "updated_at": "2026-12-06T10:00:00Z",
                    "result": [
                        {
                            "from_name": "answer",
                            "type": "textarea",
                            "value": {"text": ["Edited, without a citation."]},
                        },
                        {"from_name": "verdict", "type": "choices", "value": {"choices": ["accept"]}},
                    ],
                }
            ],
        },
        {
            **second,
            "id": 2,
            "annotations": [
                {
                    "id": 11,
                    "completed_by": {"email": "ana@example.org"},
                    "updated_at": "2026-12-06T10:01:00Z",
                    "result": [{"from_name": "verdict", "type": "choices", "value": {"choices": ["reject"]}}],
                }
            ],
        },
        {**tasks[2], "id": 3, "annotations": []},
    ]
    records, unanswered = from_label_studio(completed, family)
    assert unanswered == 1
    accepted, rejected = records
    assert accepted["kind"] == "qa_pair" and accepted["annotator"] == "label-studio:ana@example.org"
    assert accepted["answer"] == f"Edited, without a citation. <<SRC:{source}>>"
    assert rejected["kind"] == "feedback" and rejected["thumbs"] == "down"
    assert rejected["query"] == second["data"]["pulse_question"]

    from pulse_pipeline.core.ingestion import ingest_lines

    got = ingest_lines(store, [orjson.dumps(r) for r in records], config, source="label-studio")
    assert got.accepted == 2
    queue = review_queue(store.annotations.iter_family(family.name), family)
    assert len(queue.items) == 2 and queue.settled == 2
    table, _ = build_examples(store, family)
    assert table.num_rows == 1  # the accepted pair; the rejected one is not an SFT example
    assert "Edited, without a citation." in json.dumps(table.to_pylist(), default=str)
