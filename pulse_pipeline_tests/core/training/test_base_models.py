import hashlib
import json
import subprocess
import sys
import textwrap

import pytest

from pulse_pipeline.core.training.base_models import BaseModelError, build_tiny, resolve_base_model


def _digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def test_tiny_is_built_once_the_same_way_and_cached(tmp_path):
    first = resolve_base_model("tiny", tmp_path / "cache")
    assert first.architecture == "causal_lm" and (first.path / "config.json").is_file()
    mtime = (first.path / "model.safetensors").stat().st_mtime_ns
    assert resolve_base_model("tiny", tmp_path / "cache").path == first.path
    assert (first.path / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    other = tmp_path / "again"
    other.mkdir()
    build_tiny(other)
    assert _digest(other) == _digest(first.path)  # seeded: the same bytes every build
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.path.name]  # no temporary leftovers


def test_tiny_loads_generates_and_masks_assistant_tokens(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base_model("tiny", tmp_path).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    messages = [
        {"role": "system", "content": "You analyse calls."},
        {"role": "user", "content": "Analyse this call transcript"},
        {"role": "assistant", "content": '{"sentiment": "negative"}'},
    ]
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    answer = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(answer) == '{"sentiment": "negative"}<|im_end|>'
    assert tokenizer.unk_token_id not in out["input_ids"]  # byte-level: nothing is unknown
    prompt = tokenizer.apply_chat_template(
        messages[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 5
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    assert {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    } <= names  # LoRA targets
    assert torch.isfinite(model(**prompt).logits).all()


VLLM_CPU_HEAD_DIMS = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}  # vLLM 0.32 CPU attention


def test_tiny_v3_has_a_head_dim_vllm_serves_and_stays_tiny(model_cache):
    from transformers import AutoModelForCausalLM

    path = resolve_base_model("tiny", model_cache).path
    assert path.name == "tiny-v3"  # a recipe change is a new cache folder: no stale v2 build is reused
    assert json.loads((path / "pulse_base_model.json").read_text()) == {
        "name": "tiny",
        "recipe": "3",
        "seed": 0,
    }
    config = json.loads((path / "config.json").read_text())
    assert config["head_dim"] == config["hidden_size"] // config["num_attention_heads"] == 32
    assert config["head_dim"] in VLLM_CPU_HEAD_DIMS  # v2's 16 crashed vLLM on the first request
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (2, 64, 2)
    assert config["num_key_value_heads"] == 1 and config["max_position_embeddings"] == 1024
    model = AutoModelForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) < 250_000  # as small (and fast to train) as v2


def test_minilm_comes_from_its_package():
    from transformers import AutoModelForSequenceClassification

    model = resolve_base_model("minilm-l6", None)
    assert model.architecture == "encoder"
    head = AutoModelForSequenceClassification.from_pretrained(model.path, num_labels=3)
    assert head.config.hidden_size == 384


def test_local_folders_and_unknown_names(tmp_path):
    built = resolve_base_model("tiny", tmp_path)
    assert resolve_base_model(str(built.path), tmp_path).path == built.path
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="has no config.json"):
        resolve_base_model(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(
        BaseModelError, match="not one of tiny, smollm2-135m, minilm-l6.*set base_model to its folder"
    ):
        resolve_base_model("someone/not-downloaded-model", tmp_path)


def test_training_does_not_import_the_demo_generator(model_cache):
    """The tiny model's tokenizer corpus lives in core; production training never loads the demo."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path

        import pulse_pipeline.core.training.base_models
        import pulse_pipeline.core.training.recipe
        import pulse_pipeline.core.training.runner
        from pulse_pipeline.core.training.base_models import resolve_base_model

        model = resolve_base_model("tiny", Path({str(model_cache)!r}))
        assert (model.path / "tokenizer.json").is_file(), model.path
        demo = sorted(m for m in sys.modules if m.startswith("pulse_pipeline.demo"))
        assert not any(m.startswith("pulse_pipeline.demo") for m in sys.modules), demo
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_smollm2_is_converted_once_to_a_normal_checkpoint(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = resolve_base_model("smollm2-135m", tmp_path)
    assert not (model.path / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()
    lm = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    assert "quantization_config" not in lm.config.to_dict()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = lm.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1] :])
