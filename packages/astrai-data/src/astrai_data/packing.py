"""Packing a corpus into an Arrow file of token windows, tokenizing in parallel worker processes.

Design choices:
- Records are tokenized in a ``multiprocessing`` pool. Each worker builds the tokenizer once from
  the model bytes. Records travel in chunks (up to 256 records or 256 KiB of source text) and the
  results are consumed in submission order, so the packed file does not depend on the number of
  workers or on their timing. ``workers=1`` tokenizes in this process, without a pool.
- At most four chunks per worker are in flight. ``Pool.imap`` would read the whole corpus ahead of
  the workers. This bound keeps memory flat however large the corpus is.
- Arrow writes the schema, and with it the metadata, at the start of the file, but the counts are
  known only at the end. So the windows are written batch by batch, as they are completed, to a
  scratch Arrow file. At the end the batches are copied from a memory map of the scratch file into
  the final file under the schema with the full metadata. This costs one extra sequential write of
  the output size, and memory still contains one record batch at a time.
- Both files sit next to the output under hidden temporary names. The final file is renamed over
  the output only once it is complete, and both are removed on any error (including Ctrl-C). An
  interrupted pack therefore never leaves a file that looks complete, and an older output survives.
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

import numpy as np
import pyarrow as pa
from astrai_core import Tokenizer

from .__about__ import __version__
from .corpus import Corpus, CorpusError
from .format import FORMAT_VERSION, pack_schema, tokenizer_fingerprint
from .windows import ChatWindows, EncodedChunk, TextWindows, WindowRows

logger = logging.getLogger(__name__)

CHUNK_RECORDS = 256
CHUNK_BYTES = 256 * 1024
CHUNKS_IN_FLIGHT_PER_WORKER = 4
# Tokens per record batch of the output file (rounded down to whole windows, at least one window).
BATCH_TOKENS = 1 << 20


@dataclass(frozen=True)
class PackStats:
    """Summary of a packing run: its counts, the output size and the time taken.

    Attributes:
        output: The packed file.
        kind: ``"text"`` or ``"chat"``.
        seq_len: Model context length; windows hold ``seq_len + 1`` tokens.
        documents: Documents or conversations packed (dropped conversations excluded).
        tokens: Tokens packed, padding excluded.
        windows: Rows of the file.
        skipped: Invalid records skipped (only with ``skip_invalid``).
        truncated: Conversations cut to fit a window.
        dropped: Conversations left out because truncation removed every token with loss mask 1.
        output_bytes: Size of the packed file.
        seconds: Wall-clock time of the run.
    """

    output: Path
    kind: str
    seq_len: int
    documents: int
    tokens: int
    windows: int
    skipped: int
    truncated: int
    dropped: int
    output_bytes: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def counts(self) -> dict[str, int]:
        """Return the counts stored in the file's metadata."""
        names = ("documents", "tokens", "windows", "skipped", "truncated", "dropped")
        return {name: getattr(self, name) for name in names}


