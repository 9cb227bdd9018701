"""Load-test the chat server with 1, 4 and 16 concurrent streaming clients on 127.0.0.1.

The script starts the production server itself (``python -m astrai_server``, waitress) in a
child process on 127.0.0.1 and a free port, so the clients' threads do not share the server's
Python interpreter. It serves the ``tiny`` preset with random weights and a small tokenizer
trained here, or ``--checkpoint DIR``.
Each level runs a fixed number of streamed chat requests (200 at 16 clients) under a time limit,
and prints:

- aggregate tokens/s: completion tokens of all requests (from the usage chunk) over the wall time
  of the level;
- time to first token, p50 and p99: from sending the request to the first content chunk;
- errors: requests that failed, got a non-200 status or ended without ``[DONE]``;
- the ratio of 16 clients' tokens/s to one client's.

Every request sets ``max_tokens`` to ``--max-tokens`` with ``temperature=1`` and a per-request seed. A
request may end early at a stop token, so the tokens/s figures count what was generated.

    OMP_WAIT_POLICY=PASSIVE python tools/bench/server_load.py [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from astrai_core import ModelConfig, Tokenizer, Transformer, save_checkpoint  # noqa: E402

LEVELS = ((1, 20), (4, 60), (16, 200))  # (concurrent clients, requests)
TEXT = [
    "The server streams each piece of the reply as it is generated.",
    "A small model can still learn the shape of a sentence.",
    "今天天气很好，我们去公园散步吧。",
    "服务器会把回复一段一段地发送给浏览器。",
]


def build_checkpoint(directory: Path) -> Path:
    tokenizer = Tokenizer.train(TEXT * 50, directory / "tokenizer.model", vocab_size=400)
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)
    return save_checkpoint(directory / "tiny-random", Transformer(config), tokenizer)


def stream_one(port: int, index: int, max_tokens: int) -> tuple[float | None, int, bool]:
    """Send one streamed chat request; return (time to first token, completion tokens, ok)."""
    body = {
        "messages": [{"role": "user", "content": TEXT[index % len(TEXT)]}],
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": index,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, tokens, done = None, 0, False
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            return None, 0, False
        for line in response:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[len(b"data: ") :]
            if data == b"[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    except (OSError, ValueError, http.client.HTTPException):
        return first, tokens, False
    finally:
        connection.close()
    return first, tokens, done


def run_level(port: int, clients: int, requests: int, max_tokens: int, time_limit: float) -> dict:
    deadline = time.perf_counter() + time_limit
    results: list[tuple[float | None, int, bool]] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        while time.perf_counter() < deadline:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            outcome = stream_one(port, index, max_tokens)
            with lock:
                results.append(outcome)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    seconds = time.perf_counter() - start
    ttfts = sorted(first for first, _, ok in results if ok and first is not None)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens_per_s": sum(tokens for _, tokens, _ in results) / seconds,
        "ttft_p50": statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_p99": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else float("nan"),
        "errors": sum(not ok for _, _, ok in results),
        "seconds": seconds,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(checkpoint: Path, port: int, threads: int) -> subprocess.Popen:
    """Start ``python -m astrai_server`` and return once a warm-up request has succeeded."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "ASTRAI_MAX_BATCH_SIZE": "16"}
    command = [sys.executable, "-m", "astrai_server", "--host", "127.0.0.1", "--port", str(port),
               "--checkpoint", str(checkpoint)]
    server = subprocess.Popen(command, env=environment, stderr=subprocess.DEVNULL)
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            if stream_one(port, 0, 4)[2]:
                return server
        except ConnectionError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit("the server did not respond within 120 s; run python -m astrai_server by hand to see its log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="serve this checkpoint instead of a random tiny model")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens requested per reply")
    parser.add_argument("--time-limit", type=float, default=300, help="seconds per level at most")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or build_checkpoint(Path(scratch))
        port = free_port()
        server = start_server(checkpoint, port, args.threads)
        print(f"server on 127.0.0.1:{port} | model {checkpoint.name} | "
              f"max_tokens {args.max_tokens} | torch threads {args.threads}")
        rows = []
        try:
            for clients, requests in LEVELS:
                row = run_level(port, clients, requests, args.max_tokens, args.time_limit)
                rows.append(row)
                print(
                    f"clients {row['clients']:>2} | requests {row['requests']:>3} | "
                    f"{row['tokens_per_s']:7.1f} tok/s | TTFT p50 {row['ttft_p50'] * 1000:6.0f} ms "
                    f"p99 {row['ttft_p99'] * 1000:6.0f} ms | errors {row['errors']} | {row['seconds']:.1f} s",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(30)
        print(f"16 clients vs 1: {rows[-1]['tokens_per_s'] / rows[0]['tokens_per_s']:.1f}x aggregate tokens/s")


if __name__ == "__main__":
    main()
