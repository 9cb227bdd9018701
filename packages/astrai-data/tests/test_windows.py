"""Window cutting on hand-made token streams, independent of any tokenizer."""

from __future__ import annotations

import numpy as np
from astrai_data.windows import ChatWindows, EncodedChunk, TextWindows

PAD = 3


def chunk(*documents: list[int], masks: list[list[int]] | None = None) -> EncodedChunk:
    masks = masks or [[1] * len(document) for document in documents]
    return EncodedChunk(
        ids=np.array([token for document in documents for token in document], dtype=np.int32),
        loss_mask=np.array([bit for mask in masks for bit in mask], dtype=np.uint8),
        lengths=np.array([len(document) for document in documents], dtype=np.int64),
    )


def collect(packer: TextWindows | ChatWindows, chunks: list[EncodedChunk]) -> tuple[np.ndarray, np.ndarray]:
    rows = [packer.add(item) for item in chunks] + [packer.finish()]
    return np.concatenate([ids for ids, _ in rows]), np.concatenate([mask for _, mask in rows])


def test_text_windows_keep_every_token_once() -> None:
    documents = [list(range(100, 107)), list(range(200, 203)), list(range(300, 311))]
    packer = TextWindows(seq_len=4, pad_id=PAD)

    ids, mask = collect(packer, [chunk(*documents[:2]), chunk(documents[2])])

    stream = [token for document in documents for token in document]  # 21 tokens, windows of 5
    assert ids.shape == (5, 5)
    assert ids.reshape(-1)[:21].tolist() == stream
    assert ids[-1].tolist() == [310, PAD, PAD, PAD, PAD]
    assert mask[-1].tolist() == [1, 0, 0, 0, 0]
    assert mask[:-1].all()
    assert (packer.documents, packer.tokens, packer.windows) == (3, 21, 5)


def test_text_windows_without_padding_on_exact_fit() -> None:
    packer = TextWindows(seq_len=4, pad_id=PAD)

    ids, mask = collect(packer, [chunk(list(range(10)))])

    assert ids.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert mask.all()


def test_chat_windows_pack_whole_conversations() -> None:
    first, second, third = [1, 10, 11], [1, 20, 21, 22], [1, 30]
    masks = [[0, 1, 1], [0, 0, 1, 1], [0, 1]]
    packer = ChatWindows(seq_len=5, pad_id=PAD)

    ids, mask = collect(packer, [chunk(first, second, third, masks=masks)])

    # first (3) + second (4) exceeds 6, so second starts a new window; third (2) fits after it.
    assert ids.tolist() == [[1, 10, 11, PAD, PAD, PAD], [1, 20, 21, 22, 1, 30]]
    assert mask.tolist() == [[0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 1]]
    assert (packer.documents, packer.tokens, packer.windows) == (3, 9, 2)
    assert (packer.truncated, packer.dropped) == (0, 0)


def test_chat_windows_truncate_long_conversation() -> None:
    long = [1, *range(40, 50)]
    long_mask = [0, 0, 0, *[1] * 8]
    packer = ChatWindows(seq_len=5, pad_id=PAD)

    ids, mask = collect(packer, [chunk([1, 7], long, [1, 8], masks=[[0, 1], long_mask, [0, 1]])])

    assert ids.tolist() == [[1, 7, PAD, PAD, PAD, PAD], long[:6], [1, 8, PAD, PAD, PAD, PAD]]
    assert mask[1].tolist() == long_mask[:6]
    assert (packer.truncated, packer.dropped, packer.documents) == (1, 0, 3)


def test_chat_windows_drop_when_truncation_removes_all_targets() -> None:
    unlearnable = [1, *range(50, 60)]
    unlearnable_mask = [0] * 8 + [1] * 3  # the assistant reply starts after the first window
    packer = ChatWindows(seq_len=5, pad_id=PAD)

    ids, _ = collect(packer, [chunk(unlearnable, [1, 9], masks=[unlearnable_mask, [0, 1]])])

    assert ids.tolist() == [[1, 9, PAD, PAD, PAD, PAD]]
    assert (packer.dropped, packer.truncated, packer.documents, packer.tokens) == (1, 0, 1, 2)
