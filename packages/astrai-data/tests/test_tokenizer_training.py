"""Tokenizer training on a corpus folder and the per-language compression report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from astrai_core import Tokenizer
from astrai_data import Corpus, CorpusError, corpus_texts, measure_compression, train_tokenizer


@pytest.fixture
def mixed_corpus(
    tmp_path: Path,
    documents: list[str],
    conversations: list[dict],
    write_text_corpus: Callable,
    write_jsonl: Callable,
) -> Path:
    write_text_corpus(tmp_path / "corpus" / "pretrain", documents)
    write_jsonl(tmp_path / "corpus" / "sft.jsonl", conversations)
    return tmp_path / "corpus"


def test_corpus_texts_cover_documents_and_messages(
    mixed_corpus: Path, documents: list[str], conversations: list[dict]
) -> None:
    texts = list(corpus_texts(Corpus(mixed_corpus, kind="any")))

    contents = [message["content"] for record in conversations for message in record["messages"]]
    assert texts == documents + contents


def test_train_tokenizer_on_mixed_corpus(mixed_corpus: Path, tmp_path: Path, documents: list[str]) -> None:
    tokenizer = train_tokenizer(Corpus(mixed_corpus, kind="any"), tmp_path / "tok.model", vocab_size=480)

    assert tokenizer.vocab_size == 480
    assert Tokenizer(tmp_path / "tok.model").model_proto == tokenizer.model_proto
    assert [tokenizer.decode(tokenizer.encode(text)) for text in documents] == documents


def test_train_tokenizer_reports_bad_vocab_size(mixed_corpus: Path, tmp_path: Path) -> None:
    corpus = Corpus(mixed_corpus, kind="any")

    with pytest.raises(ValueError, match="vocab_size=20000 failed: Vocabulary size too high"):
        train_tokenizer(corpus, tmp_path / "tok.model", vocab_size=20000)
    with pytest.raises(ValueError, match="smaller than required_chars") as too_small:
        train_tokenizer(corpus, tmp_path / "tok.model", vocab_size=300)
    assert "character_coverage" not in str(too_small.value)
    assert not (tmp_path / "tok.model").exists()


def test_train_tokenizer_stops_at_invalid_record(mixed_corpus: Path, tmp_path: Path) -> None:
    (mixed_corpus / "zz.jsonl").write_text('{"text": 3}\n')

    with pytest.raises(CorpusError, match=r"zz\.jsonl:1: 'text' must be a string"):
        train_tokenizer(Corpus(mixed_corpus, kind="any"), tmp_path / "tok.model", vocab_size=480)


def test_compression_per_language(mixed_corpus: Path, tokenizer: Tokenizer) -> None:
    corpus = Corpus(mixed_corpus, kind="any")

    report = measure_compression(tokenizer, corpus)
    sampled = measure_compression(tokenizer, corpus, sample_documents=1)

    # English: documents 0, 2, 4 and conversations 0, 3. Chinese (at least 10% CJK characters): the
    # rest, including the mixed document 3 and conversation 1 with its Chinese reply.
    assert (report["en"].documents, report["zh"].documents) == (5, 5)
    assert report["zh"].chars_per_token < report["en"].chars_per_token
    assert (sampled["en"].documents, sampled["en"].measured_documents) == (5, 1)
    assert sampled["zh"].chars_per_token > 0


def test_compression_without_chinese(
    tmp_path: Path, tokenizer: Tokenizer, write_text_corpus: Callable
) -> None:
    corpus = Corpus(write_text_corpus(tmp_path / "corpus", ["Only English here.\n"]))

    report = measure_compression(tokenizer, corpus)

    assert report["zh"].documents == 0
    assert report["zh"].chars_per_token is None
    assert report["en"].chars_per_token > 1
