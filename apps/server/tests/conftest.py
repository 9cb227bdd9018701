"""Fixtures: a fake generator with ``astrai_infer.Generator``'s interface, and apps built around it.

The fake makes the route tests fast and exact: its reply is a fixed list of text pieces, one
"token" each, so every usage count and stream chunk is known in advance.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from astrai_server import create_app

MODEL_NAME = "tiny-chat"


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str


@dataclass
class FakeStreamChunk:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


class FakeTokenizer:
    """Counts one token per character of content plus three per message, like a chat template's markers."""

    def apply_chat_template(self, messages, add_generation_prompt=False):
        count = sum(3 + len(message["content"]) for message in messages) + (2 if add_generation_prompt else 0)
        return list(range(count))


@dataclass
class FakeGenerator:
    """Replies with ``pieces`` one piece per token, or echoes the last message when ``echo`` is set.

    ``calls`` records each ``(prompt, overrides)``; ``stream_closed`` turns true once a stream's
    iterator has been closed, which is how a client disconnect reaches the generator.
    """

    pieces: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "! ", "你好", "。"])
    echo: bool = False
    error: Exception | None = None
    fail_after: int | None = None
    max_len: int = 128
    calls: list = field(default_factory=list)
    stream_closed: bool = False

    def __post_init__(self):
        self.tokenizer = FakeTokenizer()
        self.model = SimpleNamespace(config=SimpleNamespace(max_len=self.max_len))

    def _reply(self, prompt, overrides) -> tuple[list[str], int, str]:
        self.calls.append((prompt, overrides))
        if self.error is not None and self.fail_after is None:
            raise self.error
        pieces = [prompt[-1]["content"]] if self.echo else list(self.pieces)
        max_new_tokens = overrides.get("max_new_tokens", 256)
        finish_reason = "length" if len(pieces) > max_new_tokens else "stop"
        prompt_tokens = len(self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True))
        return pieces[:max_new_tokens], prompt_tokens, finish_reason

    def complete(self, prompt, config=None, **overrides) -> FakeCompletion:
        pieces, prompt_tokens, finish_reason = self._reply(prompt, overrides)
        return FakeCompletion("".join(pieces), list(range(len(pieces))), prompt_tokens, finish_reason)

    def stream(self, prompt, config=None, **overrides) -> Iterator[FakeStreamChunk]:
        # Like the real generator: settings and prompt problems raise here, before the first chunk.
        pieces, prompt_tokens, finish_reason = self._reply(prompt, overrides)
        return self._chunks(pieces, prompt_tokens, finish_reason)

    def _chunks(self, pieces, prompt_tokens, finish_reason) -> Iterator[FakeStreamChunk]:
        try:
            for index, piece in enumerate(pieces, start=1):
                if self.fail_after is not None and index > self.fail_after:
                    raise self.error
                last = index == len(pieces)
                yield FakeStreamChunk(piece, prompt_tokens, index, finish_reason if last else None)
        finally:
            self.stream_closed = True


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Keep a developer's exported settings out of the tests."""
    monkeypatch.delenv("ASTRAI_CHECKPOINT", raising=False)
    monkeypatch.delenv("ASTRAI_DEVICE", raising=False)


@pytest.fixture
def fake_generator() -> FakeGenerator:
    return FakeGenerator()


@pytest.fixture
def make_client(tmp_path):
    """Return a function that builds a test client around a ``FakeGenerator(**options)``."""

    def build(**options):
        generator = FakeGenerator(**options)
        app = create_app(
            {"TESTING": True, "GENERATOR": generator, "ASTRAI_CHECKPOINT": str(tmp_path / MODEL_NAME)}
        )
        return app.test_client(), generator

    return build


@pytest.fixture
def client(make_client):
    test_client, _ = make_client()
    return test_client


@pytest.fixture
def no_model_client(tmp_path):
    """A client for a server configured with a checkpoint directory that does not exist."""
    app = create_app({"TESTING": True, "ASTRAI_CHECKPOINT": str(tmp_path / "missing" / "model")})
    return app.test_client()


@pytest.fixture
def parse_events():
    """Return a function that splits a server-sent event body into its ``data:`` payloads.

    JSON payloads come back decoded; the final ``[DONE]`` comes back as the string itself.
    """

    def parse(body: bytes) -> list:
        text = body.decode("utf-8")
        assert text.endswith("\n\n"), "every event must end with a blank line"
        events = []
        for block in text.split("\n\n")[:-1]:
            assert block.startswith("data: "), f"unexpected event line {block!r}"
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
        return events

    return parse


@pytest.fixture
def hello_request() -> dict:
    """A minimal valid request body, new for each test so tests can change it."""
    return {"messages": [{"role": "user", "content": "Hi"}]}
