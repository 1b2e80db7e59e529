"""One OpenAI-compatible chat-completions endpoint (vLLM, Ollama, OpenAI, LM Studio, llama.cpp
server...), as the LLM judge (core/evaluation/judge.py) and the labelling oracle (core/oracle.py)
talk to it: a base URL normalized to end in `/v1`, an optional bearer key that never reaches a log,
a report or an exception, retries with exponential backoff after connection errors, HTTP 429 and
5xx (a `Retry-After` is honoured, capped at 30 s), the model discovered from `GET /models` when
none is named, and `response_format: json_object` asked for until the server rejects it once.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

log = logging.getLogger(__name__)

_MAX_RETRY_AFTER = 30.0  # seconds; a longer Retry-After is capped


class EndpointSettings(Protocol):
    url: str
    api_key: str | None
    model: str | None
    timeout: float
    max_concurrency: int
    retries: int
    backoff: float  # seconds before the first retry; doubles on each further retry


class EndpointUnavailable(RuntimeError):
    """The endpoint cannot be used at all: it is unreachable, or no model can be found there.

    The message is one line naming who (judge, oracle), the URL (never the API key) and the cause,
    e.g. `judge at http://host:8000/v1 unreachable: ConnectError: [Errno 111] Connection refused`.
    """


class ChatError(RuntimeError):
    """One request got an answer that is no chat completion (an HTTP error, another body); one line."""


def normalize_url(url: str, variable: str) -> str:
    """`http://h:8000`, `http://h:8000/` and `http://h:8000/v1/` all become `http://h:8000/v1`.

    A path that already ends in a version (`/v1`, `/v2`...) is kept; `variable` names the setting
    in the error about a URL that is no http(s) URL."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{variable} must be an http(s) URL such as http://host:8000/v1, got {url!r}")
    if not re.search(r"/v\d+$", parts.path):
        url += "/v1"
    return url


def display_url(url: str) -> str:
    """The URL without any user:password part, fit for logs, reports and exceptions."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass(frozen=True)
class ChatReply:
    text: str
    prompt_tokens: int | None  # from the response's `usage`, when the server reports it
    completion_tokens: int | None


class ChatEndpoint:
    """A client of one endpoint; use as a context manager. Safe to share between threads."""

    def __init__(self, settings: EndpointSettings, who: str):
        self.settings = settings
        self.who = who
        self.model = settings.model or ""
        self.use_response_format = True
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        limits = httpx.Limits(
            max_connections=settings.max_concurrency, max_keepalive_connections=settings.max_concurrency
        )
        self.client = httpx.Client(
            base_url=settings.url, headers=headers, timeout=settings.timeout, limits=limits
        )

    def __enter__(self) -> ChatEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    @property
    def url(self) -> str:
        return display_url(self.settings.url)

    def redact(self, text: str) -> str:
        """The text with the API key (should a server echo it) replaced by ***."""
        key = self.settings.api_key
        return text.replace(key, "***") if key else text

    def unavailable(self, exc: httpx.TransportError) -> EndpointUnavailable:
        return EndpointUnavailable(f"{self.who} at {self.url} unreachable: {self.transport_error(exc)}")

    def transport_error(self, exc: httpx.TransportError) -> str:
        return self.redact(f"{type(exc).__name__}: {exc}")

    # -- requests --------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One request, retried after connection errors, 429 and 5xx with exponential backoff.

        Returns the last response whatever its status; raises httpx.TransportError when the last
        attempt could not get a response.
        """
        settings = self.settings
        for attempt in range(settings.retries + 1):
            last = attempt == settings.retries
            delay = settings.backoff * 2**attempt
            try:
                response = self.client.request(method, path, json=body)
            except httpx.TransportError as exc:
                if last:
                    raise
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if not _retryable(response.status_code) or last:
                    return response
                reason = f"HTTP {response.status_code}"
                delay = max(delay, _retry_after(response))
            log.warning(
                "%s %s %s%s failed (%s); retry %d/%d in %.1fs",
                self.who,
                method,
                self.url,
                path,
                self.redact(reason),
                attempt + 1,
                settings.retries,
                delay,
            )
            time.sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

    def http_error(self, method: str, path: str, response: httpx.Response) -> str:
        detail = " ".join(response.text.split())[:300]
        return self.redact(
            f"HTTP {response.status_code} from {method} {self.url}{path}: {detail}".rstrip(": ")
        )

    def discover_model(self, hint: str) -> str:
        """The first model id of `GET {url}/models`; `hint` says which setting names one instead."""
        try:
            response = self.request("GET", "/models")
        except httpx.TransportError as exc:
            raise self.unavailable(exc) from None
        if not response.is_success:
            raise EndpointUnavailable(
                f"{self.who} at {self.url}: {self.http_error('GET', '/models', response)}; {hint}"
            )
        try:
            model = str(response.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointUnavailable(
                f"{self.who} at {self.url}: GET /models listed no model; {hint}"
            ) from None
        log.info("%s at %s: using model %s (the first listed)", self.who, self.url, model)
        return model

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        json_object: bool = True,
    ) -> ChatReply:
        """One chat completion. With `json_object`, `response_format: json_object` is asked for
        until the server rejects it with HTTP 400 once (then the request is sent again without it,
        and later ones never carry it). Raises ChatError for an HTTP error or a body that is no
        chat completion; httpx.TransportError escapes after the retries."""
        path = "/chat/completions"
        with_format = json_object and self.use_response_format
        response = self.request("POST", path, self._body(messages, temperature, max_tokens, with_format))
        if response.status_code == 400 and with_format:
            retry = self.request("POST", path, self._body(messages, temperature, max_tokens, False))
            if retry.is_success:
                self._drop_response_format()
            response = retry
        if not response.is_success:
            raise ChatError(self.http_error("POST", path, response))
        try:
            body = response.json()
            content = body["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            detail = " ".join(response.text.split())[:200]
            raise ChatError(self.redact(f"POST {self.url}{path}: not a chat completion: {detail}")) from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return ChatReply(
            text=content if isinstance(content, str) else "",
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
        )

    def _body(
        self,
        messages: list[dict[str, str]],
        temperature: float,
        max_tokens: int | None,
        response_format: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "temperature": temperature, "messages": messages}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if response_format:
            body["response_format"] = {"type": "json_object"}
        return body

    def _drop_response_format(self) -> None:
        with self._lock:
            if self.use_response_format:
                log.info("%s at %s rejects response_format; sending requests without it", self.who, self.url)
            self.use_response_format = False


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _retryable(status: int) -> bool:
    return status == 429 or 500 <= status < 600


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(_MAX_RETRY_AFTER, max(0.0, float(response.headers.get("retry-after", "0"))))
    except ValueError:
        return 0.0


def json_values(text: str, starts: str = "{", *, inside: bool = True) -> Iterator[Any]:
    """The JSON values in a model's reply, in order: one decoded at each character of `starts`
    that opens a valid value (code fences and prose around them are skipped; line breaks inside
    strings, which small models write, are accepted). `inside=False` goes on after each value
    instead of also looking inside it."""
    decoder = json.JSONDecoder(strict=False)
    pattern = re.compile("[" + re.escape(starts) + "]")
    position = 0
    while (match := pattern.search(text, position)) is not None:
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            position = match.start() + 1
            continue
        yield value
        position = match.start() + 1 if inside else end
