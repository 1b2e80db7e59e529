"""The vLLM client against a REAL vLLM server (CPU build, SmolLM2-135M in float32), one server for
the whole module (start-up ~40 s). Skips when the vLLM venv is missing (scripts/install-vllm.sh)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_pipeline.core.serving import (
    ServingError,
    ServingUnavailable,
    VllmServer,
    served_name,
    unload_spares,
)
from pulse_pipeline_tests.vllm_server import TEST_API_KEY, VllmTestServer

pytestmark = pytest.mark.slow

# Prompts on which the test adapter visibly changes SmolLM2's greedy answer.
COLORS = [{"role": "user", "content": "Name three colors."}]
COUNT = [{"role": "user", "content": "Count to 0"}]
API_KEY = TEST_API_KEY  # the server requires it, so every test goes through vLLM's auth


@pytest.fixture(scope="module")
def adapter_dir(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 LoRA adapter with random non-zero weights (init_lora_weights=False): its outputs
    differ from the base model's, and no training is needed to get it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter") / "support-v3"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(vllm_server: VllmTestServer) -> VllmTestServer:
    return vllm_server  # one server for the session (conftest), shared with the evaluation tests


@pytest.fixture(scope="module")
def client(server: VllmTestServer) -> Iterator[VllmServer]:
    with VllmServer(server.url, api_key=API_KEY, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def support(client: VllmServer, adapter_dir: Path) -> Iterator[str]:
    """The adapter loaded under its serving name for the whole module."""
    name = served_name("support", 1)
    client.load_adapter(name, adapter_dir)
    yield name
    client.unload_adapter(name)


def test_models_and_base_model(server: VllmTestServer, client: VllmServer, smollm2: Path) -> None:
    assert client.health()
    base = client.base_model()
    assert base == str(smollm2)  # vLLM names the base model by the path it was started with
    entry = next(m for m in client.models() if m["id"] == base)
    assert entry["parent"] is None and entry["max_model_len"] == 1024
    assert base not in client.adapters()
    # The /v1 suffix of an OpenAI-style base URL is accepted and dropped.
    with VllmServer(server.url + "/v1/", api_key=API_KEY) as same:
        assert same.url == server.url and same.base_model() == base


def test_load_adapter_under_its_served_name(client: VllmServer, adapter_dir: Path, tmp_path: Path) -> None:
    name = served_name("support", 3)
    assert name == "support@3"
    client.load_adapter(name, adapter_dir)
    try:
        assert client.adapters()[name] == str(adapter_dir)
        entry = next(m for m in client.models() if m["id"] == name)
        assert entry["parent"] == client.base_model() and entry["root"] == str(adapter_dir)

        # The same name with the same path again: nothing to do (no duplicate-name error).
        client.load_adapter(name, adapter_dir)
        client.load_adapter(name, f"{adapter_dir}/")
        assert list(client.adapters()).count(name) == 1

        # The same name with other weights: names are immutable.
        other = tmp_path / "support-v3-retrained"
        shutil.copytree(adapter_dir, other)
        with pytest.raises(ServingError, match="immutable") as err:
            client.load_adapter(name, other)
        assert client.url in str(err.value) and str(other) in str(err.value)
        assert client.adapters()[name] == str(adapter_dir)
    finally:
        assert client.unload_adapter(name) is True
    assert name not in client.adapters()
    assert client.unload_adapter(name) is False


def test_wrong_api_key_raises_without_showing_it(server: VllmTestServer) -> None:
    with VllmServer(server.url, api_key="sk-wrong-key") as wrong:
        assert wrong.health()  # /health needs no key
        with pytest.raises(ServingError, match=r"GET /v1/models failed with HTTP 401: Unauthorized") as err:
            wrong.models()
    assert not isinstance(err.value, ServingUnavailable)
    assert "sk-wrong-key" not in str(err.value) and server.url in str(err.value)


def test_missing_adapter_path_raises_with_vllms_message(client: VllmServer, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-adapter"
    with pytest.raises(ServingError) as err:
        client.load_adapter("support@9", missing)
    message = str(err.value)
    assert not isinstance(err.value, ServingUnavailable)
    assert client.url in message and "HTTP 404" in message
    assert "No adapter found" in message  # vLLM's own words
    assert "\n" not in message
    assert "support@9" not in client.adapters()


def test_unknown_model_raises_with_vllms_message(client: VllmServer) -> None:
    with pytest.raises(ServingError, match=r"HTTP 404 NotFoundError: The model `support@404` does not exist"):
        client.chat("support@404", COUNT, max_tokens=4)


def test_adapter_answers_differently_from_base(client: VllmServer, support: str) -> None:
    base_text, base_seconds = client.chat(client.base_model(), COLORS, max_tokens=16)
    lora_text, lora_seconds = client.chat(support, COLORS, max_tokens=16)
    assert base_text and lora_text and base_text != lora_text
    assert 0 < base_seconds < 60 and 0 < lora_seconds < 60


def test_greedy_output_matches_peft(
    client: VllmServer, support: str, smollm2: Path, adapter_dir: Path
) -> None:
    """vLLM's LoRA serving computes what training (transformers + peft) computes: greedy, float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32), adapter_dir
    )
    model.eval()

    def peft_greedy(messages: list[dict[str, str]], max_tokens: int) -> str:
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    for messages in (COUNT, COLORS):
        expected = peft_greedy(messages, 16)
        served, _ = client.chat(support, messages, max_tokens=16)
        assert served == expected, messages


def test_chat_many_keeps_input_order(client: VllmServer, support: str) -> None:
    conversations = [[{"role": "user", "content": f"Count to {n}"}] for n in range(5)]
    one_by_one = [client.chat(support, c, max_tokens=12)[0] for c in conversations]
    assert len(set(one_by_one)) > 1  # different answers, so the order is visible
    results = client.chat_many(support, conversations, max_tokens=12, concurrency=4)
    assert [text for text, _ in results] == one_by_one
    assert all(0 < seconds < 60 for _, seconds in results)
    assert client.chat_many(support, [], max_tokens=4) == []
    with pytest.raises(ValueError, match="concurrency"):
        client.chat_many(support, conversations, max_tokens=4, concurrency=0)


def test_unload_spares_unloads_the_oldest_beyond_the_limit_and_never_one_kept(
    client: VllmServer, adapter_dir: Path
) -> None:
    order = ["sync-20260101-0000", "sync-20260102-0000", "sync-20260103-0000", "sync-20260104-0000"]
    try:
        for version in order:
            client.load_adapter(served_name("sync", version), adapter_dir)
        unloaded = unload_spares(client, "sync", keep={order[0], order[3]}, order=order, max_loaded=2)
        assert unloaded == [served_name("sync", order[1]), served_name("sync", order[2])]
        assert sorted(n for n in client.adapters() if n.startswith("sync@")) == [
            served_name("sync", order[0]),
            served_name("sync", order[3]),
        ]
        assert unload_spares(client, "sync", keep=set(), order=order, max_loaded=2) == []  # at the limit
    finally:
        for version in order:
            client.unload_adapter(served_name("sync", version))