def pack_corpus(
    corpus: Corpus,
    tokenizer: Tokenizer,
    output: str | os.PathLike,
    *,
    seq_len: int = 512,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PackStats:
    """Tokenize a corpus and write its windows to an Arrow IPC file.

    Args:
        corpus: The records to pack; its kind must be ``"text"`` or ``"chat"``.
        tokenizer: The tokenizer the model will be trained with.
        output: The ``.arrow`` file to write; replaced if it exists, parent folders are created.
        seq_len: Model context length; each window has ``seq_len + 1`` tokens.
        workers: Tokenizer processes; ``None`` uses one per CPU, 1 tokenizes in this process.
        on_progress: Called with the number of source bytes each time a chunk of records is packed.

    Returns:
        The counts, the output size and the time taken.

    Raises:
        CorpusError: An invalid record (unless the corpus skips them), or nothing left to pack.
        ValueError: Invalid ``seq_len``, ``workers`` or corpus kind.
    """
    if corpus.kind not in ("text", "chat"):
        raise ValueError(
            f"cannot pack a corpus of kind {corpus.kind!r}; open it with kind 'text', 'chat' or 'auto'"
        )
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be at least 1; use the model's context length, e.g. 512")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1; use 1 to tokenize in this process")

    started = time.perf_counter()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = output.with_name(f".{output.name}.{os.getpid()}.windows.tmp")
    staged = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    packer = (
        TextWindows(seq_len, tokenizer.pad_id)
        if corpus.kind == "text"
        else ChatWindows(seq_len, tokenizer.pad_id)
    )

    try:
        with _BatchWriter(scratch, pack_schema(seq_len), seq_len + 1) as writer:
            for chunk, source_bytes in _encode_corpus(corpus, tokenizer, workers):
                writer.write(packer.add(chunk))
                if on_progress is not None:
                    on_progress(source_bytes)
            writer.write(packer.finish())
        if packer.windows == 0:
            raise CorpusError(
                f"nothing to pack from {corpus.root}: {corpus.skipped} invalid records skipped, "
                f"{packer.dropped} conversations dropped; check the corpus and --kind"
            )

        counts = {
            "documents": packer.documents,
            "tokens": packer.tokens,
            "windows": packer.windows,
            "skipped": corpus.skipped,
            "truncated": packer.truncated,
            "dropped": packer.dropped,
        }
        metadata = _pack_metadata(corpus.kind, seq_len, tokenizer, counts)
        _copy_batches(scratch, staged, pack_schema(seq_len, metadata))
        os.replace(staged, output)
    finally:
        scratch.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)

    seconds = time.perf_counter() - started
    logger.info("packed %s windows into %s in %.1f s", f"{packer.windows:,}", output, seconds)
    return PackStats(
        output=output,
        kind=corpus.kind,
        seq_len=seq_len,
        output_bytes=output.stat().st_size,
        seconds=seconds,
        **counts,
    )


def _pack_metadata(kind: str, seq_len: int, tokenizer: Tokenizer, counts: dict[str, int]) -> dict:
    return {
        "format": FORMAT_VERSION,
        "kind": kind,
        "seq_len": seq_len,
        "vocab_size": tokenizer.vocab_size,
        "pad_id": tokenizer.pad_id,
        "eos_id": tokenizer.eos_id,
        "bos_id": tokenizer.bos_id,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "astrai_data_version": __version__,
        "counts": counts,
    }


def _encode_chunk(tokenizer: Tokenizer, kind: str, payloads: list) -> EncodedChunk:
    """Tokenize texts (``[bos] + text + [eos]``) or conversations (the chat template) into a chunk.

    Args:
        tokenizer: The tokenizer.
        kind: ``"text"`` when ``payloads`` are strings, ``"chat"`` when they are message lists.
        payloads: The documents, in order.
    """
    if kind == "text":
        # One SentencePiece thread: the parallelism comes from the worker processes.
        encoded = tokenizer.encode_batch(payloads, num_threads=1)
        documents = [[tokenizer.bos_id, *document, tokenizer.eos_id] for document in encoded]
        masks: list[list[int]] | None = None
    else:
        documents, masks = [], []
        for messages in payloads:
            document, mask = tokenizer.encode_chat(messages)
            documents.append(document)
            masks.append(mask)

    ids = np.concatenate([np.asarray(document, dtype=np.int32) for document in documents])
    if masks is None:
        loss_mask = np.ones(len(ids), dtype=np.uint8)
    else:
        loss_mask = np.concatenate([np.asarray(mask, dtype=np.uint8) for mask in masks])
    lengths = np.array([len(document) for document in documents], dtype=np.int64)
    return EncodedChunk(ids=ids, loss_mask=loss_mask, lengths=lengths)


# Set in each worker process by _start_worker.
_worker_tokenizer: Tokenizer | None = None


def _start_worker(model_proto: bytes) -> None:
    global _worker_tokenizer
    # Ctrl-C reaches every process of the group. Only the main process handles it (by terminating
    # the pool), so the workers do not each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_tokenizer = Tokenizer(model_proto)


def _encode_in_worker(kind: str, payloads: list) -> EncodedChunk:
    assert _worker_tokenizer is not None, "worker started without _start_worker"
    return _encode_chunk(_worker_tokenizer, kind, payloads)


