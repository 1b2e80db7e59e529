"""The tiny base model serves on a real vLLM server with a LoRA adapter: its head_dim (32) is one
vLLM's CPU attention supports (v2's 16 crashed the engine on the first request), and an adapter
saved as `pulse train` saves one loads with `--lora-modules` and at run time, and answers exactly
as peft does (float32, greedy).

Slow (one server start, ~40-60 s); skips when the vLLM venv (scripts/install-vllm.sh) is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_pipeline.core.serving import VllmServer
from pulse_pipeline.core.training.base_models import resolve_base_model
from pulse_pipeline_tests.core.test_merging import save_random_lora
from pulse_pipeline_tests.vllm_server import TEST_API_KEY, VllmTestServer, serve_exe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),  # peft
]

MESSAGES = [
    {"role": "system", "content": "You analyse calls."},
    {"role": "user", "content": "Analyse this call transcript about billing"},
]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def tiny(model_cache: Path) -> Path:
    serve_exe()  # skip before building anything
    return resolve_base_model("tiny", model_cache).path


@pytest.fixture(scope="module")
def adapter(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_lora(tiny, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def server(tiny: Path, adapter: Path) -> Iterator[VllmTestServer]:
    max_len = json.loads((tiny / "config.json").read_text())["max_position_embeddings"]  # vLLM's limit
    with VllmTestServer(
        tiny, api_key=TEST_API_KEY, max_model_len=max_len, lora_modules=[f"tiny-lora={adapter}"]
    ) as s:
        print(f"vLLM on tiny started in {s.startup_seconds:.1f} s")
        yield s


def _peft_reply(tiny: Path, adapter: Path | None) -> str:
    """Greedy float32 generation in transformers (with peft for the adapter), decoded as vLLM does."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    prompt = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.eval().generate(**prompt, max_new_tokens=MAX_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)


def test_an_adapter_on_tiny_answers_through_vllm_and_differs_from_the_base(
    server: VllmTestServer, tiny: Path, adapter: Path
):
    with VllmServer(server.url, api_key=TEST_API_KEY) as client:
        base = client.base_model()
        assert base == str(tiny)
        assert client.adapters() == {"tiny-lora": str(adapter)}  # from --lora-modules
        # One model at a time (see serving.py): base, then the adapter, then its runtime-loaded twin.
        base_reply, _ = client.chat(base, MESSAGES, max_tokens=MAX_TOKENS)
        lora_reply, seconds = client.chat("tiny-lora", MESSAGES, max_tokens=MAX_TOKENS)
        client.load_adapter("tiny-lora@runtime", adapter)  # /v1/load_lora_adapter, as evaluation does
        runtime_reply, _ = client.chat("tiny-lora@runtime", MESSAGES, max_tokens=MAX_TOKENS)
    print(f"adapter chat: {seconds * 1000:.0f} ms; base {base_reply!r}; adapter {lora_reply!r}")
    assert lora_reply.strip() and base_reply.strip()
    assert lora_reply != base_reply
    assert runtime_reply == lora_reply
    # float32 greedy decoding: vLLM computes what transformers + peft compute.
    assert lora_reply == _peft_reply(tiny, adapter)
    assert base_reply == _peft_reply(tiny, None)
