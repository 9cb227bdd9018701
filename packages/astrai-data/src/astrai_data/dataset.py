"""A PyTorch dataset over a packed file, memory-mapped so that opening it reads almost nothing.

Design choices:
- The file is opened with ``pa.memory_map`` and ``pa.ipc.open_file``, and the values of each record
  batch are viewed as a ``(rows, seq_len + 1)`` numpy array without copying. The operating system
  reads a window's pages on first access and shares them between DataLoader workers through its page
  cache, so a file larger than RAM works.
- ``__getitem__`` copies one window into int64 tensors: torch wants writable memory, and int64 is
  what embeddings and ``cross_entropy`` take.
- ``labels`` is the window shifted by one, with ``-100`` (the default ``ignore_index`` of
  ``torch.nn.functional.cross_entropy``) wherever the target token has loss mask 0: padding, and in
  chat files everything except assistant replies.
- Pickling stores only the path, so a DataLoader worker started with ``spawn`` maps the file itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from astrai_core import Tokenizer
from torch.utils.data import Dataset

from .format import INPUT_IDS, LOSS_MASK, PackedFileError, read_metadata, tokenizer_fingerprint

IGNORE_INDEX = -100


class PackedDataset(Dataset):
    """Windows of a packed Arrow file as ``{"input_ids", "labels"}`` training examples.

    Attributes:
        path: The packed file.
        metadata: The file's metadata: kind, seq_len, tokenizer facts, counts, versions.
        seq_len: Length of ``input_ids`` and ``labels``; the stored windows are one token longer.
        kind: ``"text"`` or ``"chat"``.
    """

    def __init__(self, path: str | os.PathLike):
        """Memory-map a packed file and check that it is one.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            PackedFileError: ``path`` is not an Arrow IPC file, lacks the AstrAI metadata or columns,
                or has fewer or more windows than its metadata records.
        """
        self.path = Path(path)
        self._open()

    def _open(self) -> None:
        if not self.path.is_file():
            raise FileNotFoundError(
                f"packed file {self.path} not found; create it with "
                "'astrai-data pack CORPUS OUT.arrow --tokenizer TOK.model'"
            )
        mapped = pa.memory_map(str(self.path))
        try:
            reader = pa.ipc.open_file(mapped)
        except pa.ArrowInvalid as error:
            raise PackedFileError(
                f"{self.path} is not an Arrow IPC file ({error}); pass a file written by 'astrai-data pack'"
            ) from None
        self.metadata: dict = read_metadata(reader.schema, self.path)
        self.seq_len: int = self.metadata["seq_len"]
        self.kind: str = self.metadata["kind"]

        window = self.seq_len + 1
        self._input_ids: list[np.ndarray] = []
        self._loss_mask: list[np.ndarray] = []
        for index in range(reader.num_record_batches):
            batch = reader.get_batch(index)
            self._input_ids.append(_view_rows(batch.column(INPUT_IDS), window))
            self._loss_mask.append(_view_rows(batch.column(LOSS_MASK), window))
        # _starts[b] is the index of the first window of batch b; the last entry is the total.
        self._starts = np.cumsum([0] + [len(rows) for rows in self._input_ids])

        expected = self.metadata["counts"]["windows"]
        if self._starts[-1] != expected:
            raise PackedFileError(
                f"{self.path} has {self._starts[-1]} windows but its metadata records {expected}; "
                "the file is damaged, pack the corpus again"
            )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the stored window ``index`` as read-only ``(input_ids, loss_mask)`` views.

        Both arrays have ``seq_len + 1`` entries (int32 and uint8). Negative indices count from the end.

        Raises:
            IndexError: ``index`` is out of range.
        """
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"window {index} out of range for {self.path} with {size} windows")
        index %= size
        batch = int(np.searchsorted(self._starts, index, side="right")) - 1
        row = index - int(self._starts[batch])
        return self._input_ids[batch][row], self._loss_mask[batch][row]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Return ``input_ids`` (the window without its last token) and ``labels`` (without its first).

        Both are int64 tensors of length ``seq_len``; ``labels`` is ``-100`` where the target token
        has loss mask 0.
        """
        ids, loss_mask = self.window(index)
        input_ids = torch.from_numpy(ids[:-1].astype(np.int64))
        labels = ids[1:].astype(np.int64)
        labels[loss_mask[1:] == 0] = IGNORE_INDEX
        return {"input_ids": input_ids, "labels": torch.from_numpy(labels)}

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Raise if the file was not packed with ``tokenizer``.

        Raises:
            PackedFileError: The vocabulary size or the tokenizer's SHA-256 fingerprint differs from
                the one recorded when the file was packed.
        """
        packed_vocab = self.metadata["vocab_size"]
        if tokenizer.vocab_size != packed_vocab:
            raise PackedFileError(
                f"{self.path} was packed with a vocabulary of {packed_vocab} tokens, but the tokenizer has "
                f"{tokenizer.vocab_size}; use the tokenizer it was packed with, or pack the corpus again"
            )
        packed_sha = self.metadata["tokenizer_sha256"]
        sha = tokenizer_fingerprint(tokenizer)
        if sha != packed_sha:
            raise PackedFileError(
                f"{self.path} was packed with another tokenizer (sha256 {packed_sha[:12]}, this one is "
                f"{sha[:12]}); use the tokenizer it was packed with, or pack the corpus again"
            )

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._open()


def _view_rows(column: pa.FixedSizeListArray, window: int) -> np.ndarray:
    """View a fixed-size-list column as a ``(rows, window)`` numpy array over the mapped file."""
    return column.flatten().to_numpy(zero_copy_only=True).reshape(-1, window)
