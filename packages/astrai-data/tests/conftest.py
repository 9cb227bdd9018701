"""Shared fixtures: small bilingual texts, a tiny tokenizer trained on them, corpus file writers.

Tests run with ``--import-mode=importlib``, so they cannot import this module; everything they use
is a fixture.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from astrai_core import Tokenizer

ENGLISH = [
    "The river runs past the old mill and under the stone bridge.",
    "Every morning the baker opens the shop before the sun comes up.",
    "A small cat sleeps on the warm windowsill all afternoon.",
    "Packing short documents together wastes less of each window.",
    "The model reads one window of tokens and predicts the next token.",
    "Students wrote their answers on the board in careful letters.",
    "Rain fell on the garden, and the tomatoes grew quickly.",
    "The train leaves at seven and arrives in the city by noon.",
    "Keep the tokenizer small so that the tests stay fast.",
    "She packed three books, a lamp and a map into one box.",
]

CHINESE = [
    "河水流过旧磨坊，又从石桥下面穿过。",
    "每天早上，面包师在太阳升起之前开门。",
    "一只小猫整个下午都睡在温暖的窗台上。",
    "把短文档打包在一起，可以少浪费窗口。",
    "模型读入一个窗口的词元，然后预测下一个词元。",
    "学生们用工整的字把答案写在黑板上。",
    "雨落在花园里，西红柿长得很快。",
    "火车七点出发，中午到达城市。",
    "分词器要小，这样测试才能跑得快。",
    "她把三本书、一盏灯和一张地图装进一个箱子。",
]

# Documents for round trips: Chinese, mixed scripts, odd whitespace, CRLF, an emoji outside the vocabulary.
DOCUMENTS = [
    ENGLISH[0] + "\n" + ENGLISH[1] + "\n",
    CHINESE[0] + CHINESE[1] + "\n\n" + CHINESE[2],
    "  two leading spaces,\ta tab,\r\nand a CRLF line end.   \n\n\n",
    "混合 mixed 文本：the 模型 reads「引号」and keeps 🙂 intact.\n",
    " ".join(ENGLISH[2:6]),
    "".join(CHINESE[3:9]),
]


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tiny.model"
    texts = (ENGLISH + CHINESE) * 3
    Tokenizer.train(texts, path, vocab_size=512, num_threads=1)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path: Path) -> Tokenizer:
    return Tokenizer(tokenizer_path)


@pytest.fixture(scope="session")
def other_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """A tokenizer with the same vocabulary size as ``tokenizer`` but trained on other text."""
    path = tmp_path_factory.mktemp("other-tokenizer") / "other.model"
    texts = [sentence.upper() for sentence in ENGLISH] * 3 + CHINESE[::-1] * 3
    return Tokenizer.train(texts, path, vocab_size=512, num_threads=1)


def _write_text_corpus(folder: Path, documents: list[str]) -> Path:
    """Write one .txt file per document, named so that sorted order is the list order."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, document in enumerate(documents):
        (folder / f"doc{index:03d}.txt").write_text(document, encoding="utf-8", newline="")
    return folder


def _write_jsonl(path: Path, records: list) -> Path:
    """Write each record as one JSON line; a ``bytes`` record is written as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        for record in records:
            line = record if isinstance(record, bytes) else json.dumps(record, ensure_ascii=False).encode()
            file.write(line + b"\n")
    return path


def _conversation(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


CONVERSATIONS = [
    _conversation(("user", "What does the baker do?"), ("assistant", ENGLISH[1])),
    _conversation(
        ("system", "Answer in Chinese."), ("user", "Where does the cat sleep?"), ("assistant", CHINESE[2])
    ),
    _conversation(
        ("user", "两个问题。"),
        ("assistant", "第一个：\n" + CHINESE[6]),
        ("user", "再说一个。"),
        ("assistant", CHINESE[7]),
    ),
    _conversation(("user", "Say it twice."), ("assistant", "  spaced\tout\n\ntext  ")),
]


@pytest.fixture
def documents() -> list[str]:
    return list(DOCUMENTS)


@pytest.fixture
def conversations() -> list[dict]:
    return json.loads(json.dumps(CONVERSATIONS))


@pytest.fixture
def write_text_corpus() -> Callable[[Path, list[str]], Path]:
    return _write_text_corpus


@pytest.fixture
def write_jsonl() -> Callable[[Path, list], Path]:
    return _write_jsonl


@pytest.fixture
def conversation() -> Callable[..., dict]:
    return _conversation
