"""Evaluation sets: golden files through the training formatters, snapshot rows, and errors that
name the file, the line and the field."""

import pytest

from pulse_pipeline.core.evaluation.sets import EvalSetError, from_records_file, load_sources
from pulse_pipeline_tests.conftest import PROJECT


def test_every_shipped_golden_set_loads_with_categories(config):
    sizes = {}
    for family in config.families.values():
        golden = from_records_file(family, config, family.evaluation.golden_file, "golden")
        assert golden.not_used == {} and all(e.category for e in golden.examples)
        sizes[family.name] = len(golden)
    assert all(n >= 8 for n in sizes.values()), sizes
    qa = from_records_file(config.family("access-qa"), config, PROJECT / "golden" / "access-qa.jsonl")
    categories = {e.category for e in qa.examples}
    assert categories == {
        "resource_specs",
        "software",
        "comparisons",
        "documentation",
        "dynamic",
        "edge_case",
    }
    dynamic = [e for e in qa.examples if e.category == "dynamic"]
    assert all(e.query_type == "dynamic" and e.citation_expected is False for e in dynamic)
    first = qa.examples[0]
    assert [m["role"] for m in first.input] == ["system", "user"]  # the prompt the adapter trains on
    assert first.input[0]["content"] == config.family("access-qa").prompts["system"]
    assert "<<SRC:" in first.reference


def test_golden_citations_resolve_in_the_source_registry(config):
    family = config.family("access-qa")
    sources = load_sources(family.evaluation.sources_file)
    qa = from_records_file(family, config, family.evaluation.golden_file)
    import re

    cited = {m for e in qa.examples for m in re.findall(r"<<SRC:([^<>\s]+)>>", e.reference)}
    assert cited and cited <= set(sources)
    assert all({"title", "url"} <= set(entry) for entry in sources.values())


def test_a_bad_line_names_the_file_line_and_field(tmp_path, config):
    path = tmp_path / "extra.jsonl"
    path.write_text(
        '{"kind": "intent_label", "family": "intent-router", "text": "hi", "label": "greeting"}\n'
        '{"kind": "intent_label", "family": "intent-router", "text": "", "label": "greeting"}\n'
    )
    with pytest.raises(EvalSetError, match=r"extra.jsonl:2: intent_label.text"):
        from_records_file(config.family("intent-router"), config, path)
    path.write_text('{"kind": "qa_pair", "family": "access-qa", "question": "q?", "answer": "a"}\n')
    with pytest.raises(EvalSetError, match=r"extra.jsonl:1: a access-qa record"):
        from_records_file(config.family("intent-router"), config, path)
    path.write_text("not json\n")
    with pytest.raises(EvalSetError, match=r"extra.jsonl:1: not valid JSON"):
        from_records_file(config.family("intent-router"), config, path)


def test_a_csv_test_file_of_text_and_label_is_an_evaluation_set(tmp_path, config):
    family = config.family("intent-router")
    path = tmp_path / "mine.csv"
    path.write_text(f"text,label\nfirst,{family.labels[0]}\nsecond,{family.labels[1]}\n")
    loaded = from_records_file(family, config, path)
    assert loaded.name == "mine" and [e.reference for e in loaded.examples] == list(family.labels[:2])
    path.write_text("text,label\nfirst,no-such-label\n")
    with pytest.raises(EvalSetError, match=r"mine.csv:2: intent_label.label 'no-such-label'"):
        from_records_file(family, config, path)
