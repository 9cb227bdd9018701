"""Row packers and the too-long policy on hand-made token sequences, independent of any tokenizer."""

from __future__ import annotations

import random

import numpy as np
import pytest
from astrai_data.encoding import EncodedChunk, Sequences
from astrai_data.rows import ChatWindows, PreferenceRows, PromptRows, TextWindows, positions_from_starts
from astrai_data.truncation import cut_sequence, prompt_cut

PAD = 3
BOS = 1


def sequences(*items: list[int], masks: list[list[int]] | None = None) -> Sequences:
    masks = masks or [[1] * len(item) for item in items]
    prompt_lengths = [mask.index(1) if 1 in mask else len(mask) for mask in masks]
    return Sequences.from_lists(list(items), masks, prompt_lengths)


def collect(packer, chunks: list[EncodedChunk]) -> dict[str, np.ndarray | list]:
    """Return every column of the rows the packer emits for ``chunks`` and at its finish."""
    rows = [packer.add(chunk) for chunk in chunks] + [packer.finish()]
    columns = {}
    for name in rows[0]:
        parts = [part[name] for part in rows]
        is_block = isinstance(parts[0], np.ndarray)
        columns[name] = np.concatenate(parts) if is_block else [value for part in parts for value in part]
    return columns


def assert_tokens_accounted(packer) -> None:
    counts = packer.counts
    assert counts.tokens_in == counts.tokens + counts.truncated_tokens + counts.dropped_tokens


def test_positions_restart_at_starts_and_rows() -> None:
    starts = np.array([[False, False, True, False, False], [False, True, False, False, True]])

    assert positions_from_starts(starts).tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 2, 0]]


def test_text_windows_keep_every_token_once() -> None:
    documents = [list(range(100, 107)), list(range(200, 203)), list(range(300, 311))]
    packer = TextWindows(seq_len=4, pad_id=PAD)

    rows = collect(packer, [EncodedChunk(sequences(*documents[:2])), EncodedChunk(sequences(documents[2]))])

    stream = [token for document in documents for token in document]  # 21 tokens, windows of 5
    assert rows["input_ids"].shape == (5, 5)
    assert rows["input_ids"].reshape(-1)[:21].tolist() == stream
    assert rows["input_ids"][-1].tolist() == [310, PAD, PAD, PAD, PAD]
    assert rows["loss_mask"][-1].tolist() == [1, 0, 0, 0, 0]
    assert rows["loss_mask"][:-1].all()
    assert (packer.counts.documents, packer.counts.tokens, packer.counts.windows) == (3, 21, 5)
    assert_tokens_accounted(packer)


def test_text_positions_restart_per_document_and_window() -> None:
    packer = TextWindows(seq_len=4, pad_id=PAD)

    rows = collect(packer, [EncodedChunk(sequences([10, 11, 12], [20, 21, 22, 23, 24]))])

    # Window 1: document 1 then the start of document 2. Window 2: document 2 continues from 0,
    # then the padding starts a segment of its own.
    assert rows["input_ids"].tolist() == [[10, 11, 12, 20, 21], [22, 23, 24, PAD, PAD]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 1]]


def test_text_windows_without_padding_on_exact_fit() -> None:
    packer = TextWindows(seq_len=4, pad_id=PAD)

    rows = collect(packer, [EncodedChunk(sequences(list(range(10))))])

    assert rows["input_ids"].tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert rows["loss_mask"].all()
    assert rows["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]


def test_chat_windows_pack_whole_conversations() -> None:
    first, second, third = [BOS, 10, 11], [BOS, 20, 21, 22], [BOS, 30]
    masks = [[0, 1, 1], [0, 0, 1, 1], [0, 1]]
    packer = ChatWindows(seq_len=5, pad_id=PAD)

    rows = collect(packer, [EncodedChunk(sequences(first, second, third, masks=masks))])

    # first (3) + second (4) exceeds 6, so second starts a new window; third (2) fits after it.
    assert rows["input_ids"].tolist() == [[BOS, 10, 11, PAD, PAD, PAD], [BOS, 20, 21, 22, BOS, 30]]
    assert rows["loss_mask"].tolist() == [[0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 1]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 0, 1]]
    assert (packer.counts.documents, packer.counts.tokens, packer.counts.windows) == (3, 9, 2)
    assert (packer.counts.truncated, packer.counts.dropped) == (0, 0)


def test_chat_truncation_shortens_prompt_first() -> None:
    long_prompt = [BOS, 40, 41, 42, 43, 44, 50, 51, 52]
    mask = [0, 0, 0, 0, 0, 0, 1, 1, 1]
    packer = ChatWindows(seq_len=5, pad_id=PAD)

    rows = collect(packer, [EncodedChunk(sequences(long_prompt, masks=[mask]))])

    # Three prompt tokens after bos go; half a window (3 tokens) of prompt stays, the reply is whole.
    assert rows["input_ids"].tolist() == [[BOS, 43, 44, 50, 51, 52]]
    assert rows["loss_mask"].tolist() == [[0, 0, 0, 1, 1, 1]]
    assert (packer.counts.truncated, packer.counts.truncated_tokens, packer.counts.dropped) == (1, 3, 0)
    assert_tokens_accounted(packer)


