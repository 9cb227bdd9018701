"""Shared fixtures: a tokenizer trained on a few sentences, a tiny random model, a scripted model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from astrai_core import KVCache, ModelConfig, Tokenizer, Transformer
from astrai_infer import Generator

# Mixed English, Chinese and emoji sentences for the test tokenizer. Characters outside this text,
# such as 龍, 鳳 or 🐉, have no piece of their own, so they encode as two to four byte tokens.
TRAINING_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A small model learns to write short sentences one token at a time.",
    "Tokens are pieces of text, and the model predicts the next one.",
    "We train on a laptop, so every test uses a very small network.",
    "Good morning! How are you today? 🙂",
    "The weather is nice, let's go for a walk in the park. ☀️",
    "今天天气很好，我们去公园散步吧。",
    "我喜欢读书和写代码，也喜欢喝茶。",
    "这个模型很小，但是它可以生成中文和英文。",
    "你好，世界！很高兴见到你。😀",
    "学习语言模型需要数据、耐心和时间。",
    "Mixed text: 我们 like 编程 and 音乐 🎵.",
]



@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    return Tokenizer.train(TRAINING_SENTENCES * 4, path, vocab_size=400, num_threads=1)


@pytest.fixture(scope="session")
def byte_heavy_text() -> str:
    """Text made of characters the tokenizer never saw, so it encodes as byte tokens."""
    return "龍鳳呈祥🐉🎉 dragon 雞尾酒🍹!"


def build_tiny_model(vocab_size: int, seed: int = 0) -> Transformer:
    # Untied embeddings: with tied ones a random model's greedy output repeats the last prompt token,
    # which would make the greedy comparisons trivial.
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=128, max_len=128,
        tie_embeddings=False,
    )
    return Transformer(config).eval()


@pytest.fixture(scope="session")
def make_model():
    """Return ``build_tiny_model``: ``make_model(vocab_size, seed=0)`` gives a tiny random Transformer."""
    return build_tiny_model


@pytest.fixture(scope="session")
def model(tokenizer: Tokenizer) -> Transformer:
    return build_tiny_model(tokenizer.vocab_size)


@pytest.fixture
def generator(model: Transformer, tokenizer: Tokenizer) -> Generator:
    return Generator(model, tokenizer)


class ScriptedModel(nn.Module):
    """Stands in for a ``Transformer`` whose output is fixed in advance.

    ``script[p]`` is the token the model predicts, with probability 1, for position ``p``. The
    prediction depends only on the position, so it holds for every prompt, batch row and seed.
    It records the batch size of every forward call in ``batch_sizes``.
    """

    def __init__(self, vocab_size: int, script: list[int], max_len: int = 64):
        super().__init__()
        self.config = ModelConfig(
            vocab_size=vocab_size, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, dim_ffn=8, max_len=max_len
        )
        self.script = torch.tensor(script + [0] * (max_len + 1 - len(script)))
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.batch_sizes: list[int] = []

    def make_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        return KVCache(self.config, batch_size, max_len)

    def forward(self, input_ids, position_ids=None, attention_mask=None, kv_cache=None):
        B, T = input_ids.shape
        self.batch_sizes.append(B)
        start = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(start, start + T).expand(B, T)
        if kv_cache is not None:
            kv_cache.length += T
        targets = self.script[position_ids + 1]  # (B, T)
        logits = torch.full((B, T, self.config.vocab_size), float("-inf"))
        return {"logits": logits.scatter(-1, targets[..., None], 0.0)}  # (B, T, V)


@pytest.fixture
def scripted(tokenizer: Tokenizer):
    """Return a factory: ``scripted(script, max_len=64)`` gives a ``Generator`` over a ``ScriptedModel``."""

    def build(script: list[int], max_len: int = 64) -> Generator:
        return Generator(ScriptedModel(tokenizer.vocab_size, script, max_len), tokenizer)

    return build
