"""A client for vLLM's OpenAI-compatible server: list the served models, load and unload LoRA
adapters at run time, and chat with the base model or an adapter.

Plain Python (no Dagster): `VllmServer(url, api_key=None, timeout=120)`, or `open_replicas(urls)`
for several replicas. This module reads no environment variable; the Dagster `ServingEnvironment`
resource opens the replicas named by PULSE_VLLM_URL (comma-separated; and PULSE_VLLM_API_KEY). A
URL is the server's root, `http://host:8000`; a trailing `/v1` is accepted and dropped (vLLM's
/health lives at the root).

The server must run with `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True for
`load_adapter` / `unload_adapter`. An adapter is served under an immutable name,
`served_name(family, version)` = "family@version": loading a name again with the same path is a
no-op, with another path an error, so a name always means the same weights. Nothing here ever
reloads a name in place (`load_inplace`): vLLM can then answer from prefix-cache blocks computed
by the old weights (vllm issue 42125). How a promotion uses this on every replica:
core/registry/rollout.py.

One model at a time: on vLLM's CPU backend (0.32.0) a base-model request that lands in the same
batch as adapter requests can be answered by an adapter (once every --max-loras slot has been used,
the base model's LoRA index -1 wraps to the last slot). `chat_many` therefore sends requests for ONE
model concurrently; callers comparing models run them one after another, never interleaved.

Errors are `ServingError` (one line: the server URL, the request, and vLLM's own message; never
the API key); a server that cannot be reached (or does not answer in time) raises
`ServingUnavailable`, a subclass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

Message = dict[str, Any]  # {"role": "user", "content": "..."}

_MAX_DETAIL = 500  # characters of a server's error message kept in an exception


class ServingError(RuntimeError):
    """A request to the vLLM server failed; the message names the server and says why."""


class ServingUnavailable(ServingError):
    """The vLLM server could not be reached, or did not answer in time."""


def served_name(family: str, version: int | str) -> str:
    """The immutable name an adapter version is served under: "family@version"."""
    return f"{family}@{version}"


def _display_url(url: str) -> str:
    """The URL without any user:password part, fit for logs and exceptions."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _root_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"vLLM server URL must be http(s)://host[:port], got {_display_url(url)!r}")
    return url


