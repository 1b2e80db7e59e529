import datetime as dt
import json
from collections import Counter
from types import SimpleNamespace

import orjson
import pytest

from pulse_pipeline.core.annotations import parse_record
from pulse_pipeline.core.examples import (
    ExampleBuilder,
    build_examples,
    formatter_version,
    normalize,
    segment_agrees,
)
from pulse_pipeline.core.examples import records as records_of
from pulse_pipeline.core.ingestion import ingest_lines
from pulse_pipeline.core.store import Store, annotations
from pulse_pipeline.core.triage import ReviewStatus, triage
from pulse_pipeline_tests.core.test_annotations import valid

T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def rows(config, records):
    """Stored-annotation look-alikes, in arrival order."""
    out = []
    for i, rec in enumerate(records, start=1):
        ann = parse_record(rec, config)
        created = ann.created_at or T0 + dt.timedelta(minutes=i)
        out.append(
            SimpleNamespace(
                seq=i, id=ann.id, kind=ann.kind, payload=ann.payload, created_at=created, ingested_at=created
            )
        )
    return out


def build(config, family, records):
    """Chat families: the record-by-record builder."""
    builder = ExampleBuilder(config.family(family))
    for row in rows(config, records):
        builder.add(row)
    return builder


@pytest.fixture
def text_build(config, tmp_path):
    """Text families: through a real store and the column-wise path."""

    def run(family, records, fam=None):
        with Store(f"sqlite:///{tmp_path / 'x.db'}") as store:
            store.engine.dispose()
            ingest_lines(store, [orjson.dumps(r) for r in records], config, source="t")
            table, stats = build_examples(store, fam or config.family(family))
        with Store(f"sqlite:///{tmp_path / 'x.db'}") as store, store.begin() as conn:
            conn.execute(annotations.delete())
        return records_of(fam or config.family(family), table), stats

    return run


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"annotator": "amy"}, ReviewStatus.human_reviewed),
        ({"confidence": 0.9, "provider": "encoder"}, ReviewStatus.auto_approved),
        ({"confidence": 0.85, "provider": "encoder"}, ReviewStatus.needs_review),
        ({"confidence": 0.75, "provider": "encoder"}, ReviewStatus.needs_review),
        ({"confidence": 0.69, "provider": "encoder"}, ReviewStatus.priority_review),
        ({"confidence": 0.95, "provider": "llm_fallback"}, ReviewStatus.priority_review),
        ({"confidence": None}, ReviewStatus.needs_review),
    ],
)
def test_triage_routes_captures(config, changes, status):
    payload = {**valid("intent_label"), **changes}
    payload = {k: v for k, v in payload.items() if v is not None}
    assert triage("intent_label", payload, config.family("intent-router")) is status
    assert triage("qa_pair", valid("qa_pair"), config.family("access-qa")) is ReviewStatus.human_reviewed


def test_only_approved_and_reviewed_intents_become_examples(text_build):
    records = [
        valid("intent_label", text="a", annotator="amy"),
        valid("intent_label", text="b", confidence=0.95, provider="encoder"),
        valid("intent_label", text="c", confidence=0.75, provider="encoder"),
        valid("intent_label", text="d", confidence=0.5, provider="llm_fallback"),
        valid("intent_label", text="e", confidence=0.95, provider="llm_fallback"),
    ]
    out, stats = text_build("intent-router", records)
    assert sorted(r["text"] for r in out) == ["a", "b"]
    assert stats.by_status == {
        "human_reviewed": 1,
        "auto_approved": 1,
        "needs_review": 1,
        "priority_review": 2,
    }
    [a] = [r for r in out if r["text"] == "a"]
    assert a == {"id": a["id"], "text": "a", "label": "freeze_account", "weight": 1.0}


def test_column_wise_triage_agrees_with_the_record_rules(text_build, config):
    """The vectorized triage and `triage.triage` decide every case alike."""
    records = []
    for i, (c, p) in enumerate(
        (c, p)
        for c in (None, 0.1, 0.69, 0.7, 0.75, 0.85, 0.86, 1.0)
        for p in (None, "encoder", "llm_fallback")
    ):
        record = {
            k: v
            for k, v in valid("intent_label", text=f"text {i}").items()
            if k not in ("confidence", "provider")
        }
        record.update({k: v for k, v in (("confidence", c), ("provider", p)) if v is not None})
        records.append(record)
    # the same predictions logged as interactions (the capture service's records)
    logged = [
        {
            "kind": "interaction",
            "family": r["family"],
            "input": r["text"] + " (logged)",
            "predicted_label": r["label"],
        }
        | {k: r[k] for k in ("confidence", "provider") if k in r}
        for r in records
    ]
    _, stats = text_build("intent-router", records + logged)
    fam = config.family("intent-router")
    expected = Counter(str(triage(r["kind"], r, fam)) for r in records + logged)
    assert stats.by_status == expected
    assert expected == Counter(
        {s: 2 * n for s, n in Counter(str(triage("intent_label", r, fam)) for r in records).items()}
    )


