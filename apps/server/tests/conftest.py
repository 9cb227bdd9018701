"""Fixtures: a fake scheduler with ``astrai_infer.Scheduler``'s interface, and apps built around it.

The fake makes the route tests fast and exact: its reply is a fixed list of text pieces, one
"token" each, so every usage count and stream chunk is known in advance.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest
from astrai_infer import GenerationConfig, SchedulerStats, StreamChunk
from astrai_infer.scheduler import RequestHandle
from astrai_server import create_app

MODEL_NAME = "tiny-chat"
DEFAULTS = GenerationConfig()


class FakeTokenizer:
    """Counts one token per character of content plus three per message, like a chat template's markers."""

    def apply_chat_template(self, messages, add_generation_prompt=False):
        count = sum(3 + len(message["content"]) for message in messages) + (2 if add_generation_prompt else 0)
        return list(range(count))

    def decode(self, ids):
        return "".join(f"<{token_id}>" for token_id in ids)


class FakeHandle(RequestHandle):
    """A real ``RequestHandle`` fed by the fake scheduler, which records when it is closed."""

    def __init__(self, owner, prompt_tokens):
        super().__init__(len(owner.calls), prompt_tokens)
        self.owner = owner

    def close(self):
        self.owner.stream_closed = True
        super().close()


@dataclass
class FakeScheduler:
    """Replies with ``pieces`` one piece per token, or echoes the last message when ``echo`` is set.

    ``calls`` records each ``(prompt, settings)``, where settings are the ``GenerationConfig``
    fields that differ from the defaults. ``stream_closed`` turns true once a handle is closed, which
    is how a client disconnect reaches the scheduler. ``error`` raises at submit, or after
    ``fail_after`` pieces when that is set.
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

    def encode(self, prompt, config=None, name="prompt"):
        ids = self.tokenizer.apply_chat_template(prompt, True) if isinstance(prompt, list) else list(prompt)
        if len(ids) >= self.max_len:
            raise ValueError(f"{name} is {len(ids)} tokens long, but the model's max_len is {self.max_len}")  # as the real one
        return ids

    def submit(self, prompt, config=None, **overrides):
        config = (config or GenerationConfig()).replace(**overrides)
        ids = self.encode(prompt, config)
        settings = {
            item.name: getattr(config, item.name)
            for item in dataclasses.fields(config)
            if getattr(config, item.name) != getattr(DEFAULTS, item.name)
        }
        self.calls.append((prompt, settings))
        if self.error is not None and self.fail_after is None:
            raise self.error
        handle = FakeHandle(self, len(ids))
        pieces = [prompt[-1]["content"] if isinstance(prompt, list) else prompt] if self.echo else list(self.pieces)
        budget = config.max_new_tokens
        finish_reason = "length" if len(pieces) > budget else "stop"
        pieces = pieces[:budget]
        for index, piece in enumerate(pieces, start=1):
            if self.fail_after is not None and index > self.fail_after:
                handle._put(self.error)
                break
            last = index == len(pieces)
            logprobs = [-0.5] if config.logprobs else None
            top = [((index, -0.5), (0, -1.5))[: config.top_logprobs]] if config.top_logprobs else None
            chunk = StreamChunk(piece, len(ids), index, finish_reason if last else None, logprobs, top)
            handle._put((index, chunk))
        return handle

    def stats(self):
        return SchedulerStats(submitted=len(self.calls))


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A small model can still learn the shape of a sentence.",
    "Please write a short answer in plain English.",
    "The server streams each piece of the reply as it is generated.",
    "Tokens are counted for the prompt and for the completion.",
    "今天天气很好，我们去公园散步吧。",
    "这个模型很小，只能生成简单的句子。",
    "请用中文回答这个问题。",
    "服务器会把回复一段一段地发送给浏览器。",
    "你好，世界！欢迎使用这个聊天页面。",
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Save a random two-layer model and a 400-token tokenizer; return ``(path, tokenizer)``."""
    import torch
    from astrai_core import ModelConfig, Tokenizer, Transformer, save_checkpoint

    directory = tmp_path_factory.mktemp("integration")
    tokenizer = Tokenizer.train(SENTENCES * 20, directory / "tokenizer.model", vocab_size=400)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=128, max_len=256
    )
    return save_checkpoint(directory / "tiny-random", Transformer(config), tokenizer), tokenizer


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Keep a developer's exported settings out of the tests."""
    monkeypatch.delenv("ASTRAI_CHECKPOINT", raising=False)
    monkeypatch.delenv("ASTRAI_DEVICE", raising=False)
    monkeypatch.delenv("ASTRAI_API_KEY", raising=False)


@pytest.fixture
def make_client(tmp_path):
    """Return a function that builds a test client around a ``FakeScheduler(**options)``.

    ``config`` entries go to the app factory, for example ``ASTRAI_API_KEY``.
    """

    def build(config=None, **options):
        scheduler = FakeScheduler(**options)
        settings = {"TESTING": True, "SCHEDULER": scheduler, "ASTRAI_CHECKPOINT": str(tmp_path / MODEL_NAME)}
        app = create_app({**settings, **(config or {})})
        return app.test_client(), scheduler

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
