"""Turning tokenized records into the rows of a packed file, one packer per record kind.

Design choices:
- Text documents (``[bos] + tokens + [eos]`` each) are concatenated into one stream and cut into
  consecutive, non-overlapping windows of ``seq_len + 1`` tokens. Every token lands in exactly one
  window. The price of not overlapping: the step from the last token of one window to the first
  token of the next is never a training target.
- Several documents share a window, and ``position_ids`` keeps them apart: positions restart at 0
  where a document starts, where a window starts, and where padding starts. A reader derives
  document ids from the restarts and blocks attention between documents. A document that continues
  into the next window starts there again at position 0. It cannot see its own beginning, just as
  if it had been split into two documents, and its RoPE positions stay below the window length.
- Chat conversations are never split, because the second half of a cut conversation would teach
  answers without their question. They are packed whole and in order (next-fit): a conversation
  goes into the current window if it fits, else the window is closed and a new one started. One
  longer than a window follows the :mod:`~astrai_data.truncation` policy.
- A preference pair is one row: the chosen and the rejected sequence, each padded to a window of
  ``seq_len + 1`` tokens, truncated together so that both keep the same prompt tokens.
- A prompt is one row of variable length, at most ``seq_len`` tokens, with its reference answer.
- Padding is ``pad_id`` with loss mask 0. Every packer counts the tokens it receives, stores,
  truncates and drops, and ``tokens_in == tokens + truncated_tokens + dropped_tokens`` always holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .encoding import EncodedChunk
from .truncation import cut_sequence, prompt_cut

Rows = dict[str, object]
"""Columns of some rows: a ``(rows, width)`` numpy array per fixed-width column, a list otherwise."""


@dataclass
class PackCounts:
    """Counts of a packing run, stored in the packed file's metadata.

    Attributes:
        documents: Records packed: documents, conversations, preference pairs or prompts.
        windows: Rows written.
        tokens_in: Tokens of every record after tokenization, kept or dropped.
        tokens: Tokens stored, padding excluded.
        truncated: Records shortened to fit.
        truncated_tokens: Tokens removed from the truncated records.
        dropped: Records left out because they did not fit (or kept no learnable token).
        dropped_tokens: Tokens of the dropped records.
    """

    documents: int = 0
    windows: int = 0
    tokens_in: int = 0
    tokens: int = 0
    truncated: int = 0
    truncated_tokens: int = 0
    dropped: int = 0
    dropped_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def positions_from_starts(starts: np.ndarray) -> np.ndarray:
    """Return int32 positions that restart at 0 at each True of ``starts`` (rows, width) and each row start."""
    starts = starts.copy()
    starts[:, 0] = True
    index = np.broadcast_to(np.arange(starts.shape[1]), starts.shape)
    last_start = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    return (index - last_start).astype(np.int32)


class TextWindows:
    """Windows of text: documents concatenated into one stream, cut whenever a window is full."""

    def __init__(self, seq_len: int, pad_id: int):
        self.window = seq_len + 1
        self.pad_id = pad_id
        self.counts = PackCounts()
        self._pending = np.empty(0, dtype=np.int32)
        self._pending_starts = np.empty(0, dtype=bool)

    def add(self, chunk: EncodedChunk) -> Rows:
        """Append the chunk's documents to the stream and return the windows it completes."""
        sequences = chunk.sequences
        self.counts.documents += len(sequences)
        self.counts.tokens_in += len(sequences.ids)
        self.counts.tokens += len(sequences.ids)
        starts = np.zeros(len(sequences.ids), dtype=bool)
        starts[np.cumsum(sequences.lengths) - sequences.lengths] = True

        stream = np.concatenate([self._pending, sequences.ids])
        stream_starts = np.concatenate([self._pending_starts, starts])
        full = len(stream) // self.window * self.window
        # Copy the remainder (under one window) so the whole stream can be freed.
        self._pending, self._pending_starts = stream[full:].copy(), stream_starts[full:].copy()
        input_ids = stream[:full].reshape(-1, self.window)
        self.counts.windows += len(input_ids)
        return {
            "input_ids": input_ids,
            "loss_mask": np.ones(input_ids.shape, dtype=np.uint8),
            "position_ids": positions_from_starts(stream_starts[:full].reshape(-1, self.window)),
        }

    def finish(self) -> Rows:
        """Return the last, padded window, or no rows when the stream ended on a window boundary."""
        used = len(self._pending)
        if used == 0:
            return _no_windows(self.window)
        input_ids = np.full((1, self.window), self.pad_id, dtype=np.int32)
        loss_mask = np.zeros((1, self.window), dtype=np.uint8)
        starts = np.zeros((1, self.window), dtype=bool)
        input_ids[0, :used], loss_mask[0, :used], starts[0, :used] = self._pending, 1, self._pending_starts
        if used < self.window:
            starts[0, used] = True  # padding is a segment of its own
        self._pending, self._pending_starts = self._pending[:0], self._pending_starts[:0]
        self.counts.windows += 1
        return {"input_ids": input_ids, "loss_mask": loss_mask, "position_ids": positions_from_starts(starts)}