def test_a_logged_interaction_is_a_capture_for_intent_families_and_only_logged_elsewhere(text_build, config):
    unpredicted = valid("interaction", input="no prediction here", predicted_label=...)
    router = [
        valid("interaction", input="freeze it right now", confidence=0.95),  # approved: an example
        valid("interaction", input="freeze it maybe", confidence=0.5),  # waits for review, first
        unpredicted,  # nothing to learn from
        valid("feedback", family="intent-router", rating=..., thumbs="down"),  # a verdict, no example
    ]
    out, stats = text_build("intent-router", router)
    assert stats.by_status == {"auto_approved": 1, "priority_review": 1, "logged": 2}
    assert [(r["text"], r["label"]) for r in out] == [("freeze it right now", "freeze_account")]

    scorer = [valid("score_label"), valid("interaction", family="article-scorer", predicted_label=...)]
    out, stats = text_build("article-scorer", scorer)
    assert stats.by_status == {"human_reviewed": 1, "logged": 1} and len(out) == 1

    chat = valid("interaction", family="call-analysis", input=[{"role": "user", "content": "hi"}])
    b = build(config, "call-analysis", [valid("call_correction"), chat])
    assert b.stats.by_status == {"human_reviewed": 1, "logged": 1} and len(b.examples()) == 1


def test_call_correction_is_a_full_call_chat(config):
    b = build(config, "call-analysis", [valid("call_correction")])
    [ex] = b.examples()
    system, user, assistant = ex.messages
    assert (
        system["role"] == "system" and system["content"] == config.family("call-analysis").prompts["system"]
    )
    assert user["content"].startswith("Analyse this call transcript")
    assert "[00:03] Customer: My card was charged twice." in user["content"]
    assert json.loads(assistant["content"])["sentiment"] == "negative"
    assert ex.weight == 1.0 and ex.group == "call:call-1"


def test_segment_review_names_the_segment_type_and_carries_corrected_timestamps(config):
    b = build(config, "call-analysis", [valid("segment_review")])
    [ex] = b.examples()
    assert ex.messages[1]["content"].startswith("COMPLIANCE FLAGS")
    assert "Agent: can I confirm your date of birth?" in ex.messages[1]["content"]
    answer = json.loads(ex.messages[2]["content"])
    assert answer == {
        "assessment": {"action_detected": True, "quality_impact": "positive"},
        "timestamp_start": 12.0,
        "timestamp_end": 15.5,
    }
    assert ex.weight == 1.0 and ex.stratum == "compliance_flag"


@pytest.mark.parametrize(
    ("changes", "weight"),
    [
        ({"disagreement_reason": ..., "original_timestamp_start": ..., "original_timestamp_end": ...}, 0.5),
        (
            {
                "disagreement_reason": "false_positive",
                "original_timestamp_start": ...,
                "original_timestamp_end": ...,
            },
            1.0,
        ),
        ({"disagreement_reason": ...}, 1.0),  # timestamps moved without a stated reason
        (
            {
                "disagreement_reason": ...,
                "original_timestamp_start": ...,
                "original_timestamp_end": ...,
                "trainer_assessment": {"action_detected": False},
            },
            1.0,
        ),
    ],
)
def test_segment_weights_follow_the_pulse_rules(config, changes, weight):
    record = valid("segment_review", **changes)
    assert segment_agrees(record) is (weight == 0.5)
    [ex] = build(config, "call-analysis", [record]).examples()
    assert ex.weight == weight


def test_qa_keeps_citation_markers_and_feedback_rules(config):
    b = build(config, "access-qa", [
        valid("qa_pair"),
        valid("feedback", query="q1", rating=1, corrected_response="Use ssh <<SRC:documentation:login>>"),
        valid("feedback", query="q2", rating=2, corrected_response=...),
        valid("feedback", query="q3", rating=5, corrected_response=...),
    ])  # fmt: skip
    answers = sorted(e.messages[2]["content"] for e in b.examples())
    assert answers == ["128 cores <<SRC:compute-resources:delta>>", "Use ssh <<SRC:documentation:login>>"]
    assert b.stats.negatives == 1 and b.stats.feedback_not_used == 1


def test_score_labels_are_vectors_in_dimension_order(text_build, config, tmp_path):
    family = config.family("article-scorer")
    scores = {d: i for i, d in reversed(list(enumerate(family.dimensions)))}  # record order does not matter
    [record], _ = text_build("article-scorer", [valid("score_label", scores=scores, group_id="article-7")])
    assert record["labels"] == [float(i) for i in range(8)] and record["dimension_names"] == list(
        family.dimensions
    )
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        ingest_lines(
            store,
            [orjson.dumps(valid("score_label", scores=scores, group_id="article-7"))],
            config,
            source="t",
        )
        table, _ = build_examples(store, family)
    assert table["group"].to_pylist() == ["article:article-7"] and table["stratum"].to_pylist() == [
        "mid"
    ]  # mean 3.5


