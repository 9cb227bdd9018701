"""Measuring a packed file: mask coverage, padding and the share of each language.

Design choices:
- Mask coverage and padding are counted over the whole file, one record batch at a time with
  numpy, so even a file of gigabytes is measured in seconds without being loaded.
- The language share needs decoded text, so it is measured on up to ``sample_rows`` rows spread
  evenly over the file (all rows of a smaller file). Each document segment of a window, each pair's
  chosen sequence and each prompt is decoded and classified with ``astrai_core.detect_language``,
  and its tokens count towards that language.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astrai_core import Tokenizer, detect_language

from .mapped_file import MappedPack

LANGUAGES = ("zh", "en")
# Columns holding the loss masks of each kind, and the fixed-width token columns beside them.
MASK_COLUMNS = {"text": ("loss_mask",), "chat": ("loss_mask",), "preference": ("chosen_mask", "rejected_mask")}
ID_COLUMNS = {"text": ("input_ids",), "chat": ("input_ids",), "preference": ("chosen_ids", "rejected_ids")}


@dataclass(frozen=True)
class PackReport:
    """Measurements of a packed file beyond the counts stored in its metadata.

    Attributes:
        tokens: Tokens stored, padding excluded.
        learnable_tokens: Stored tokens with loss mask 1.
        slots: Token positions of all rows, padding included (``tokens`` for prompt files).
        language_tokens: Tokens per language on the sampled rows; ``None`` without a tokenizer.
        sampled_rows: Rows the language share was measured on.
    """

    tokens: int
    learnable_tokens: int
    slots: int
    language_tokens: dict[str, int] | None
    sampled_rows: int

    @property
    def mask_coverage(self) -> float:
        """Share of the stored tokens that are training targets."""
        return self.learnable_tokens / max(self.tokens, 1)

    @property
    def padding_share(self) -> float:
        """Share of the token positions that hold padding."""
        return 1 - self.tokens / max(self.slots, 1)

    def language_shares(self) -> dict[str, float] | None:
        """Share of the sampled tokens per language, or ``None`` without a measurement."""
        if self.language_tokens is None:
            return None
        total = max(sum(self.language_tokens.values()), 1)
        return {language: count / total for language, count in self.language_tokens.items()}


def inspect_pack(dataset: MappedPack, tokenizer: Tokenizer | None = None, sample_rows: int = 1000) -> PackReport:
    """Measure mask coverage and padding over the whole file, and the language share on a sample.

    Args:
        dataset: The opened packed file.
        tokenizer: The tokenizer the file was packed with; without it the language share is skipped.
        sample_rows: Most rows decoded for the language share.
    """
    kind, tokens = dataset.kind, dataset.metadata["counts"]["tokens"]
    learnable = 0
    for name in MASK_COLUMNS.get(kind, ()):
        for block in dataset.column_batches(name):
            learnable += int(np.count_nonzero(block))
            dataset.release_pages()  # keep the resident set flat while scanning a large file
    if kind == "prompt":
        slots = tokens
    else:
        width = dataset.seq_len + 1
        slots = len(dataset) * width * len(ID_COLUMNS[kind])

    language_tokens, rows = None, np.empty(0, dtype=np.int64)
    if tokenizer is not None and len(dataset):
        rows = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), sample_rows)).astype(np.int64))
        language_tokens = dict.fromkeys(LANGUAGES, 0)
        for index in rows.tolist():
            for ids in _text_pieces(dataset, index, tokenizer.pad_id):
                language_tokens[detect_language(tokenizer.decode(ids.tolist()))] += len(ids)
    return PackReport(
        tokens=tokens,
        learnable_tokens=learnable,
        slots=slots,
        language_tokens=language_tokens,
        sampled_rows=len(rows),
    )


def _text_pieces(dataset: MappedPack, index: int, pad_id: int) -> list[np.ndarray]:
    """Return the token runs of one row that are classified separately: documents, a pair's chosen side, a prompt."""
    row = dataset.row(index)
    if dataset.kind == "prompt":
        return [row["prompt_ids"]]
    if dataset.kind == "preference":
        return [row["chosen_ids"][row["chosen_ids"] != pad_id]]
    ids, loss_mask, positions = row["input_ids"], row["loss_mask"], row["position_ids"]
    starts = np.flatnonzero(positions == 0).tolist() + [len(ids)]
    pieces = [ids[start:stop] for start, stop in zip(starts[:-1], starts[1:], strict=True)]
    masks = [loss_mask[start:stop] for start, stop in zip(starts[:-1], starts[1:], strict=True)]
    # The padding segment is all pad_id with loss mask 0; a document never is (it has bos or a target).
    return [piece for piece, mask in zip(pieces, masks, strict=True) if not (np.all(piece == pad_id) and not mask.any())]
