"""The production entry point: ``python -m astrai_server`` (waitress) in a child process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("waitress", reason="install the production extra: pip install 'astrai-server[production]'")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server_url(tiny_checkpoint):
    path, _ = tiny_checkpoint
    port = free_port()
    environment = {**os.environ, "ASTRAI_CHECKPOINT": str(path), "OMP_NUM_THREADS": "1"}
    environment.pop("ASTRAI_API_KEY", None)
    process = subprocess.Popen([sys.executable, "-m", "astrai_server", "--port", str(port)], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()
                time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def post(url: str, body: dict) -> urllib.request.Request:
    return urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})


def test_waitress_serves_concurrent_streams_through_the_scheduler(server_url):
    health = json.load(urllib.request.urlopen(f"{server_url}/health", timeout=10))
    assert health["status"] == "ok"
    body = {"messages": [{"role": "user", "content": "你好"}], "max_tokens": 20, "stream": True}
    responses = [urllib.request.urlopen(post(f"{server_url}/v1/chat/completions", body), timeout=60)
                 for _ in range(3)]
    for response in responses:
        lines = [line.strip() for line in response if line.strip()]
        assert lines[-1] == b"data: [DONE]"
        finishes = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in lines[:-1]]
        assert finishes[-1] in ("stop", "length")
    metrics = urllib.request.urlopen(f"{server_url}/metrics", timeout=10).read().decode()
    assert 'astrai_requests_total{endpoint="/v1/chat/completions",status="200"} 3' in metrics


def test_waitress_answers_a_bad_request_with_400(server_url):
    try:
        urllib.request.urlopen(post(f"{server_url}/v1/chat/completions", {"messages": []}), timeout=10)
    except urllib.error.HTTPError as error:
        assert error.code == 400
        assert json.load(error)["error"]["param"] == "messages"
    else:
        pytest.fail("an empty messages list was accepted")
