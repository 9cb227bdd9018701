"""Training the tokenizer on a corpus and measuring its compression per language.

Design choices:
- Training reads every string of the corpus, whatever the record kind: ``.txt`` documents, the
  ``text`` of ``.jsonl`` records, the ``content`` of every message (chats, prompts, chosen and
  rejected responses) and reference answers, so the vocabulary also fits the fine-tuning data.
- Compression (characters per token) is measured separately on Chinese and on English documents, as
  ``detect_language`` classifies each one. A vocabulary that serves one language can split the other
  into single bytes, and one average over both would hide that.
- The measurement uses a uniform sample of at most ``sample_documents`` documents per language
  (reservoir sampling with a fixed seed), so memory and time stay bounded on large corpora and the
  result is reproducible.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from astrai_core import Tokenizer, detect_language

from .corpus import Corpus
from .records import Record, record_strings

LANGUAGES = ("zh", "en")


@dataclass(frozen=True)
class LanguageCompression:
    """Compression of a tokenizer on the documents of one language.

    Attributes:
        language: ``"zh"`` or ``"en"``, as returned by ``detect_language``.
        documents: Documents of this language in the corpus.
        measured_documents: Documents in the sample the ratio was measured on.
        chars_per_token: Characters per token on the sample; ``None`` without documents.
    """

    language: str
    documents: int
    measured_documents: int
    chars_per_token: float | None


def corpus_texts(corpus: Corpus) -> Iterator[str]:
    """Yield every string of the corpus: each text document, each message's content and each answer."""
    for record in corpus:
        yield from record_strings(record)


def train_tokenizer(
    corpus: Corpus,
    output: str | os.PathLike,
    *,
    vocab_size: int = 8192,
    max_sentences: int = 300_000,
) -> Tokenizer:
    """Train a SentencePiece BPE tokenizer on every string of ``corpus`` and save it to ``output``.

    Args:
        corpus: The corpus; open it with ``kind="any"`` to train on text and chat records together.
        output: The ``.model`` file to write.
        vocab_size: Number of tokens, including 256 byte tokens and the special tokens.
        max_sentences: Lines SentencePiece samples for training, which bounds time and memory.

    Raises:
        CorpusError: An invalid record, unless the corpus skips them.
        ValueError: ``vocab_size`` below 300, or a size the corpus cannot support: too small for its
            distinct characters, or too large for its amount of text.
    """
    # SentencePiece turns an exception raised while it reads the texts into a RuntimeError, so the
    # reading error is kept here and raised as it was.
    reading_errors: list[Exception] = []

    def texts() -> Iterator[str]:
        try:
            yield from corpus_texts(corpus)
        except Exception as error:
            reading_errors.append(error)
            raise

    try:
        return Tokenizer.train(texts(), output, vocab_size=vocab_size, max_sentences=max_sentences)
    except RuntimeError as error:
        if reading_errors:
            raise reading_errors[0] from None
        # SentencePiece's own failures read "INTERNAL: file(line) [failed check] message". Its hint to
        # lower character_coverage names an option that AstrAI does not expose, so it is left out.
        message = str(error).rsplit("] ", 1)[-1]
        sentences = re.split(r"(?<=\.) ", message)
        detail = " ".join(sentence for sentence in sentences if "character_coverage" not in sentence)
        raise ValueError(
            f"tokenizer training with vocab_size={vocab_size} failed: {detail} Choose another --vocab-size."
        ) from None


def measure_compression(
    tokenizer: Tokenizer, corpus: Corpus, sample_documents: int = 2000
) -> dict[str, LanguageCompression]:
    """Measure characters per token on the Chinese and on the English documents of ``corpus``.

    Args:
        tokenizer: The tokenizer to measure.
        corpus: The documents; a conversation counts as one document of its joined messages.
        sample_documents: Maximum number of documents measured per language.

    Returns:
        One :class:`LanguageCompression` for each of ``"zh"`` and ``"en"``.
    """
    rng = random.Random(0)
    seen = dict.fromkeys(LANGUAGES, 0)
    samples: dict[str, list[str]] = {language: [] for language in LANGUAGES}
    for record in corpus:
        document = _document_text(record)
        language = detect_language(document)
        seen[language] += 1
        sample = samples[language]
        if len(sample) < sample_documents:
            sample.append(document)
        else:
            slot = rng.randrange(seen[language])
            if slot < sample_documents:
                sample[slot] = document

    return {
        language: LanguageCompression(
            language=language,
            documents=seen[language],
            measured_documents=len(samples[language]),
            chars_per_token=tokenizer.chars_per_token(samples[language]) if samples[language] else None,
        )
        for language in LANGUAGES
    }


def _document_text(record: Record) -> str:
    return "\n".join(record_strings(record))
