"""Memory-mapped access to the rows of a packed file, the base of every dataset class.

Design choices:
- The file is memory-mapped read-only (``mmap``) and opened with ``pa.ipc.open_file`` over that
  map. The values of each record batch are viewed as numpy arrays without copying: a
  ``(rows, width)`` array per fixed-size-list column, offsets and values per variable-length
  column. The operating system reads a row's pages on first access and shares them between
  DataLoader workers through its page cache, so opening a file reads only its footer and batch
  headers, and a file larger than RAM works.
- Every page the process touches stays mapped and counts towards its resident set, and the kernel
  maps whole neighbourhoods of pages on each fault (about 170 KiB per fault at a random offset of a
  200 MB file, measured on Linux 6.18). Shuffled training over a large file would therefore grow
  the RSS with every new row, up to the file size. So every ``RELEASE_EVERY_ROWS`` rows the dataset
  advises the kernel that it no longer needs the mapped pages (``MADV_DONTNEED``). The pages stay in
  the page cache, a later access maps them again without reading the disk, and the RSS the map adds
  stays at the pages of a few rows, whatever the file size.
- Each dataset class names the record kinds it reads. Opening a file of another kind fails with
  the name of the class that reads it.
- Pickling stores only the path, so a DataLoader worker started with ``spawn`` maps the file itself.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from astrai_core import Tokenizer
from torch.utils.data import Dataset

from .format import PackedFileError, kind_columns, read_metadata, tokenizer_fingerprint

DATASET_FOR_KIND = {
    "text": "PackedDataset",
    "chat": "PackedDataset",
    "preference": "PreferenceDataset",
    "prompt": "PromptDataset",
}


# Rows read between two releases of the mapped pages; bounds the RSS the map adds.
RELEASE_EVERY_ROWS = 16


def open_reader(path: Path) -> tuple[pa.ipc.RecordBatchFileReader, mmap.mmap]:
    """Memory-map the Arrow IPC file at ``path`` and open it; return the reader and the map.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PackedFileError: ``path`` is not an Arrow IPC file.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"packed file {path} not found; create it with 'astrai-data pack CORPUS OUT.arrow --tokenizer TOK.model'"
        )
    with path.open("rb") as file:
        try:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            mapped = None
    try:
        if mapped is None:
            raise pa.ArrowInvalid("the file is empty")
        return pa.ipc.open_file(pa.py_buffer(mapped)), mapped
    except pa.ArrowInvalid as error:
        raise PackedFileError(
            f"{path} is not an Arrow IPC file ({error}); pass a file written by 'astrai-data pack'"
        ) from None


class MappedPack(Dataset):
    """Rows of a packed Arrow file, memory-mapped; subclasses turn a row into a training example.

    Attributes:
        path: The packed file.
        metadata: The file's metadata: kind, seq_len, tokenizer facts, counts, versions.
        seq_len: Model context length the file was packed for (the maximum prompt length for prompts).
        kind: The record kind of the file.
    """

    KINDS: tuple[str, ...] = ()
    """The record kinds this class reads."""

    def __init__(self, path: str | os.PathLike):
        """Memory-map a packed file and check that it is one of the kinds this class reads.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            PackedFileError: ``path`` is not an Arrow IPC file, lacks the AstrAI metadata or columns,
                has an old format, contains another record kind, or has fewer or more rows than its
                metadata records.
        """
        self.path = Path(path)
        self._open()

    def _open(self) -> None:
        reader, self._mapped = open_reader(self.path)
        self._rows_since_release = 0
        self.metadata: dict = read_metadata(reader.schema, self.path)
        self.seq_len: int = self.metadata["seq_len"]
        self.kind: str = self.metadata["kind"]
        if self.kind not in self.KINDS:
            raise PackedFileError(
                f"{self.path} contains {self.kind} records, which {type(self).__name__} does not read; open it "
                f"with {DATASET_FOR_KIND[self.kind]}, or with open_dataset() to pick the class by kind"
            )

        fields = kind_columns(self.kind, self.seq_len)
        self._columns: dict[str, list] = {field.name: [] for field in fields}
        for index in range(reader.num_record_batches):
            batch = reader.get_batch(index)
            for field in fields:
                self._columns[field.name].append(_view_column(batch.column(field.name)))
        # _starts[b] is the index of the first row of batch b; the last entry is the total.
        first = fields[0].name
        self._starts = np.cumsum([0] + [_column_length(view) for view in self._columns[first]])

        expected = self.metadata["counts"]["windows"]
        if self._starts[-1] != expected:
            raise PackedFileError(
                f"{self.path} has {self._starts[-1]} rows but its metadata records {expected}; "
                "the file is damaged, pack the corpus again"
            )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def row(self, index: int) -> dict[str, np.ndarray | str | None]:
        """Return row ``index`` as read-only numpy views (and Python strings for string columns).

        Negative indices count from the end.

        Raises:
            IndexError: ``index`` is out of range.
        """
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"row {index} out of range for {self.path} with {size} rows")
        index %= size
        self._rows_since_release += 1
        if self._rows_since_release >= RELEASE_EVERY_ROWS:
            self.release_pages()
        batch = int(np.searchsorted(self._starts, index, side="right")) - 1
        offset = index - int(self._starts[batch])
        return {name: _view_row(views[batch], offset) for name, views in self._columns.items()}

    def release_pages(self) -> None:
        """Unmap the file pages this process has touched; views stay valid and map them again on access."""
        self._rows_since_release = 0
        # NOTE: measured on Linux only. Without MADV_DONTNEED (Windows) nothing is released, and
        # macOS may treat the advice lazily, so there the RSS can still grow with the rows read.
        if hasattr(mmap, "MADV_DONTNEED"):
            self._mapped.madvise(mmap.MADV_DONTNEED)

    def column_batches(self, name: str) -> list:
        """Return the views of column ``name``, one per record batch, in row order.

        A fixed-size-list column gives ``(rows, width)`` numpy arrays, a variable-length one
        ``(offsets, values)`` pairs, and a string column Arrow arrays.
        """
        return list(self._columns[name])

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


def _view_column(column: pa.Array) -> object:
    """View one record batch's column without copying: an array, an (offsets, values) pair, or Arrow strings."""
    if isinstance(column, pa.FixedSizeListArray):
        width = column.type.list_size
        return column.flatten().to_numpy(zero_copy_only=True).reshape(-1, width)
    if isinstance(column, pa.ListArray):
        offsets = column.offsets.to_numpy(zero_copy_only=True)
        return offsets, column.values.to_numpy(zero_copy_only=True)
    return column


def _column_length(view: object) -> int:
    if isinstance(view, tuple):
        return len(view[0]) - 1
    return len(view)


def _view_row(view: object, offset: int) -> np.ndarray | str | None:
    if isinstance(view, np.ndarray):
        return view[offset]
    if isinstance(view, tuple):
        offsets, values = view
        return values[offsets[offset] : offsets[offset + 1]]
    return view[offset].as_py()
