"""The two oracles for real: SmolLM2-135M in process, and the same model behind a REAL vLLM
server (OpenAI-compatible, API key), which must give the same answers; the settings, the rate
limit and an unreachable endpoint."""

from __future__ import annotations

import pytest

from pulse_pipeline.core.oracle.corpus import read_corpus
from pulse_pipeline.core.oracle.oracles import (
    HttpOracle,
    LocalOracle,
    OracleSettings,
    OracleUnavailable,
    Price,
    _RateLimit,
    ask_many,
)
from pulse_pipeline.core.oracle.prompts import load_prompt
from pulse_pipeline.settings import get_settings
from pulse_pipeline_tests.core.oracle.climate import climate_config, write_corpus
from pulse_pipeline_tests.vllm_server import TEST_API_KEY, _free_port


@pytest.fixture(scope="module")
def local(smollm2):
    oracle = LocalOracle("smollm2-135m", smollm2.parent, Price(input=2.0, output=10.0))
    yield oracle
    oracle.close()


@pytest.mark.slow
def test_the_local_oracle_answers_greedily_and_counts_what_it_cost(local):
    messages = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
    first = local.complete(messages, temperature=0.0, seed=0, max_tokens=8)
    assert "paris" in first.text.lower()
    assert local.complete(messages, temperature=0.0, seed=5, max_tokens=8).text == first.text  # greedy
    assert first.prompt_tokens > 10 and 0 < first.completion_tokens <= 8
    assert first.cost == pytest.approx((first.prompt_tokens * 2.0 + first.completion_tokens * 10.0) / 1e6)
    assert local.name == "local:smollm2-135m"


@pytest.mark.slow
def test_the_local_oracle_reuses_the_shared_turns_cache_and_answers_the_same(local, tmp_path):
    family = climate_config(tmp_path).family("climate")
    prompt = load_prompt(family)
    items = read_corpus(write_corpus(tmp_path / "corpus.jsonl", n_on=3, n_off=3, n_edge=0))
    cached = ask_many(local, prompt, family, items, retries=0, max_tokens=8)
    key, prefix_ids, _, cache = local._prefix
    assert cache is not None and prefix_ids.shape[1] > 100  # the instruction and worked examples
    fresh = LocalOracle("smollm2-135m", local.models_dir)
    fresh._prefix_cache = lambda messages, input_ids: {}  # every call reads the whole prompt
    try:
        uncached = ask_many(fresh, prompt, family, items, retries=0, max_tokens=8)
    finally:
        fresh.close()
    assert [a.reply for a in cached] == [a.reply for a in uncached]
    assert [a.prompt_tokens for a in cached] == [a.prompt_tokens for a in uncached]  # counted in full


@pytest.mark.slow
def test_the_http_oracle_on_a_real_vllm_server_answers_as_the_local_model_does(local, vllm_server, tmp_path):
    settings = OracleSettings(url=vllm_server.url, api_key=TEST_API_KEY, price=Price(input=2.0, output=10.0))
    oracle = HttpOracle(settings)
    try:
        assert oracle.model == str(vllm_server.model)  # the first model the server lists
        family = climate_config(tmp_path).family("climate")
        prompt = load_prompt(family)
        items = read_corpus(write_corpus(tmp_path / "corpus.jsonl", n_on=4, n_off=4, n_edge=2))
        over_http = ask_many(oracle, prompt, family, items, retries=0, max_tokens=8)
        in_process = ask_many(local, prompt, family, items, retries=0, max_tokens=8)
        assert [a.fields for a in over_http] == [a.fields for a in in_process]  # float32 greedy on both
        assert all(a.fields for a in over_http)
        first = over_http[0]
        assert first.prompt_tokens == in_process[0].prompt_tokens  # the server's usage: the same tokens
        assert first.cost == pytest.approx((first.prompt_tokens * 2.0 + first.completion_tokens * 10.0) / 1e6)
    finally:
        oracle.close()
    wrong_key = HttpOracle(
        OracleSettings(url=vllm_server.url, api_key="sk-wrong-key-123456", model="m", retries=0)
    )
    with pytest.raises(Exception, match="HTTP 401") as failed:
        wrong_key.complete([{"role": "user", "content": "hi"}], temperature=0, seed=0, max_tokens=2)
    assert "sk-wrong-key-123456" not in str(failed.value)


def test_an_unreachable_endpoint_is_one_line_without_the_key():
    settings = OracleSettings(
        url=f"http://127.0.0.1:{_free_port()}", api_key="sk-secret-oracle-key", retries=0
    )
    with pytest.raises(OracleUnavailable) as exc:
        HttpOracle(settings).model  # noqa: B018
    message = str(exc.value)
    assert message.startswith(
        f"oracle at http://127.0.0.1:{settings.url.split(':')[2]} unreachable: ConnectError"
    )
    assert "sk-secret" not in message and "\n" not in message


def test_the_rate_limit_spaces_request_starts():
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limit = _RateLimit(120, clock=lambda: now[0], sleep=sleep)  # one every 0.5 s
    for _ in range(4):
        limit.wait()
    assert slept == [0.5, 0.5, 0.5]
    unlimited = _RateLimit(0, clock=lambda: now[0], sleep=sleep)
    unlimited.wait()
    assert len(slept) == 3


def test_settings_pick_the_oracle_and_mask_its_key(monkeypatch):
    assert get_settings().oracle().url is None  # no URL: the local oracle
    monkeypatch.setenv("PULSE_ORACLE_URL", "http://oracle.example:8000")
    monkeypatch.setenv("PULSE_ORACLE_API_KEY", "sk-oracle-secret-42")
    monkeypatch.setenv("PULSE_ORACLE_PRICE_INPUT", "0.15")
    monkeypatch.setenv("PULSE_ORACLE_REQUESTS_PER_MINUTE", "60")
    get_settings.cache_clear()
    settings = get_settings()
    oracle = settings.oracle()
    assert oracle.url == "http://oracle.example:8000/v1" and oracle.price == Price(0.15, 0.0)
    assert oracle.requests_per_minute == 60 and "sk-oracle-secret-42" not in repr(oracle)
    assert "sk-oracle-secret-42" in settings.secret_values()
    monkeypatch.setenv("PULSE_ORACLE_URL", "oracle.example")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="PULSE_ORACLE_URL must be an http\\(s\\) URL"):
        get_settings().oracle()
