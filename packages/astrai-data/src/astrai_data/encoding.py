"""Tokenizing records into token sequences with loss masks: the work of the pack worker processes.

Design choices:
- Text: ``[bos] + tokens + [eos]``, every token a training target.
- Chat: the ChatML template of astrai-core (``Tokenizer.encode_chat``). The loss mask is 1 on the
  content of every assistant turn and on its ``<|im_end|>``, and 0 on the rest: ``bos``, the turn
  headers, the newline after each turn, and other roles' content. Role markers that a user typed
  inside a message stay ordinary text, because the markers are SentencePiece control symbols that
  encoding text never produces.
- Preference: the prompt turns are encoded with loss mask 0 even when they include assistant turns,
  because they are context and not the response being scored. Each response's turns follow with the
  chat mask, so the chosen and the rejected sequence start with the same prompt tokens.
- Prompt: the prompt turns followed by the open assistant header (``<|im_start|>assistant\\n``), the
  point where generation starts. Nothing in it is a training target.
- Each sequence also records its prompt length: the tokens before its first learnable token. The
  truncation policy shortens that part first.
- A chunk's sequences travel back to the main process as flat numpy arrays with their lengths,
  which pickle as a few buffers instead of millions of Python ints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from astrai_core import Tokenizer

from .records import Messages, Record


@dataclass(frozen=True)
class Sequences:
    """Several token sequences with their loss masks, concatenated.

    Attributes:
        ids: int32 token ids of all sequences, one after another.
        loss_mask: uint8 loss mask aligned with ``ids`` (1 where the token is a training target).
        lengths: int64 token count of each sequence; sums to ``len(ids)``.
        prompt_lengths: int64 tokens before each sequence's first learnable token (0 for text, the
            whole length for prompts).
    """

    ids: np.ndarray
    loss_mask: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray

    @classmethod
    def from_lists(cls, ids: list[list[int]], masks: list[list[int]], prompt_lengths: list[int]) -> Sequences:
        """Concatenate per-sequence id and mask lists into one :class:`Sequences`."""
        return cls(
            ids=np.concatenate([np.asarray(sequence, dtype=np.int32) for sequence in ids]),
            loss_mask=np.concatenate([np.asarray(mask, dtype=np.uint8) for mask in masks]),
            lengths=np.array([len(sequence) for sequence in ids], dtype=np.int64),
            prompt_lengths=np.array(prompt_lengths, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def split(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """Yield ``(ids, loss_mask, prompt_length)`` of each sequence; the arrays are views."""
        start = 0
        for length, prompt_length in zip(self.lengths.tolist(), self.prompt_lengths.tolist(), strict=True):
            yield self.ids[start : start + length], self.loss_mask[start : start + length], prompt_length
            start += length


@dataclass(frozen=True)
class EncodedChunk:
    """The tokenized records of one chunk of the corpus, in corpus order.

    Attributes:
        sequences: Text documents, conversations, prompts, or the chosen side of preference pairs.
        rejected: The rejected side of preference pairs, aligned with ``sequences``; else ``None``.
        answers: The reference answer (or ``None``) of each prompt; ``None`` for other kinds.
    """

    sequences: Sequences
    rejected: Sequences | None = None
    answers: list[str | None] | None = None


def record_payload(record: Record) -> object:
    """Return the part of a record the tokenizer needs, small to send to a worker process."""
    if record.kind == "text":
        return record.text
    if record.kind == "chat":
        return record.messages
    if record.kind == "preference":
        return record.prompt, record.chosen, record.rejected
    return record.prompt, record.answer


def encode_payloads(tokenizer: Tokenizer, kind: str, payloads: list) -> EncodedChunk:
    """Tokenize the payloads (from :func:`record_payload`) of records of one kind.

    Args:
        tokenizer: The tokenizer.
        kind: ``"text"``, ``"chat"``, ``"preference"`` or ``"prompt"``.
        payloads: The records' payloads, in order.
    """
    if kind == "text":
        return EncodedChunk(_encode_texts(tokenizer, payloads))
    if kind == "chat":
        encoded = [tokenizer.encode_chat(messages) for messages in payloads]
        return EncodedChunk(_sequences_with_prompts(encoded))
    if kind == "preference":
        chosen, rejected = [], []
        for prompt, chosen_turns, rejected_turns in payloads:
            prompt_ids, _ = tokenizer.encode_chat(prompt)
            chosen.append(_prompt_and_response(tokenizer, prompt_ids, chosen_turns))
            rejected.append(_prompt_and_response(tokenizer, prompt_ids, rejected_turns))
        return EncodedChunk(_sequences_with_prompts(chosen), rejected=_sequences_with_prompts(rejected))
    if kind == "prompt":
        prompts = [tokenizer.apply_chat_template(prompt, add_generation_prompt=True) for prompt, _ in payloads]
        masks = [[0] * len(ids) for ids in prompts]
        sequences = Sequences.from_lists(prompts, masks, [len(ids) for ids in prompts])
        return EncodedChunk(sequences, answers=[answer for _, answer in payloads])
    raise ValueError(f"cannot encode records of kind {kind!r}; use 'text', 'chat', 'preference' or 'prompt'")


def _encode_texts(tokenizer: Tokenizer, texts: list[str]) -> Sequences:
    # One SentencePiece thread: the parallelism comes from the worker processes.
    encoded = tokenizer.encode_batch(texts, num_threads=1)
    bos = np.array([tokenizer.bos_id], dtype=np.int32)
    eos = np.array([tokenizer.eos_id], dtype=np.int32)
    pieces = []
    for document in encoded:
        pieces += [bos, np.asarray(document, dtype=np.int32), eos]
    ids = np.concatenate(pieces)
    lengths = np.array([len(document) + 2 for document in encoded], dtype=np.int64)
    return Sequences(
        ids=ids,
        loss_mask=np.ones(len(ids), dtype=np.uint8),
        lengths=lengths,
        prompt_lengths=np.zeros(len(lengths), dtype=np.int64),
    )


def _prompt_and_response(
    tokenizer: Tokenizer, prompt_ids: list[int], turns: Messages
) -> tuple[list[int], list[int]]:
    """Return ``(ids, loss_mask)`` of the prompt (mask 0) followed by the response turns (chat mask)."""
    response_ids, response_mask = tokenizer.encode_chat(turns)
    # encode_chat starts every conversation with bos; the response continues the prompt instead.
    return prompt_ids + response_ids[1:], [0] * len(prompt_ids) + response_mask[1:]


def _sequences_with_prompts(encoded: list[tuple[list[int], list[int]]]) -> Sequences:
    """Concatenate ``(ids, loss_mask)`` pairs, taking each prompt length as its first learnable index."""
    ids = [sequence for sequence, _ in encoded]
    masks = [mask for _, mask in encoded]
    # Every conversation and response has an assistant turn, whose <|im_end|> has loss mask 1.
    prompt_lengths = [mask.index(1) for mask in masks]
    return Sequences.from_lists(ids, masks, prompt_lengths)
