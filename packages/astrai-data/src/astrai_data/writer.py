"""Writing packed rows to an Arrow IPC file that appears under its name only when it is complete.

Design choices:
- Arrow writes the schema, and with it the metadata, at the start of the file, but the counts are
  known only at the end. So the rows are written batch by batch, as they are completed, to a
  scratch Arrow file. At the end the batches are copied from a memory map of the scratch file into
  the final file under the schema with the full metadata. This costs one extra sequential write of
  the output size, and memory still contains one record batch at a time.
- Both files sit next to the output under hidden temporary names that include the process id.
  The final file is renamed over the output only once it is complete (``os.replace``, atomic within
  one file system), and both are removed on any error, Ctrl-C included. An interrupted pack
  therefore never leaves a file that looks complete, and an older output survives.
- A record batch holds whole rows, about ``BATCH_TOKENS`` tokens. Fixed-width columns arrive as
  ``(rows, width)`` numpy arrays, variable-length ones as lists of arrays, strings as lists.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from .rows import Rows

# Tokens per record batch of the output file (rounded down to whole rows, at least one row).
BATCH_TOKENS = 1 << 20


@contextmanager
def staged_paths(output: Path) -> Iterator[tuple[Path, Path]]:
    """Yield ``(scratch, staged)`` temporary paths beside ``output`` and remove both on exit."""
    scratch = output.with_name(f".{output.name}.{os.getpid()}.rows.tmp")
    staged = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        yield scratch, staged
    finally:
        scratch.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)


class RowWriter:
    """Writer of rows to an Arrow IPC file, in record batches of about ``BATCH_TOKENS`` tokens."""

    def __init__(self, path: Path, schema: pa.Schema, tokens_per_row: int):
        self._schema = schema
        self._rows_per_batch = max(1, BATCH_TOKENS // max(tokens_per_row, 1))
        self._buffered: list[Rows] = []
        self._buffered_rows = 0
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                self._flush(final=True)
        finally:
            self._writer.close()
            self._sink.close()

    def write(self, rows: Rows) -> None:
        """Buffer ``rows`` and write every full record batch."""
        count = _row_count(rows)
        if count:
            self._buffered.append(rows)
            self._buffered_rows += count
        if self._buffered_rows >= self._rows_per_batch:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._buffered:
            return
        columns = {name: _concatenate([rows[name] for rows in self._buffered]) for name in self._schema.names}
        total = self._buffered_rows
        full = total if final else total // self._rows_per_batch * self._rows_per_batch
        for start in range(0, full, self._rows_per_batch):
            stop = min(start + self._rows_per_batch, full)
            arrays = [_to_arrow(columns[field.name][start:stop], field) for field in self._schema]
            self._writer.write_batch(pa.record_batch(arrays, schema=self._schema))
        rest = {name: values[full:] for name, values in columns.items()}
        self._buffered = [rest] if full < total else []
        self._buffered_rows = total - full


def copy_batches(source: Path, target: Path, schema: pa.Schema) -> None:
    """Copy every record batch of the Arrow file ``source`` into ``target`` under ``schema``."""
    with pa.memory_map(str(source)) as mapped, pa.OSFile(str(target), "wb") as sink:
        reader = pa.ipc.open_file(mapped)
        with pa.ipc.new_file(sink, schema) as writer:
            for index in range(reader.num_record_batches):
                batch = reader.get_batch(index)
                writer.write_batch(pa.record_batch(batch.columns, schema=schema))


def _row_count(rows: Rows) -> int:
    return len(next(iter(rows.values())))


def _concatenate(parts: list) -> np.ndarray | list:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [value for part in parts for value in part]


def _to_arrow(values: np.ndarray | list, field: pa.Field) -> pa.Array:
    """Build the Arrow array of one column from a numpy block or a list of values."""
    if pa.types.is_fixed_size_list(field.type):
        flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=field.type.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, field.type.list_size)
    if pa.types.is_list(field.type):
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum([len(value) for value in values], out=offsets[1:])
        flat = np.concatenate(values) if len(values) else np.empty(0, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=field.type.value_type))
    return pa.array(values, type=field.type)