def _chunk_records(corpus: Corpus) -> Iterator[tuple[list, int]]:
    """Group the corpus records into ``(payloads, source_bytes)`` chunks."""
    payloads: list = []
    source_bytes = 0
    for record in corpus:
        payloads.append(record.text if record.kind == "text" else record.messages)
        source_bytes += record.size_bytes
        if len(payloads) >= CHUNK_RECORDS or source_bytes >= CHUNK_BYTES:
            yield payloads, source_bytes
            payloads, source_bytes = [], 0
    if payloads:
        yield payloads, source_bytes


def _encode_corpus(corpus: Corpus, tokenizer: Tokenizer, workers: int) -> Iterator[tuple[EncodedChunk, int]]:
    """Yield ``(encoded chunk, source_bytes)`` in corpus order."""
    if workers == 1:
        for payloads, source_bytes in _chunk_records(corpus):
            yield _encode_chunk(tokenizer, corpus.kind, payloads), source_bytes
        return

    # Leaving the with block (also on error or when the consumer stops early) terminates the pool.
    with multiprocessing.Pool(workers, initializer=_start_worker, initargs=(tokenizer.model_proto,)) as pool:
        in_flight: deque = deque()
        for payloads, source_bytes in _chunk_records(corpus):
            in_flight.append((pool.apply_async(_encode_in_worker, (corpus.kind, payloads)), source_bytes))
            if len(in_flight) >= workers * CHUNKS_IN_FLIGHT_PER_WORKER:
                result, done_bytes = in_flight.popleft()
                yield result.get(), done_bytes
        while in_flight:
            result, done_bytes = in_flight.popleft()
            yield result.get(), done_bytes


class _BatchWriter:
    """Writer of window rows to an Arrow IPC file, in record batches of about BATCH_TOKENS tokens."""

    def __init__(self, path: Path, schema: pa.Schema, window: int):
        self._schema = schema
        self._rows_per_batch = max(1, BATCH_TOKENS // window)
        self._buffered: list[WindowRows] = []
        self._buffered_rows = 0
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)

    def __enter__(self) -> _BatchWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self._flush(final=True)
        self._writer.close()
        self._sink.close()

    def write(self, rows: WindowRows) -> None:
        if len(rows[0]):
            self._buffered.append(rows)
            self._buffered_rows += len(rows[0])
        if self._buffered_rows >= self._rows_per_batch:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._buffered:
            return
        input_ids = np.concatenate([ids for ids, _ in self._buffered])
        loss_mask = np.concatenate([mask for _, mask in self._buffered])
        full = len(input_ids) if final else len(input_ids) // self._rows_per_batch * self._rows_per_batch
        for start in range(0, full, self._rows_per_batch):
            stop = min(start + self._rows_per_batch, full)
            self._writer.write_batch(self._record_batch(input_ids[start:stop], loss_mask[start:stop]))
        self._buffered = [(input_ids[full:], loss_mask[full:])] if full < len(input_ids) else []
        self._buffered_rows = len(input_ids) - full

    def _record_batch(self, input_ids: np.ndarray, loss_mask: np.ndarray) -> pa.RecordBatch:
        window = input_ids.shape[1]
        columns = [
            pa.FixedSizeListArray.from_arrays(pa.array(input_ids.reshape(-1)), window),
            pa.FixedSizeListArray.from_arrays(pa.array(loss_mask.reshape(-1)), window),
        ]
        return pa.record_batch(columns, schema=self._schema)


def _copy_batches(source: Path, target: Path, schema: pa.Schema) -> None:
    """Copy every record batch of the Arrow file ``source`` into ``target`` under ``schema``."""
    with pa.memory_map(str(source)) as mapped, pa.OSFile(str(target), "wb") as sink:
        reader = pa.ipc.open_file(mapped)
        with pa.ipc.new_file(sink, schema) as writer:
            for index in range(reader.num_record_batches):
                batch = reader.get_batch(index)
                writer.write_batch(pa.record_batch(batch.columns, schema=schema))
