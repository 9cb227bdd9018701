"""Cutting tokenized documents into fixed-length training windows of ``seq_len + 1`` tokens.

Design choices:
- Text documents (``[bos] + tokens + [eos]`` each) are concatenated into one stream and cut into
  consecutive, non-overlapping windows. Every token lands in exactly one window and a long document
  simply continues in the next window. The price of not overlapping: the step from the last token of
  one window to the first token of the next is never a training target.
- Chat conversations are never split, because the second half of a cut conversation would teach
  answers without their question. They are packed whole and in order (next-fit): a conversation
  goes into the current window if it fits, else the window is closed and a new one started.
- A conversation longer than a window keeps its first ``seq_len + 1`` tokens and is counted as
  truncated. If the cut leaves no token with loss mask 1, nothing in it is learnable, so it is
  dropped and counted as dropped (not as truncated).
- Only the last text window can be partial. Chat windows end wherever the next conversation does
  not fit. Padding is ``pad_id`` with loss mask 0 in both cases.
- Documents sharing a window are not isolated from each other by attention. In chat windows every
  conversation starts with ``bos`` whose loss mask is 0, so no target crosses a conversation boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WindowRows = tuple[np.ndarray, np.ndarray]
"""``(input_ids, loss_mask)``: int32 and uint8 arrays of shape ``(rows, seq_len + 1)``."""


@dataclass(frozen=True)
class EncodedChunk:
    """Several tokenized documents, concatenated.

    Attributes:
        ids: int32 token ids of all documents, one after another.
        loss_mask: uint8 loss mask aligned with ``ids`` (1 where the token is a training target).
        lengths: Token count of each document, in order; sums to ``len(ids)``.
    """

    ids: np.ndarray
    loss_mask: np.ndarray
    lengths: np.ndarray


class TextWindows:
    """Windowing of text: documents concatenated into one stream, cut whenever a window is full."""

    def __init__(self, seq_len: int, pad_id: int):
        self.window = seq_len + 1
        self.pad_id = pad_id
        self.documents = self.tokens = self.windows = self.truncated = self.dropped = 0
        self._pending = np.empty(0, dtype=np.int32)

    def add(self, chunk: EncodedChunk) -> WindowRows:
        """Append the chunk's documents to the stream and return the windows it completes."""
        self.documents += len(chunk.lengths)
        self.tokens += len(chunk.ids)
        stream = np.concatenate([self._pending, chunk.ids])
        full = len(stream) // self.window * self.window
        # Copy the remainder (under one window) so the whole stream can be freed.
        self._pending = stream[full:].copy()
        input_ids = stream[:full].reshape(-1, self.window)
        self.windows += len(input_ids)
        return input_ids, np.ones(input_ids.shape, dtype=np.uint8)

    def finish(self) -> WindowRows:
        """Return the last, padded window, or no rows when the stream ended on a window boundary."""
        used = len(self._pending)
        if used == 0:
            return _no_rows(self.window)
        input_ids = np.full((1, self.window), self.pad_id, dtype=np.int32)
        loss_mask = np.zeros((1, self.window), dtype=np.uint8)
        input_ids[0, :used] = self._pending
        loss_mask[0, :used] = 1
        self._pending = self._pending[:0]
        self.windows += 1
        return input_ids, loss_mask


class ChatWindows:
    """Windowing of chat: whole conversations per window, truncated or dropped when too long."""

    def __init__(self, seq_len: int, pad_id: int):
        self.window = seq_len + 1
        self.pad_id = pad_id
        self.documents = self.tokens = self.windows = self.truncated = self.dropped = 0
        self._ids = np.full(self.window, pad_id, dtype=np.int32)
        self._mask = np.zeros(self.window, dtype=np.uint8)
        self._used = 0

    def add(self, chunk: EncodedChunk) -> WindowRows:
        """Place each conversation of the chunk and return the windows closed on the way."""
        closed: list[tuple[np.ndarray, np.ndarray]] = []
        start = 0
        for length in chunk.lengths.tolist():
            ids = chunk.ids[start : start + length]
            mask = chunk.loss_mask[start : start + length]
            start += length

            if length > self.window:
                ids, mask = ids[: self.window], mask[: self.window]
                if not mask.any():
                    self.dropped += 1
                    continue
                self.truncated += 1
            if self._used + len(ids) > self.window:
                closed.append(self._close())

            self._ids[self._used : self._used + len(ids)] = ids
            self._mask[self._used : self._used + len(ids)] = mask
            self._used += len(ids)
            self.documents += 1
            self.tokens += len(ids)

        if not closed:
            return _no_rows(self.window)
        return np.stack([ids for ids, _ in closed]), np.stack([mask for _, mask in closed])

    def finish(self) -> WindowRows:
        """Return the last window if it contains any conversation."""
        if self._used == 0:
            return _no_rows(self.window)
        ids, mask = self._close()
        return ids[None], mask[None]

    def _close(self) -> tuple[np.ndarray, np.ndarray]:
        window = self._ids.copy(), self._mask.copy()
        self._ids.fill(self.pad_id)
        self._mask.fill(0)
        self._used = 0
        self.windows += 1
        return window


def _no_rows(window: int) -> WindowRows:
    return np.empty((0, window), dtype=np.int32), np.empty((0, window), dtype=np.uint8)