class ChatWindows:
    """Windows of chat: whole conversations per window, truncated or dropped when too long."""

    def __init__(self, seq_len: int, pad_id: int, too_long: str = "truncate"):
        self.window = seq_len + 1
        self.pad_id = pad_id
        self.too_long = too_long
        self.counts = PackCounts()
        self._ids = np.full(self.window, pad_id, dtype=np.int32)
        self._mask = np.zeros(self.window, dtype=np.uint8)
        self._starts = np.zeros(self.window, dtype=bool)
        self._used = 0

    def add(self, chunk: EncodedChunk) -> Rows:
        """Place each conversation of the chunk and return the windows closed on the way."""
        closed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for ids, mask, prompt_length in chunk.sequences.split():
            self.counts.tokens_in += len(ids)
            fitted = _fit(ids, mask, prompt_length, self.window, self.too_long, self.counts)
            if fitted is None:
                continue
            ids, mask = fitted
            if self._used + len(ids) > self.window:
                closed.append(self._close())

            end = self._used + len(ids)
            self._ids[self._used : end], self._mask[self._used : end] = ids, mask
            self._starts[self._used] = True
            self._used = end
            self.counts.documents += 1
            self.counts.tokens += len(ids)
        return _stack_windows(closed, self.window)

    def finish(self) -> Rows:
        """Return the last window if it contains any conversation."""
        if self._used == 0:
            return _no_windows(self.window)
        return _stack_windows([self._close()], self.window)

    def _close(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._used < self.window:
            self._starts[self._used] = True  # padding is a segment of its own
        window = self._ids.copy(), self._mask.copy(), self._starts.copy()
        self._ids.fill(self.pad_id)
        self._mask.fill(0)
        self._starts.fill(False)
        self._used = 0
        self.counts.windows += 1
        return window


_PAIR_COLUMNS = ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")


class PreferenceRows:
    """Rows of preference pairs: chosen and rejected sequences, each padded to one window."""

    def __init__(self, seq_len: int, pad_id: int, too_long: str = "truncate"):
        self.window = seq_len + 1
        self.pad_id = pad_id
        self.too_long = too_long
        self.counts = PackCounts()

    def add(self, chunk: EncodedChunk) -> Rows:
        """Return one row per pair of the chunk that is kept."""
        assert chunk.rejected is not None, "a preference chunk has rejected sequences"
        rows = []
        for chosen, rejected in zip(chunk.sequences.split(), chunk.rejected.split(), strict=True):
            rows.append(self._pair(chosen, rejected))
        rows = [row for row in rows if row is not None]
        if not rows:
            return self.finish()
        return {name: np.stack([row[column] for row in rows]) for column, name in enumerate(_PAIR_COLUMNS)}

    def finish(self) -> Rows:
        """Return no rows: pairs are written as they come."""
        dtypes = (np.int32, np.uint8, np.int32, np.uint8)
        return {name: np.empty((0, self.window), dtype) for name, dtype in zip(_PAIR_COLUMNS, dtypes, strict=True)}

    def _pair(self, chosen: tuple, rejected: tuple) -> tuple[np.ndarray, ...] | None:
        (chosen_ids, chosen_mask, chosen_prompt), (rejected_ids, rejected_mask, rejected_prompt) = chosen, rejected
        length_in = len(chosen_ids) + len(rejected_ids)
        self.counts.tokens_in += length_in
        longest = max(len(chosen_ids), len(rejected_ids))
        if longest > self.window and self.too_long == "drop":
            return self._drop(length_in)

        # One cut for both sides, so that chosen and rejected keep the same prompt tokens.
        cut = prompt_cut(longest, min(chosen_prompt, rejected_prompt), self.window)
        chosen_ids, chosen_mask = cut_sequence(chosen_ids, chosen_mask, cut, self.window)
        rejected_ids, rejected_mask = cut_sequence(rejected_ids, rejected_mask, cut, self.window)
        if not chosen_mask.any() or not rejected_mask.any():
            return self._drop(length_in)

        stored = len(chosen_ids) + len(rejected_ids)
        if stored < length_in:
            self.counts.truncated += 1
            self.counts.truncated_tokens += length_in - stored
        self.counts.documents += 1
        self.counts.windows += 1
        self.counts.tokens += stored
        return (*self._pad(chosen_ids, chosen_mask), *self._pad(rejected_ids, rejected_mask))

    def _drop(self, length_in: int) -> None:
        self.counts.dropped += 1
        self.counts.dropped_tokens += length_in

    def _pad(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        padded_ids = np.full(self.window, self.pad_id, dtype=np.int32)
        padded_mask = np.zeros(self.window, dtype=np.uint8)
        padded_ids[: len(ids)], padded_mask[: len(mask)] = ids, mask
        return padded_ids, padded_mask


class PromptRows:
    """Rows of prompts: the prompt's token ids (at most ``seq_len``) and its reference answer."""

    def __init__(self, seq_len: int, pad_id: int, too_long: str = "truncate"):
        self.max_prompt = seq_len
        self.too_long = too_long
        self.counts = PackCounts()

    def add(self, chunk: EncodedChunk) -> Rows:
        """Return one row per prompt of the chunk that is kept."""
        assert chunk.answers is not None, "a prompt chunk has answers"
        prompts, answers = [], []
        for (ids, _, _), answer in zip(chunk.sequences.split(), chunk.answers, strict=True):
            self.counts.tokens_in += len(ids)
            if len(ids) > self.max_prompt:
                if self.too_long == "drop":
                    self.counts.dropped += 1
                    self.counts.dropped_tokens += len(ids)
                    continue
                cut = prompt_cut(len(ids), len(ids), self.max_prompt)
                ids, _ = cut_sequence(ids, ids, cut, self.max_prompt)
                self.counts.truncated += 1
                self.counts.truncated_tokens += cut
            prompts.append(ids)
            answers.append(answer)
        self.counts.documents += len(prompts)
        self.counts.windows += len(prompts)
        self.counts.tokens += sum(len(ids) for ids in prompts)
        return {"prompt_ids": prompts, "answer": answers}

    def finish(self) -> Rows:
        """Return no rows: prompts are written as they come."""
        return {"prompt_ids": [], "answer": []}


def _fit(
    ids: np.ndarray, mask: np.ndarray, prompt_length: int, window: int, too_long: str, counts: PackCounts
) -> tuple[np.ndarray, np.ndarray] | None:
    """Apply the too-long policy to one sequence, updating ``counts``; ``None`` means dropped."""
    if len(ids) <= window:
        return ids, mask
    if too_long == "truncate":
        cut = prompt_cut(len(ids), prompt_length, window)
        kept_ids, kept_mask = cut_sequence(ids, mask, cut, window)
        if kept_mask.any():
            counts.truncated += 1
            counts.truncated_tokens += len(ids) - len(kept_ids)
            return kept_ids, kept_mask
    counts.dropped += 1
    counts.dropped_tokens += len(ids)
    return None


def _stack_windows(windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], width: int) -> Rows:
    if not windows:
        return _no_windows(width)
    return {
        "input_ids": np.stack([ids for ids, _, _ in windows]),
        "loss_mask": np.stack([mask for _, mask, _ in windows]),
        "position_ids": positions_from_starts(np.stack([starts for _, _, starts in windows])),
    }


def _no_windows(width: int) -> Rows:
    return {
        "input_ids": np.empty((0, width), dtype=np.int32),
        "loss_mask": np.empty((0, width), dtype=np.uint8),
        "position_ids": np.empty((0, width), dtype=np.int32),
    }
