"""Oracle prompts: versions, rendering, and answers parsed into the family's record fields."""

from __future__ import annotations

import pytest

from pulse_pipeline.core.annotations import parse_record
from pulse_pipeline.core.families import OracleConfig
from pulse_pipeline.core.oracle.corpus import CorpusError, CorpusItem, read_corpus
from pulse_pipeline.core.oracle.prompts import (
    AnswerError,
    PromptError,
    load_prompt,
    parse_answer,
    record,
    render,
)


@pytest.fixture
def router(config):
    return config.family("intent-router")


@pytest.fixture
def scorer(config):
    return config.family("article-scorer")


def test_the_version_is_the_template_hash_and_placeholders_are_filled(router, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text('Labels:\n{{labels}}\nText: {{ text }}\nReply {"label": "..."}')
    fam = router.model_copy(update={"oracle": OracleConfig(prompt=path)})
    prompt = load_prompt(fam)
    [message] = render(prompt, fam, CorpusItem("i1", "freeze my card"))
    assert message["role"] == "user"
    assert message["content"].startswith("Labels:\nacc")  # the label file, one a line
    assert message["content"].endswith(
        'Text: freeze my card\nReply {"label": "..."}'
    )  # JSON needs no escaping
    first = prompt.version
    path.write_text(path.read_text() + "\n")
    assert load_prompt(fam).version != first and len(first) == 12
    assert load_prompt(router).source == "built-in classification prompt"


def test_an_unknown_placeholder_or_a_family_without_the_record_kind_is_refused(router, config, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("{{text}} {{dimensions}}")
    with pytest.raises(PromptError, match=r"unknown placeholder\(s\) dimensions for a classification family"):
        load_prompt(router.model_copy(update={"oracle": OracleConfig(prompt=path)}))
    with pytest.raises(PromptError, match="does not learn from qa_pair"):
        load_prompt(config.family("call-analysis"))


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("freeze_account", "freeze_account"),
        ("Freeze Account.", "freeze_account"),
        ("Label: freeze_account\nbecause the user wants it frozen", "freeze_account"),
        ('```json\n{"label": "balance"}\n```', "balance"),
        ("<think>maybe balance?</think>\nThe intent is freeze_account.", "freeze_account"),
    ],
)
def test_labels_are_read_leniently(router, reply, label):
    assert parse_answer(router, reply) == {"label": label}


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("", "empty"),
        ('{"label": "close_my_account_now"}', "'close_my_account_now' is not one of the family's labels"),
        ("I am not sure what this is.", "names none of the family's labels"),
        ("balance or freeze_account", "names several labels"),
    ],
)
def test_a_label_outside_the_set_is_an_error_naming_it(router, reply, why):
    with pytest.raises(AnswerError, match=why):
        parse_answer(router, reply)


def test_scores_need_every_dimension_inside_the_range(scorer):
    dims = scorer.dimensions
    full = {d: 5 for d in dims}
    assert parse_answer(scorer, f"Here: {full}".replace("'", '"')) == {"scores": {d: 5.0 for d in dims}}
    nested = {"scores": {d.upper(): "7" for d in dims}}
    assert parse_answer(scorer, str(nested).replace("'", '"'))["scores"]["depth"] == 7.0
    with pytest.raises(AnswerError, match="no score for dimension 'sourcing'"):
        parse_answer(scorer, str({d: 5 for d in dims[:-1]}).replace("'", '"'))
    with pytest.raises(AnswerError, match=r"score 11 for 'clarity' is outside score_range \[0, 10\]"):
        parse_answer(scorer, str(full | {"clarity": 11}).replace("'", '"'))
    one = scorer.model_copy(update={"dimensions": ("relevance",)})
    assert parse_answer(one, "I would say 8.5 out of 10") == {"scores": {"relevance": 8.5}}


def test_a_record_is_a_valid_annotation_marked_as_the_oracles(router, config):
    item = CorpusItem("item-7", "freeze my card")
    rec = record(router, item, {"label": "freeze_account"}, oracle="smollm2-135m", version="abc123def456")
    assert rec["id"] == "oracle-abc123def456-item-7"
    assert rec["source"] == "oracle" and rec["annotator"] == "oracle:smollm2-135m@abc123def456"
    ann = parse_record(rec, config)
    assert (ann.kind, ann.payload["label"]) == ("intent_label", "freeze_account")
    long = record(
        router, CorpusItem("x" * 200, "t"), {"label": "balance"}, oracle="m", version="abc123def456"
    )
    assert len(long["id"]) <= 128


def test_a_corpus_line_that_cannot_be_read_names_the_line_and_the_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n\n{"id": "b", "text": "b", "scores": {"x": 1}}\n')
    items = read_corpus(path)
    assert [i.id for i in items] == [items[0].id, "b"] and items[1].human == {"scores": {"x": 1}}
    assert read_corpus(path)[0].id == items[0].id  # derived from the text: stable
    for body, why in (
        ('{"text": "a"}\n{"title": "t"}\n', "line 2: field 'text' \\(or 'question'\\) is missing"),
        ('{"text": "a", "id": "x"}\n{"text": "b", "id": "x"}\n', "line 2: field 'id' 'x' repeats line 1"),
        ('{"text": "a", "scores": {"x": "high"}}\n', "line 1: field 'scores' must map dimensions to numbers"),
        ("not json\n", "line 1: not JSON"),
    ):
        path.write_text(body)
        with pytest.raises(CorpusError, match=why):
            read_corpus(path)
