"""The oracle: a large model that labels data, behind one small interface with two implementations.

- `HttpOracle`: any OpenAI-compatible chat endpoint (vLLM, OpenAI, Ollama...; core/chat_api.py:
  retries with backoff, the key never logged), with a rate limit in requests per minute and up
  to `max_concurrency` requests in flight.
- `LocalOracle`: a causal LM run in this process with transformers (default `smollm2-135m`, built
  from a package, so the whole workflow runs offline); the KV cache of a prompt's shared turns
  (instruction, worked examples) is computed once and reused for every item.

Both answer `complete(messages, temperature=..., seed=...)` with the text and what it cost: tokens
as the server reports them (counted with the tokenizer locally; estimated at 4 characters a token
when a server reports none) times the configured prices per million tokens. `pulse_pipeline.
settings.Settings.oracle()` builds the settings from the PULSE_ORACLE_* variables; this module
reads no environment variable.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pulse_pipeline.core import chat_api

DEFAULT_LOCAL_MODEL = "smollm2-135m"
_MODEL_HINT = "set PULSE_ORACLE_MODEL to the oracle's model id"


class OracleError(RuntimeError):
    """One call failed (an HTTP error, a body that is no chat completion); one line, no secret."""


OracleUnavailable = chat_api.EndpointUnavailable  # the oracle cannot be reached at all


@dataclass(frozen=True)
class Price:
    """Price per million tokens, in whatever currency the user counts in."""

    input: float = 0.0
    output: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


@dataclass(frozen=True)
class OracleSettings:
    """Where the oracle is. `url` None: the local oracle runs `model` (a base model name, default
    smollm2-135m); else the endpoint at `url` (normalized to end in /v1) serves `model` (default:
    its first listed)."""

    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    timeout: float = 60.0
    max_concurrency: int = 4
    retries: int = 2
    backoff: float = 1.0
    requests_per_minute: float = 0.0  # 0: no limit
    price: Price = Price()

    def __post_init__(self) -> None:
        url = (self.url or "").strip() or None
        object.__setattr__(self, "url", chat_api.normalize_url(url, "PULSE_ORACLE_URL") if url else None)
        object.__setattr__(self, "api_key", (self.api_key or "").strip() or None)
        object.__setattr__(self, "model", (self.model or "").strip() or None)
        for name in ("timeout", "max_concurrency"):
            if getattr(self, name) <= 0:
                raise ValueError(f"oracle {name} must be > 0, got {getattr(self, name)}")
        if self.retries < 0 or self.requests_per_minute < 0:
            raise ValueError("oracle retries and requests_per_minute must be >= 0")
        if self.price.input < 0 or self.price.output < 0:
            raise ValueError("oracle prices must be >= 0")


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    tokens_estimated: bool = False  # the server reported no usage: 4 characters a token


class Oracle(Protocol):
    name: str  # "local:smollm2-135m", or "<model> at <url>"
    model: str
    max_concurrency: int

    def complete(
        self, messages: list[dict[str, str]], *, temperature: float, seed: int, max_tokens: int
    ) -> Completion: ...

    def close(self) -> None: ...


class _RateLimit:
    """At most `per_minute` request starts a minute, evenly spaced; 0: no limit. Thread-safe."""

    def __init__(self, per_minute: float, clock: Any = time.monotonic, sleep: Any = time.sleep):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


class HttpOracle:
    def __init__(self, settings: OracleSettings):
        if settings.url is None:
            raise ValueError("HttpOracle needs a URL (PULSE_ORACLE_URL)")
        self.settings = settings
        self.endpoint = chat_api.ChatEndpoint(settings, "oracle")  # type: ignore[arg-type]
        self.max_concurrency = settings.max_concurrency
        self._limit = _RateLimit(settings.requests_per_minute)
        self._model_lock = threading.Lock()

    @property
    def model(self) -> str:
        with self._model_lock:
            if not self.endpoint.model:
                self.endpoint.model = self.endpoint.discover_model(_MODEL_HINT)
            return self.endpoint.model

    @property
    def name(self) -> str:
        return f"{self.model} at {self.endpoint.url}"

    def complete(
        self, messages: list[dict[str, str]], *, temperature: float, seed: int, max_tokens: int
    ) -> Completion:
        import httpx

        self.model  # noqa: B018 (discovered before the first call, once)
        self._limit.wait()
        try:
            reply = self.endpoint.chat(
                messages, temperature=temperature, max_tokens=max_tokens, json_object=False
            )
        except chat_api.ChatError as exc:
            raise OracleError(str(exc)) from None
        except httpx.TransportError as exc:
            raise self.endpoint.unavailable(exc) from None
        estimated = reply.prompt_tokens is None or reply.completion_tokens is None
        prompt = reply.prompt_tokens if reply.prompt_tokens is not None else _estimate(messages)
        completion = (
            reply.completion_tokens if reply.completion_tokens is not None else -(-len(reply.text) // 4)
        )
        return Completion(
            reply.text, prompt, completion, self.settings.price.cost(prompt, completion), estimated
        )

    def close(self) -> None:
        self.endpoint.client.close()


def _estimate(messages: list[dict[str, str]]) -> int:
    return -(-sum(len(m.get("content", "")) + 8 for m in messages) // 4)


class LocalOracle:
    """A causal LM in this process (float32 on the CPU, the GPU when there is one). One call at a time."""

    max_concurrency = 1

    def __init__(self, base_model: str, models_dir: Path, price: Price = Price()):
        self.model = base_model
        self.name = f"local:{base_model}"
        self.models_dir = models_dir
        self.price = price
        self._loaded: Any = None
        self._prefix: Any = None  # (the shared turns, their token ids, their KV cache)
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._loaded is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from pulse_pipeline.core.training.base_models import resolve_base_model

            path = resolve_base_model(self.model, self.models_dir).path
            device = "cuda" if torch.cuda.is_available() else "cpu"
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
            self._loaded = (tokenizer, model, device)
        return self._loaded

    def complete(
        self, messages: list[dict[str, str]], *, temperature: float, seed: int, max_tokens: int
    ) -> Completion:
        import torch

        with self._lock:
            tokenizer, model, device = self._load()
            ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            ids = {k: v.to(device) for k, v in ids.items()}
            stop = [
                t
                for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
                if isinstance(t, int)
            ]
            sampling: dict[str, Any] = {"do_sample": False}
            if temperature > 0:
                torch.manual_seed(seed)
                sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95}
            with torch.inference_mode():
                out = model.generate(
                    **ids,
                    max_new_tokens=max_tokens,
                    eos_token_id=stop,
                    pad_token_id=stop[0],
                    **self._prefix_cache(messages, ids["input_ids"]),
                    **sampling,
                )
            new = out[0, ids["input_ids"].shape[1] :]
            text = tokenizer.decode(new, skip_special_tokens=True)
        prompt, completion = int(ids["input_ids"].shape[1]), int(new.shape[0])
        return Completion(text, prompt, completion, self.price.cost(prompt, completion))

    def _prefix_cache(self, messages: list[dict[str, str]], input_ids: Any) -> dict[str, Any]:
        """`generate`'s keyword for a copy of the KV cache of every turn but the last (the
        instruction and worked examples every item of a prompt shares), computed once per prompt:
        each call then only reads its own item (the same tokens out, 2-3x faster on a few-shot
        prompt). Empty when the turns before the last do not tokenize as a prefix of the whole."""
        import copy
        import inspect

        import torch

        if len(messages) < 2:
            return {}
        tokenizer, model, device = self._loaded
        key = repr(messages[:-1])
        if self._prefix is None or self._prefix[0] != key:
            prefix_ids = tokenizer.apply_chat_template(messages[:-1], return_tensors="pt", return_dict=True)[
                "input_ids"
            ].to(device)
            # transformers 5 renames `past_key_values` to `cache` (the old name warns, then goes in 6)
            name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
            cache = None
            n = prefix_ids.shape[1]
            if n < input_ids.shape[1] and torch.equal(input_ids[0, :n], prefix_ids[0]):
                from transformers import DynamicCache

                cache = DynamicCache()
                with torch.inference_mode():
                    model(input_ids=prefix_ids, **{name: cache})  # fills the cache in place
            self._prefix = (key, prefix_ids, name, cache)
        _, prefix_ids, name, cache = self._prefix
        n = prefix_ids.shape[1]
        if cache is None or n >= input_ids.shape[1] or not torch.equal(input_ids[0, :n], prefix_ids[0]):
            return {}
        return {name: copy.deepcopy(cache)}

    def close(self) -> None:
        self._loaded = None
        self._prefix = None


def open_oracle(settings: OracleSettings, models_dir: Path) -> Oracle:
    """The HTTP oracle when `settings.url` is set, else the local one."""
    if settings.url:
        return HttpOracle(settings)
    return LocalOracle(settings.model or DEFAULT_LOCAL_MODEL, models_dir, settings.price)


# -- asking about items ------------------------------------------------------------------------------

RETRY_TEMPERATURE = 0.7  # a retry samples: a greedy model would give the same answer again
MAX_KEPT_REPLY = 500  # characters of a reply kept in journals, reports and quarantine


@dataclass
class Asked:
    """What the oracle said about one item: the parsed fields, or why there are none."""

    item_id: str
    fields: dict[str, Any] | None = None  # {"label"} | {"scores"} | {"answer"}
    reply: str = ""  # the last reply, cut to MAX_KEPT_REPLY
    error: str | None = None  # why unparsed after the retries, or why the call failed
    failed: bool = False  # the call itself failed (no answer to parse)
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


def ask(oracle: Oracle, prompt: Any, family: Any, item: Any, *, retries: int, max_tokens: int) -> Asked:
    """Ask about one item: greedy first, then up to `retries` sampled retries while the answer
    cannot be parsed. A failed call (OracleError) ends it as failed; OracleUnavailable escapes."""
    from pulse_pipeline.core.oracle.prompts import AnswerError, parse_answer, render

    asked = Asked(item.id)
    messages = render(prompt, family, item)
    for attempt in range(retries + 1):
        asked.attempts += 1
        try:
            done = oracle.complete(
                messages,
                temperature=0.0 if attempt == 0 else RETRY_TEMPERATURE,
                seed=attempt,
                max_tokens=max_tokens,
            )
        except OracleError as exc:
            asked.error, asked.failed = str(exc), True
            return asked
        asked.prompt_tokens += done.prompt_tokens
        asked.completion_tokens += done.completion_tokens
        asked.cost += done.cost
        asked.reply = done.text[:MAX_KEPT_REPLY]
        try:
            asked.fields = parse_answer(family, done.text)
        except AnswerError as exc:
            asked.error = str(exc)
            continue
        asked.error = None
        return asked
    return asked


def ask_many(
    oracle: Oracle, prompt: Any, family: Any, items: list[Any], *, retries: int, max_tokens: int
) -> list[Asked]:
    """`ask` for each item, up to the oracle's `max_concurrency` at once; results in input order."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: Any) -> Asked:
        return ask(oracle, prompt, family, item, retries=retries, max_tokens=max_tokens)

    if oracle.max_concurrency <= 1 or len(items) <= 1:
        return [one(item) for item in items]
    with ThreadPoolExecutor(max_workers=oracle.max_concurrency, thread_name_prefix="oracle") as pool:
        return list(pool.map(one, items))
