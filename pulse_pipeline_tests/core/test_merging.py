"""Merging a chat LoRA adapter into its base: the merged model computes what the adapter does,
loads with plain transformers, and the refusals (encoder adapters, an existing folder) are clear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pulse_pipeline.core.merging import MERGE_METADATA, MergeError, merge_adapter
from pulse_pipeline.core.training.base_models import resolve_base_model

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MESSAGES = [{"role": "user", "content": "Analyse this call transcript about billing"}]


def save_random_lora(base: Path, out: Path, *, seed: int = 1) -> Path:
    """A LoRA adapter for `base` with random non-zero A and B (an untrained one would be a no-op),
    saved with the base's tokenizer, as `pulse train` saves a chat adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM", init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = str(base)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(model_cache: Path) -> Path:
    return resolve_base_model("tiny", model_cache).path


@pytest.fixture(scope="module")
def adapter(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_lora(tiny, tmp_path_factory.mktemp("adapter") / "adapter")


def _prompt(tokenizer):
    return tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def test_merged_model_computes_what_the_adapter_does(adapter: Path, tiny: Path, tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge_adapter(adapter, tmp_path / "merged")
    assert out == tmp_path / "merged"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "{% generation %}" in tokenizer.chat_template  # the adapter folder's template, as trained
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<pad>"
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32), adapter
    ).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())

    prompt = _prompt(tokenizer)
    with torch.no_grad():
        expected = peft_model(**prompt).logits
        logits = merged(**prompt).logits
        assert not torch.allclose(base(**prompt).logits, expected, atol=1e-2)  # the adapter does something
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    greedy = {"max_new_tokens": 12, "do_sample": False}
    assert torch.equal(merged.generate(**prompt, **greedy), peft_model.generate(**prompt, **greedy))

    meta = json.loads((out / MERGE_METADATA).read_text())
    assert meta["source_adapter_folder"] == str(adapter.resolve())
    assert meta["base_model"] == str(tiny.resolve())  # from adapter_config.json
    assert meta["peft_version"] and meta["merged_at"].endswith("+00:00")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temporary folder left behind


def test_base_path_overrides_and_an_existing_folder_is_refused(adapter: Path, tiny: Path, tmp_path: Path):
    moved = tmp_path / "adapter-elsewhere"
    moved.mkdir()
    for f in adapter.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")  # trained on another machine
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match=r"is not a model folder.*pass base_path"):
        merge_adapter(moved, tmp_path / "merged")

    (tmp_path / "merged").mkdir()  # an empty folder is fine: it is replaced
    out = merge_adapter(moved, tmp_path / "merged", base_path=tiny)
    assert json.loads((out / MERGE_METADATA).read_text())["base_model"] == str(tiny.resolve())
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    with pytest.raises(MergeError, match="already exists and is not empty"):
        merge_adapter(moved, out, base_path=tiny)
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter-elsewhere", "merged"]


def test_encoder_and_non_adapter_folders_are_refused(adapter: Path, tmp_path: Path):
    encoder = tmp_path / "classifier"
    encoder.mkdir()
    (encoder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": None}))
    (encoder / "head_config.json").write_text(json.dumps({"task": "classification"}))
    with pytest.raises(
        MergeError, match="classification/regression adapters carry a custom head; serve them with peft"
    ):
        merge_adapter(encoder, tmp_path / "merged")
    with pytest.raises(MergeError, match="has no adapter_config.json"):
        merge_adapter(tmp_path, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