def test_chat_truncation_cuts_long_reply_at_end() -> None:
    long_reply = [BOS, 40, 41, *range(50, 58)]
    mask = [0, 0, 0, *[1] * 8]
    packer = ChatWindows(seq_len=5, pad_id=PAD)

    rows = collect(packer, [EncodedChunk(sequences(long_reply, masks=[mask]))])

    assert rows["input_ids"].tolist() == [[BOS, 40, 41, 50, 51, 52]]
    assert rows["loss_mask"].tolist() == [[0, 0, 0, 1, 1, 1]]
    assert packer.counts.truncated_tokens == 5


def test_chat_drop_policy_counts_dropped() -> None:
    too_long = [BOS, *range(50, 60)]
    packer = ChatWindows(seq_len=5, pad_id=PAD, too_long="drop")

    rows = collect(packer, [EncodedChunk(sequences(too_long, [BOS, 9], masks=[[0] + [1] * 10, [0, 1]]))])

    assert rows["input_ids"].tolist() == [[BOS, 9, PAD, PAD, PAD, PAD]]
    assert (packer.counts.dropped, packer.counts.dropped_tokens, packer.counts.documents) == (1, 11, 1)
    assert packer.counts.truncated == 0
    assert_tokens_accounted(packer)


@pytest.mark.parametrize("seed", range(20))
def test_truncation_keeps_a_learnable_token(seed: int) -> None:
    rng = random.Random(seed)
    window = rng.randint(2, 12)
    prompt_length, reply_length = rng.randint(1, 20), rng.randint(1, 20)
    ids = np.arange(prompt_length + reply_length, dtype=np.int32)
    mask = np.array([0] * prompt_length + [1] * reply_length, dtype=np.uint8)

    cut = prompt_cut(len(ids), prompt_length, window)
    kept_ids, kept_mask = cut_sequence(ids, mask, cut, window)

    assert len(kept_ids) == min(len(ids), window)
    assert kept_ids[0] == 0  # bos survives
    assert kept_mask.any()
    assert (kept_mask == 0).sum() >= min(prompt_length, window // 2)  # the prompt keeps half a window


def test_preference_rows_share_one_prompt_cut() -> None:
    prompt = [BOS, 40, 41, 42, 43, 44]
    chosen, rejected = [*prompt, 60, 61], [*prompt, 70, 71, 72, 73]
    masks = [[0] * 6 + [1] * 2, [0] * 6 + [1] * 4]
    chunk = EncodedChunk(sequences(chosen, masks=masks[:1]), rejected=sequences(rejected, masks=masks[1:]))
    packer = PreferenceRows(seq_len=7, pad_id=PAD)

    rows = collect(packer, [chunk])

    # The longer side needs two prompt tokens removed; both sides lose the same two.
    assert rows["chosen_ids"].tolist() == [[BOS, 42, 43, 44, 60, 61, PAD, PAD]]
    assert rows["rejected_ids"].tolist() == [[BOS, 42, 43, 44, 70, 71, 72, 73]]
    assert rows["chosen_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 0, 0]]
    assert rows["rejected_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    assert (packer.counts.truncated, packer.counts.truncated_tokens, packer.counts.windows) == (1, 4, 1)
    assert_tokens_accounted(packer)


def test_preference_rows_drop_policy() -> None:
    short, long = [BOS, 5, 6], [BOS, 5, *range(60, 70)]
    chunk = EncodedChunk(
        sequences(short, short, masks=[[0, 0, 1], [0, 0, 1]]),
        rejected=sequences(short, long, masks=[[0, 0, 1], [0, 0] + [1] * 10]),
    )
    packer = PreferenceRows(seq_len=5, pad_id=PAD, too_long="drop")

    rows = collect(packer, [chunk])

    assert len(rows["chosen_ids"]) == 1
    assert (packer.counts.dropped, packer.counts.dropped_tokens, packer.counts.documents) == (1, 15, 1)
    assert_tokens_accounted(packer)


def test_prompt_rows_keep_bos_and_prompt_end() -> None:
    prompts = [[BOS, 5, 6], [BOS, *range(10, 20)]]
    chunk = EncodedChunk(sequences(*prompts, masks=[[0] * 3, [0] * 11]), answers=["42", None])
    packer = PromptRows(seq_len=4, pad_id=PAD)

    rows = collect(packer, [chunk])

    assert [ids.tolist() for ids in rows["prompt_ids"]] == [[BOS, 5, 6], [BOS, 17, 18, 19]]
    assert rows["answer"] == ["42", None]
    assert (packer.counts.truncated, packer.counts.truncated_tokens) == (1, 7)
    assert_tokens_accounted(packer)


def test_prompt_rows_drop_policy() -> None:
    chunk = EncodedChunk(sequences([BOS, *range(10, 20)], masks=[[0] * 11]), answers=[None])
    packer = PromptRows(seq_len=4, pad_id=PAD, too_long="drop")

    rows = collect(packer, [chunk])

    assert rows["prompt_ids"] == []
    assert (packer.counts.dropped, packer.counts.dropped_tokens) == (1, 11)
