"""Packing a corpus into an Arrow file, tokenizing in parallel worker processes.

Design choices:
- Records are decoded, checked and tokenized in a ``multiprocessing`` pool. The main process only
  locates them (``Corpus.raw_records``): a ``.txt`` path, or a ``.jsonl`` line's bytes. Each worker
  builds the tokenizer once from the model bytes. Records travel in chunks (up to 256 records or
  256 KiB of source text), and the results, with the problems of invalid records, are consumed in
  submission order. So the packed file, and the first error reported, do not depend on the number
  of workers or on their timing. ``workers=1`` does the same work in this process, without a pool.
- At most four chunks per worker are in flight. ``Pool.imap`` would read the whole corpus ahead of
  the workers. This bound keeps memory flat however large the corpus is.
- The main process places tokenized sequences into rows (:mod:`~astrai_data.rows`) and writes them
  (:mod:`~astrai_data.writer`). Decoding and tokenizing, most of the work, happen in the workers.
- The counts are checked before the file is published: every token that came out of the tokenizer
  is stored, truncated or dropped, and the sum must match.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from astrai_core import Tokenizer

from .__about__ import __version__
from .corpus import Corpus, CorpusError, RawRecord, parse_raw_record
from .encoding import EncodedChunk, encode_payloads, record_payload
from .format import COUNT_FIELDS, FORMAT_VERSION, KINDS, pack_schema, tokenizer_fingerprint
from .rows import ChatWindows, PackCounts, PreferenceRows, PromptRows, TextWindows
from .truncation import check_policy
from .writer import RowWriter, copy_batches, staged_paths

logger = logging.getLogger(__name__)

CHUNK_RECORDS = 256
CHUNK_BYTES = 256 * 1024
CHUNKS_IN_FLIGHT_PER_WORKER = 4


@dataclass(frozen=True)
class PackStats:
    """Summary of a packing run: its counts, the output size and the time taken.

    Attributes:
        output: The packed file.
        kind: ``"text"``, ``"chat"``, ``"preference"`` or ``"prompt"``.
        seq_len: Model context length; windows hold ``seq_len + 1`` tokens. For prompt files, the
            maximum prompt length.
        too_long: The policy for records that do not fit: ``"truncate"`` or ``"drop"``.
        normalize: The Unicode normalisation applied to the text: ``"none"``, ``"nfc"`` or ``"nfkc"``.
        documents: Records packed: documents, conversations, pairs or prompts (dropped ones excluded).
        windows: Rows of the file: windows, pairs or prompts.
        tokens_in: Tokens of every record after tokenization.
        tokens: Tokens stored, padding excluded.
        truncated: Records shortened to fit.
        truncated_tokens: Tokens removed from the truncated records.
        dropped: Records left out because they did not fit.
        dropped_tokens: Tokens of the dropped records.
        skipped: Invalid records skipped (only with ``skip_invalid``).
        output_bytes: Size of the packed file.
        seconds: Wall-clock time of the run.
    """

    output: Path
    kind: str
    seq_len: int
    too_long: str
    normalize: str
    documents: int
    windows: int
    tokens_in: int
    tokens: int
    truncated: int
    truncated_tokens: int
    dropped: int
    dropped_tokens: int
    skipped: int
    output_bytes: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        """Tokens out of the tokenizer per second of the whole run."""
        return self.tokens_in / max(self.seconds, 1e-9)

    def counts(self) -> dict[str, int]:
        """Return the counts stored in the file's metadata."""
        return {name: getattr(self, name) for name in COUNT_FIELDS}


def pack_corpus(
    corpus: Corpus,
    tokenizer: Tokenizer,
    output: str | os.PathLike,
    *,
    seq_len: int = 512,
    workers: int | None = None,
    too_long: str = "truncate",
    on_progress: Callable[[int], None] | None = None,
) -> PackStats:
    """Tokenize a corpus and write its rows to an Arrow IPC file.

    Args:
        corpus: The records to pack; its kind must be one of the record kinds (not ``"any"``).
        tokenizer: The tokenizer the model will be trained with.
        output: The ``.arrow`` file to write; replaced if it exists, parent folders are created.
        seq_len: Model context length; each window has ``seq_len + 1`` tokens. For prompt files,
            the maximum prompt length.
        workers: Tokenizer processes; ``None`` uses one per CPU, 1 tokenizes in this process.
        too_long: ``"truncate"`` shortens a conversation, pair or prompt that does not fit (the
            prompt side first), ``"drop"`` leaves it out. Text documents continue in the next window.
        on_progress: Called with the number of source bytes each time a chunk of records is packed.

    Returns:
        The counts, the output size and the time taken.

    Raises:
        CorpusError: An invalid record (unless the corpus skips them), or nothing left to pack.
        ValueError: Invalid ``seq_len``, ``workers``, ``too_long`` or corpus kind.
    """
    if corpus.kind not in KINDS:
        raise ValueError(
            f"cannot pack a corpus of kind {corpus.kind!r}; open it with kind 'auto' or one of {list(KINDS)}"
        )
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be at least 1; use the model's context length, e.g. 512")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1; use 1 to tokenize in this process")
    check_policy(too_long)

    started = time.perf_counter()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    packer = _make_packer(corpus.kind, seq_len, tokenizer.pad_id, too_long)
    tokens_per_row = seq_len if corpus.kind == "prompt" else seq_len + 1

    with staged_paths(output) as (scratch, staged):
        with RowWriter(scratch, pack_schema(corpus.kind, seq_len), tokens_per_row) as writer:
            for chunk, problems, source_bytes in _encode_corpus(corpus, tokenizer, workers):
                for problem in problems:
                    corpus.report_invalid(problem)
                if chunk is not None:
                    writer.write(packer.add(chunk))
                if on_progress is not None:
                    on_progress(source_bytes)
            writer.write(packer.finish())
        counts: PackCounts = packer.counts
        if counts.windows == 0:
            raise CorpusError(
                f"nothing to pack from {corpus.root}: {corpus.skipped} invalid records skipped, "
                f"{counts.dropped} records dropped as too long; check the corpus, --kind and --too-long"
            )
        stored = counts.tokens + counts.truncated_tokens + counts.dropped_tokens
        assert counts.tokens_in == stored, f"token counts disagree: {counts}"

        all_counts = {**counts.as_dict(), "skipped": corpus.skipped}
        metadata = _pack_metadata(corpus, seq_len, too_long, tokenizer, all_counts)
        copy_batches(scratch, staged, pack_schema(corpus.kind, seq_len, metadata))
        os.replace(staged, output)

    seconds = time.perf_counter() - started
    logger.info("packed %s rows into %s in %.1f s", f"{counts.windows:,}", output, seconds)
    return PackStats(
        output=output,
        kind=corpus.kind,
        seq_len=seq_len,
        too_long=too_long,
        normalize=corpus.normalize,
        output_bytes=output.stat().st_size,
        seconds=seconds,
        **all_counts,
    )