def test_pii_is_redacted_everywhere_and_counted(config):
    b = build(config, "call-analysis", [valid(
        "call_correction",
        transcript=[{"speaker": "Customer", "text": "mail me at jane@example.com or 415-555-0132, card 4111 1111 1111 1111"}],
        corrected_output={"sentiment": "neutral", "summary": "sent to jane@example.com"},
    )])  # fmt: skip
    [ex] = b.examples()
    text = ex.messages[1]["content"] + ex.messages[2]["content"]
    assert "jane@example.com" not in text and "[EMAIL]" in text and "[PHONE]" in text and "[CARD]" in text
    assert b.stats.redactions == {"EMAIL": 2, "PHONE": 1, "CARD": 1}


def test_redaction_can_be_switched_off_per_family(config, text_build):
    family = config.family("intent-router")
    off = family.model_copy(update={"redaction": family.redaction.model_copy(update={"enabled": False})})
    record = valid("intent_label", text="mail jane@example.com, call 415-555-0132", annotator="a")
    [on_row], on_stats = text_build("intent-router", [record])
    [off_row], off_stats = text_build("intent-router", [record], fam=off)
    assert on_row["text"] == "mail [EMAIL], call [PHONE]" and on_stats.redactions == {"EMAIL": 1, "PHONE": 1}
    assert off_row["text"] == record["text"] and not off_stats.redactions
    assert formatter_version(off) != formatter_version(family)


def test_duplicates_collapse_to_the_latest_judgment(text_build):
    out, stats = text_build("intent-router", [
        valid("intent_label", text="Freeze my account", label="freeze_account", annotator="a", created_at="2026-05-01T10:00:00Z"),
        valid("intent_label", text="Freeze my account", label="report_fraud", annotator="b", created_at="2026-05-03T10:00:00Z"),
        valid("intent_label", text="freeze my account!", label="balance", annotator="c", created_at="2026-05-02T10:00:00Z"),
        valid("intent_label", text="Ünïcode wörds, too", label="balance", annotator="c"),
        valid("intent_label", text="ünïcode WÖRDS too", label="transfer", annotator="d"),
    ])  # fmt: skip
    assert sorted((r["text"], r["label"]) for r in out) == [
        ("Freeze my account", "report_fraud"),  # the latest by created_at, though not the last to arrive
        ("ünïcode WÖRDS too", "transfer"),
    ]
    assert (stats.exact_duplicates, stats.normalized_duplicates) == (1, 2)


def test_column_wise_normalization_matches_the_python_one():
    import pyarrow as pa

    from pulse_pipeline.core.text_examples import normalized

    texts = ["Freeze my account!", "  ünïcode — WÖRDS_too 42 ", "a\tb\nc", "日本語のテキスト、です", "x"]
    assert normalized(pa.array(texts)).to_pylist() == [normalize(t) for t in texts]


def _imported_modules(module: str) -> set[str]:
    """Every pulse_pipeline module `module`'s source imports, at module level or in a function."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    package = module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name.startswith("pulse_pipeline")}


def test_examples_and_text_examples_import_each_other_one_way_only():
    import subprocess
    import sys

    chat, text = "pulse_pipeline.core.examples", "pulse_pipeline.core.text_examples"
    assert text in _imported_modules(chat)  # the chat module dispatches text families to text_examples
    assert chat not in _imported_modules(text)  # ... and text_examples never imports it back
    for alone, other in ((chat, text), (text, chat)):
        code = f"import sys, {alone}; print({other!r} in sys.modules)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip() == str(alone == chat), (alone, done.stdout)


def test_oracle_labels_train_weighted_apart_and_a_person_wins_the_same_text(text_build, config):
    from pulse_pipeline.core.families import OracleConfig

    fam = config.family("intent-router").model_copy(update={"oracle": OracleConfig(weight=0.5)})
    by_oracle = {"kind": "intent_label", "family": "intent-router", "source": "oracle", "annotator": "oracle:m@v1"}
    person = {"kind": "intent_label", "family": "intent-router", "annotator": "amy"}
    records = [
        # the person labelled it first; the oracle's later label of the same text does not replace it
        {**person, "text": "Please freeze my card", "label": "report_lost_card", "created_at": "2026-05-01T00:00:00Z"},
        {**by_oracle, "text": "please freeze my card!", "label": "freeze_account", "created_at": "2026-05-02T00:00:00Z"},
        {**by_oracle, "text": "what is my balance", "label": "balance", "created_at": "2026-05-02T00:00:00Z"},
        # written by an LLM, not checked by anyone: it waits for review, whatever its annotator
        {**person, "source": "generated", "text": "i lost my card", "label": "report_lost_card"},
    ]
    examples, stats = text_build("intent-router", records, fam)
    assert stats.by_status == {"human_reviewed": 1, "oracle_labelled": 2, "needs_review": 1}
    assert [str(triage(r["kind"], r, fam)) for r in records] == [
        "human_reviewed", "oracle_labelled", "oracle_labelled", "needs_review"
    ]  # fmt: skip
    got = {e["text"]: (e["label"], e["weight"]) for e in examples}
    assert got == {"Please freeze my card": ("report_lost_card", 1.0), "what is my balance": ("balance", 0.5)}
