"""Preference data from feedback: KTO examples with TRL's weights from ratings and thumbs, DPO pairs
from corrections, from call corrections and from several ratings of one prompt; the prompts,
groups and redaction are the family's examples' own."""

import pytest

from pulse_pipeline.core.examples import ExampleBuilder
from pulse_pipeline.core.preferences import PreferenceBuilder, kto_weights, preference_tables
from pulse_pipeline_tests.core.test_annotations import valid
from pulse_pipeline_tests.core.test_examples import rows


def fb(query="How many cores does Delta have?", response="It has 64.", **verdict):
    record = valid("feedback", query=query, response=response, rating=..., corrected_response=...)
    return record | verdict


def built(config, family, records):
    builder = PreferenceBuilder(config.family(family))
    for row in rows(config, records):
        builder.add(row)
    return builder


def test_ratings_and_thumbs_alone_give_kto_examples_with_trl_weights(config):
    records = [fb(query=f"q{i}", rating=r) for i, r in enumerate([5, 4, 5, 4])]
    records += [fb(query="q-up", thumbs="up"), fb(query="q-up2", thumbs="up")]
    records += [fb(query="q-bad", rating=1), fb(query="q-down", thumbs="down")]
    records += [fb(query="q-meh", rating=3)]  # neither: left out, counted
    b = built(config, "access-qa", records)
    kto = b.kto()
    assert [e.desirable for e in kto].count(True) == 6 and [e.desirable for e in kto].count(False) == 2
    stats = b.stats.to_json()
    assert stats["neutral_ratings"] == 1 and stats["kto_desirable_share"] == 0.75
    # 6 desirable to 2: ratio 3, above TRL's [1, 4/3]: the undesirable side is weighted up to 4/3
    assert (stats["kto_desirable_weight"], stats["kto_undesirable_weight"]) == (1.0, 2.25)
    assert b.pairs() == []  # one rating per prompt: no pair


@pytest.mark.parametrize(
    ("desirable", "undesirable", "weights"),
    [(1, 4, (4.0, 1.0)), (4, 3, (1.0, 1.0)), (3, 3, (1.0, 1.0)), (10, 2, (1.0, 3.75)), (5, 0, (1.0, 1.0))],
)
def test_kto_weights_bring_the_ratio_into_trls_range(desirable, undesirable, weights):
    assert kto_weights(desirable, undesirable) == weights
    d_w, u_w = weights
    if desirable and undesirable:
        assert 1 - 1e-9 <= desirable * d_w / (undesirable * u_w) <= 4 / 3 + 1e-9


def test_corrections_give_dpo_pairs_with_the_examples_prompt_and_group(config):
    correction = fb(rating=1, corrected_response="Delta has 128 cores <<SRC:compute-resources:delta>>.")
    same = fb(query="Another question", rating=2, corrected_response="It has 64.")  # equals the answer
    email = fb(query="Mail me at a.person@example.org", corrected_response="Write to help@example.org")
    b = built(config, "access-qa", [correction, same, email])
    pairs = {p.chosen: p for p in b.pairs()}
    pair = pairs["Delta has 128 cores <<SRC:compute-resources:delta>>."]
    assert pair.rejected == "It has 64." and pair.source == "correction"
    assert pair.group == "question:how many cores does delta have"
    example_prompt, example_group = ExampleBuilder(config.family("access-qa")).prompt("feedback", correction)
    assert pair.prompt == example_prompt and pair.group == example_group
    assert b.stats.identical == 1
    redacted = pairs["Write to [EMAIL]"]  # PII is redacted in pairs as in examples
    assert redacted.prompt[1]["content"] == "Mail me at [EMAIL]"


def test_a_call_correction_with_the_ai_output_is_a_pair(config):
    b = built(
        config,
        "call-analysis",
        [valid("call_correction"), valid("call_correction", call_id="c2", ai_output=...)],
    )
    (pair,) = b.pairs()
    assert pair.source == "call_correction" and pair.group == "call:call-1"
    assert '"sentiment":"negative"' in pair.chosen and '"sentiment":"neutral"' in pair.rejected
    assert pair.prompt[1]["content"].startswith("Analyse this call transcript")


def test_several_rated_answers_to_one_prompt_are_ranked_into_pairs(config):
    records = [
        fb(response="Answer A", rating=5),
        fb(response="Answer B", rating=2),
        fb(response="Answer C", rating=4),
        fb(response="Answer C", rating=4),  # the same answer rated twice: its mean counts
        fb(query="Elsewhere", response="Answer D", rating=1),
    ]
    b = built(config, "access-qa", records)
    pairs = sorted((p.chosen, p.rejected) for p in b.pairs() if p.source == "ratings")
    assert pairs == [("Answer A", "Answer B"), ("Answer A", "Answer C"), ("Answer C", "Answer B")]
    assert b.stats.pairs == {"ratings": 3}
    dpo, kto = preference_tables(b.pairs(), b.kto())
    assert dpo.num_rows == 3 and set(dpo["group"].to_pylist()) == {"question:how many cores does delta have"}
    assert kto.num_rows == 4 and kto.schema.field("label").type == "bool"


def test_preference_data_is_for_chat_families(config):
    with pytest.raises(
        ValueError, match="preference data is for chat families; intent-router is classification"
    ):
        PreferenceBuilder(config.family("intent-router"))