class VllmServer:
    """One vLLM server. Thread-safe; holds a connection pool (`close()` or use it as a context manager)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120):
        self.url = _root_url(url)
        self.timeout = timeout
        self._api_key = api_key or None
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"VllmServer({_display_url(self.url)!r})"

    @property
    def display_url(self) -> str:
        """The URL without any user:password part, fit for logs and messages."""
        return _display_url(self.url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- models and adapters -------------------------------------------------------------------------

    def health(self) -> bool:
        """True when the server answers GET /health with 200 (its engine is up)."""
        try:
            return self._client.get("/health", timeout=min(self.timeout, 10)).status_code == 200
        except httpx.TransportError:
            return False

    def models(self) -> list[dict[str, Any]]:
        """GET /v1/models: the base model (parent None) and each loaded adapter (parent = base)."""
        body = self._json(self._request("GET", "/v1/models"), "GET", "/v1/models")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ServingError(f"vLLM server at {self.display_url}: GET /v1/models returned no model list")
        return data

    def base_model(self) -> str:
        """The id of the base model (the entry without a parent): its path, or --served-model-name."""
        for entry in self.models():
            if entry.get("parent") is None:
                return str(entry["id"])
        raise ServingError(f"vLLM server at {self.display_url}: GET /v1/models lists no base model")

    def adapters(self) -> dict[str, str]:
        """Loaded adapters: served name -> path (as given when it was loaded)."""
        return {str(m["id"]): str(m.get("root")) for m in self.models() if m.get("parent") is not None}

    def load_adapter(self, name: str, path: str | os.PathLike[str]) -> None:
        """Load the adapter folder `path` (a path on the SERVER's file system) under `name`.

        Already loaded with the same path: nothing to do. Loaded with another path: ServingError,
        since names are immutable (serve the new weights under a new name).
        """
        path = os.fspath(path)
        if self._check_loaded(name, path):
            return
        response = self._request("POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if response.is_success:
            return
        # Another client may have loaded the same name in between: the same rules apply.
        if response.status_code == 400 and self._check_loaded(name, path):
            return
        raise self._error("POST", "/v1/load_lora_adapter", response, f"loading adapter {name!r} from {path}")

    def unload_adapter(self, name: str) -> bool:
        """Unload the adapter `name`; False when it was not loaded."""
        response = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if response.is_success:
            return True
        if response.status_code in (400, 404) and name not in self.adapters():
            return False
        raise self._error("POST", "/v1/unload_lora_adapter", response, f"unloading adapter {name!r}")

    def _check_loaded(self, name: str, path: str) -> bool:
        """True when `name` is loaded from `path`; ServingError when it is loaded from another path."""
        root = self.adapters().get(name)
        if root is None:
            return False
        if root.rstrip("/") == path.rstrip("/"):
            return True
        raise ServingError(
            f"vLLM server at {self.display_url}: adapter {name!r} is already loaded from {root}, not {path}; "
            "served names are immutable, so serve these weights under a new name (a new version)"
        )

    # -- chat ----------------------------------------------------------------------------------------

    def chat(
        self, model: str, messages: Sequence[Message], *, max_tokens: int, temperature: float = 0.0
    ) -> tuple[str, float]:
        """One chat completion from `model` (the base model's id or an adapter's name).

        Returns the reply's text and the request's wall time in seconds.
        """
        body = {
            "model": model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        start = time.perf_counter()
        response = self._request("POST", "/v1/chat/completions", json=body)
        seconds = time.perf_counter() - start
        if not response.is_success:
            raise self._error("POST", "/v1/chat/completions", response, f"chat with {model!r}")
        reply = self._json(response, "POST", "/v1/chat/completions")
        try:
            content = reply["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ServingError(
                f"vLLM server at {self.display_url}: POST /v1/chat/completions returned no chat completion: "
                f"{_one_line(response.text)}"
            ) from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return (content if isinstance(content, str) else ""), seconds

    def chat_many(
        self,
        model: str,
        conversations: Sequence[Sequence[Message]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        concurrency: int = 4,
    ) -> list[tuple[str, float]]:
        """`chat` for each conversation, up to `concurrency` requests at once, results in input order.

        All for ONE model: vLLM batches concurrent requests, and on its CPU backend a base-model
        request batched with adapter requests can get an adapter's output (see the module doc). Run
        the models you compare one after another. The first failure raises (the rest are cancelled).
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if not conversations:
            return []
        pool = ThreadPoolExecutor(max_workers=min(concurrency, len(conversations)), thread_name_prefix="vllm")
        futures: list[Future[tuple[str, float]]] = []
        try:
            futures = [
                pool.submit(self.chat, model, c, max_tokens=max_tokens, temperature=temperature)
                for c in conversations
            ]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- plumbing ------------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _request(self, method: str, path: str, json: dict[str, Any] | None = None) -> httpx.Response:
        try:
            try:
                return self._client.request(method, path, json=json)
            except httpx.RemoteProtocolError:
                # The server closed an idle keep-alive connection just as it was reused (uvicorn
                # drops them after 5 s): the request never reached it, so send it once more.
                return self._client.request(method, path, json=json)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServingUnavailable(
                f"vLLM server at {self.display_url} unreachable: {self._redact(_one_line(f'{type(exc).__name__}: {exc}'))}"
            ) from None
        except httpx.TimeoutException:
            raise ServingUnavailable(
                f"vLLM server at {self.display_url} did not answer {method} {path} within {self.timeout:g} s"
            ) from None
        except httpx.TransportError as exc:
            raise ServingUnavailable(
                f"vLLM server at {self.display_url} unreachable during {method} {path}: "
                f"{self._redact(_one_line(f'{type(exc).__name__}: {exc}'))}"
            ) from None

    def _json(self, response: httpx.Response, method: str, path: str) -> Any:
        if not response.is_success:
            raise self._error(method, path, response)
        try:
            return response.json()
        except ValueError:
            raise ServingError(
                f"vLLM server at {self.display_url}: {method} {path} returned no JSON: {_one_line(response.text)}"
            ) from None

    def _error(self, method: str, path: str, response: httpx.Response, doing: str = "") -> ServingError:
        """ServingError for an HTTP error: vLLM's own message ({"error": {"message", "type"}})."""
        message, kind = _error_detail(response)
        what = f" ({doing})" if doing else ""
        status = f"HTTP {response.status_code}" + (f" {kind}" if kind else "")
        text = f"vLLM server at {self.display_url}: {method} {path}{what} failed with {status}: {message}"
        error = ServingUnavailable if response.status_code in (502, 503, 504) else ServingError
        return error(self._redact(text))


def _error_detail(response: httpx.Response) -> tuple[str, str]:
    """(message, error type) from vLLM's error body; the raw text when it is not one."""
    try:
        body = response.json()
    except ValueError:
        return _one_line(response.text) or response.reason_phrase, ""
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return _one_line(str(error["message"])), str(error.get("type") or "")
    if isinstance(error, str) and error:  # e.g. {"error": "Unauthorized"} for a wrong API key
        return _one_line(error), ""
    if isinstance(body, dict) and body.get("detail"):  # FastAPI's own errors (e.g. a malformed body)
        return _one_line(str(body["detail"])), ""
    return _one_line(response.text), ""


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


# -- replicas ----------------------------------------------------------------------------------------


@contextmanager
def open_replicas(
    urls: Sequence[str], api_key: str | None = None, timeout: float = 120
) -> Iterator[list[VllmServer]]:
    """A client for each replica URL (PULSE_VLLM_URL lists them, comma-separated), all closed
    after the block; an empty list when there is none."""
    with ExitStack() as stack:
        yield [stack.enter_context(VllmServer(url, api_key=api_key, timeout=timeout)) for url in urls]


def unload_spares(
    server: VllmServer, family: str, *, keep: set[str], order: list[str], max_loaded: int
) -> list[str]:
    """Unload this family's served versions, oldest first, until at most `max_loaded` are loaded;
    versions in `keep` (production, previous, a canary) are never unloaded. `order` lists the
    family's versions oldest first. Returns the names unloaded."""
    ours = [name for name in server.adapters() if name.startswith(f"{family}@")]
    rank = {served_name(family, v): i for i, v in enumerate(order)}
    protected = {served_name(family, v) for v in keep}
    spare = sorted((n for n in ours if n not in protected), key=lambda n: rank.get(n, -1))
    unloaded: list[str] = []
    while len(ours) - len(unloaded) > max_loaded and spare:
        name = spare.pop(0)
        server.unload_adapter(name)
        unloaded.append(name)
    return unloaded