def _make_packer(kind: str, seq_len: int, pad_id: int, too_long: str):
    if kind == "text":
        return TextWindows(seq_len, pad_id)
    if kind == "chat":
        return ChatWindows(seq_len, pad_id, too_long)
    if kind == "preference":
        return PreferenceRows(seq_len, pad_id, too_long)
    return PromptRows(seq_len, pad_id, too_long)


def _pack_metadata(corpus: Corpus, seq_len: int, too_long: str, tokenizer: Tokenizer, counts: dict) -> dict:
    return {
        "format": FORMAT_VERSION,
        "kind": corpus.kind,
        "seq_len": seq_len,
        "vocab_size": tokenizer.vocab_size,
        "pad_id": tokenizer.pad_id,
        "eos_id": tokenizer.eos_id,
        "bos_id": tokenizer.bos_id,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "too_long": too_long,
        "normalize": corpus.normalize,
        "astrai_data_version": __version__,
        "counts": counts,
    }


EncodedResult = tuple[EncodedChunk | None, list[str]]
"""A chunk's tokenized valid records (``None`` if there are none) and its invalid records' problems."""


def _encode_raw(tokenizer: Tokenizer, kind: str, normalize: str, raws: list[RawRecord]) -> EncodedResult:
    """Decode, check and tokenize a chunk of raw records."""
    payloads, problems = [], []
    for raw in raws:
        record = parse_raw_record(raw, kind, normalize)
        if isinstance(record, str):
            problems.append(record)
        else:
            payloads.append(record_payload(record))
    return (encode_payloads(tokenizer, kind, payloads) if payloads else None), problems


# Set in each worker process by _start_worker.
_worker_tokenizer: Tokenizer | None = None


def _start_worker(model_proto: bytes) -> None:
    global _worker_tokenizer
    # Ctrl-C reaches every process of the group. Only the main process handles it (by terminating
    # the pool), so the workers do not each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Forked workers inherit the CLI's SIGTERM handler; Pool.terminate() must end them quietly.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    _worker_tokenizer = Tokenizer(model_proto)


def _encode_in_worker(kind: str, normalize: str, raws: list[RawRecord]) -> EncodedResult:
    assert _worker_tokenizer is not None, "worker started without _start_worker"
    return _encode_raw(_worker_tokenizer, kind, normalize, raws)


def _chunk_records(corpus: Corpus) -> Iterator[tuple[list[RawRecord], int]]:
    """Group the corpus's raw records into ``(raws, source_bytes)`` chunks."""
    raws: list[RawRecord] = []
    source_bytes = 0
    for raw in corpus.raw_records():
        raws.append(raw)
        source_bytes += raw.size_bytes
        if len(raws) >= CHUNK_RECORDS or source_bytes >= CHUNK_BYTES:
            yield raws, source_bytes
            raws, source_bytes = [], 0
    if raws:
        yield raws, source_bytes


def _encode_corpus(corpus: Corpus, tokenizer: Tokenizer, workers: int) -> Iterator[tuple[EncodedChunk | None, list[str], int]]:
    """Yield ``(encoded chunk, problems, source_bytes)`` in corpus order."""
    kind, normalize = corpus.kind, corpus.normalize
    if workers == 1:
        for raws, source_bytes in _chunk_records(corpus):
            yield *_encode_raw(tokenizer, kind, normalize, raws), source_bytes
        return

    # A SIGTERM handler that raises while the workers fork would fire inside fork's own callbacks,
    # where Python ignores the exception. So SIGTERM waits until the pool exists; the workers
    # unblock it again in _start_worker.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pool = multiprocessing.Pool(workers, initializer=_start_worker, initargs=(tokenizer.model_proto,))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    # Leaving the with block (also on error or when the consumer stops early) terminates the pool.
    with pool:
        in_flight: deque = deque()
        for raws, source_bytes in _chunk_records(corpus):
            in_flight.append((pool.apply_async(_encode_in_worker, (kind, normalize, raws)), source_bytes))
            if len(in_flight) >= workers * CHUNKS_IN_FLIGHT_PER_WORKER:
                result, done_bytes = in_flight.popleft()
                yield *result.get(), done_bytes
        while in_flight:
            result, done_bytes = in_flight.popleft()
            yield *result.get(), done_bytes
