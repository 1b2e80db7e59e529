"""The vLLM client without a server: its URL, and a server that is down
fails fast with one line that names it and never the key (test_serving.py runs the real one)."""

import time

import pytest

from pulse_pipeline.core.serving import ServingUnavailable, VllmServer, open_replicas
from pulse_pipeline_tests.vllm_server import _free_port

COUNT = [{"role": "user", "content": "Count to 0"}]


def test_unreachable_server_raises_quickly() -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    with VllmServer(url, api_key="sk-secret-key") as down:
        assert down.health() is False
        with pytest.raises(ServingUnavailable, match=rf"^vLLM server at {url} unreachable: ") as err:
            down.load_adapter("support@1", "/nowhere")
        with pytest.raises(ServingUnavailable):
            down.chat("x", COUNT, max_tokens=1)
        assert "sk-secret-key" not in str(err.value) and "sk-secret-key" not in repr(down)
    assert time.monotonic() - start < 5


def test_the_url_is_the_servers_root() -> None:
    with VllmServer("http://vllm.internal:8000/v1/", api_key="sk-x") as server:
        assert server.url == "http://vllm.internal:8000"
    with pytest.raises(ValueError, match="http"):
        VllmServer("vllm.internal:8000")


def test_replicas_open_one_client_each_and_close_them_all() -> None:
    with open_replicas(["http://vllm-a:8000/v1", "http://vllm-b:8000"]) as servers:
        assert [s.url for s in servers] == ["http://vllm-a:8000", "http://vllm-b:8000"]
    assert all(s._client.is_closed for s in servers)
    with open_replicas([]) as none:
        assert none == []


def test_a_keep_alive_connection_closed_by_the_server_is_retried_once() -> None:
    """uvicorn (vLLM's server) closes idle keep-alive connections after 5 s; reusing one raises
    RemoteProtocolError before the request reaches the server."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    body = b'{"object": "list", "data": [{"id": "/models/base", "parent": null}]}'

    def serve() -> None:
        first, _ = listener.accept()  # accepts, then closes without answering: a stale connection
        first.recv(65536)
        first.close()
        second, _ = listener.accept()
        second.recv(65536)
        second.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        second.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with VllmServer(f"http://127.0.0.1:{port}") as server:
        assert server.base_model() == "/models/base"
    thread.join(timeout=5)
    listener.close()
