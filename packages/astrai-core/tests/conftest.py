import pytest
from astrai_core import Tokenizer

# Text written for these tests: a few English and Chinese sentences, enough for a tiny vocabulary.
SAMPLE_TEXT = """The quick brown fox jumps over the lazy dog.
A tokenizer turns text into numbers, and a model learns from the numbers.
Training a small model on a laptop is slow but possible.
今天天气很好，我们去公园散步吧。
机器学习模型需要大量的数据来训练。
这个程序可以把中文和英文的句子都切分成词元。
"""


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    return Tokenizer.train([SAMPLE_TEXT] * 20, path, vocab_size=400)
