import random

import pytest

from pulse_pipeline.core.training.base_models import resolve_base_model
from pulse_pipeline.core.training.batching import (
    chat_features,
    collate,
    length_grouped_batches,
    padding_share,
    token_budget_batches,
)
from pulse_pipeline.core.training.losses import IGNORE


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base_model("tiny", tmp_path_factory.mktemp("models")).path)


def chat(answer, prompt="Analyse this call transcript"):
    return [
        {"role": "system", "content": "You analyse calls."},
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
    ]


def test_labels_cover_only_the_answer(tokenizer):
    f = chat_features(tokenizer, chat('{"sentiment": "negative"}'), 0.5, 512)
    trained = [t for t in f.labels if t != IGNORE]
    assert tokenizer.decode(trained) == '{"sentiment": "negative"}<|im_end|>'
    assert f.weight == 0.5 and len(f.labels) == len(f.input_ids)


def test_too_long_drops_the_prompt_start_never_the_answer(tokenizer):
    long_prompt = "the customer repeats the account number again " * 40
    full = chat_features(tokenizer, chat("ok", long_prompt), 1.0, 10_000)
    answer = [t for t in full.labels if t != IGNORE]
    cut = chat_features(tokenizer, chat("ok", long_prompt), 1.0, 64)
    assert len(cut) == 64 and [t for t in cut.labels if t != IGNORE] == answer
    assert chat_features(tokenizer, chat("x " * 200), 1.0, 64) is None  # the answer alone is too long


def test_collate_pads_to_the_batch_not_to_max_length(tokenizer):
    feats = [chat_features(tokenizer, chat("a" * n), 1.0, 1024) for n in (1, 30)]
    batch = collate(feats, tokenizer.pad_token_id)
    width = max(len(f) for f in feats)
    assert batch["input_ids"].shape == (2, width) and batch["weights"].tolist() == [1.0, 1.0]
    assert batch["attention_mask"][0].sum().item() == len(feats[0])
    assert (batch["labels"][0, len(feats[0]) :] == IGNORE).all()


def test_widths_round_up_to_a_multiple(tokenizer):
    feats = [chat_features(tokenizer, chat("a" * n), 1.0, 1024) for n in (1, 30)]
    batch = collate(feats, tokenizer.pad_token_id, multiple=64)
    width = max(len(f) for f in feats)
    assert batch["input_ids"].shape[1] == -(-width // 64) * 64 > width
    assert batch["attention_mask"].sum().item() == sum(len(f) for f in feats)  # padding stays masked
    assert (batch["labels"][:, width:] == IGNORE).all()


def test_a_token_budget_fills_micro_batches_up_to_it():
    lengths = [10, 200, 30, 31, 500, 12, 90, 64]
    batches = token_budget_batches(range(8), lengths, budget=256, multiple=64)
    assert sorted(i for b in batches for i in b) == list(range(8))  # every example once
    assert batches[0] == [4]  # longer than the budget alone: a micro-batch of its own
    for b in batches[1:]:
        width = -(-max(lengths[i] for i in b) // 64) * 64
        assert len(b) * width <= 256
    assert [len(b) for b in batches] == [1, 1, 2, 4]  # short examples share: 4 x 64 tokens
    assert token_budget_batches([], lengths, budget=256) == []


def test_length_grouping_covers_everything_and_cuts_padding():
    rng = random.Random(3)
    lengths = [rng.choice([20, 40, 80, 400]) + rng.randint(0, 10) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 8, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == length_grouped_batches(lengths, 8, seed=1)  # deterministic
    assert batches != length_grouped_batches(lengths, 8, seed=1, epoch=1)  # reshuffled each epoch
    order = list(range(1000))
    rng.shuffle(order)
    random_batches = [order[i : i + 8] for i in range(0, 1000, 8)]
    assert padding_share(batches, lengths) < 0.1 < padding_share(random_batches, lengths)


def test_a_packed_row_attends_within_each_example_only(tokenizer, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    from pulse_pipeline.core.training.batching import pack

    model = AutoModelForCausalLM.from_pretrained(
        resolve_base_model("tiny", tmp_path_factory.mktemp("m")).path, attn_implementation="sdpa"
    ).eval()
    features = [
        chat_features(tokenizer, chat(answer, prompt), 1.0, 256)
        for answer, prompt in [("short", "Hi"), ('{"quality": 7}', "A longer prompt " * 5), ("ok", "Why")]
    ]
    packed = pack(features)
    assert packed["input_ids"].shape == (1, sum(len(f) for f in features))  # no padding at all
    with torch.no_grad():
        out = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits
        start = 0
        for f in features:
            alone = model(input_ids=torch.tensor([f.input_ids])).logits
            torch.testing.assert_close(out[:, start : start + len(f)], alone, rtol=1e-4, atol=1e-4)
            start += len(f)
    starts = [0, len(features[0]), len(features[0]) + len(features[1])]
    assert all(packed["labels"][0, s] == IGNORE for s in starts)  # no example learns the next one's start
    assert packed["position_ids"][0, starts[1]] == 0 and packed["position_ids"][0, starts[1] - 1] > 0


def test_a_template_without_generation_tags_still_trains_only_the_answer(tokenizer):
    """Most models' own templates (SmolLM2's, for one) have no {% generation %} tags."""
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = plain.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    features = chat_features(plain, chat('{"quality": 7}', "Rate it"), 1.0, 256)
    assert plain.decode([t for t in features.labels if t != IGNORE]) == '{"quality": 7}<|im_end|>\n'
    tagged = chat_features(tokenizer, chat('{"quality": 7}', "Rate it"), 1.0, 256)
    assert features.input_ids == tagged.input_ids
