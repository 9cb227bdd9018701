"""The decoding loop: prefill the prompts into a KV cache, then sample one token per row per step.

Design choices:
- One loop serves a single prompt, a batch and a stream. It yields a ``TokenEvent`` per row per
  step, so a stream receives each token before the next forward pass starts.
- Prompts of different lengths are left-padded into one ``(B, S)`` batch. The attention mask keeps
  every query away from padded keys, and ``position_ids = cumsum(mask) - 1`` gives each row the
  positions it would have alone. Greedy decoding of a batch therefore matches decoding each prompt
  alone, up to float rounding.
  Padding uses id 0, because the mask hides it and any valid id will do.
- Only ids below ``vocab_size`` (the tokenizer's) are sampled: a model's embedding table may be
  larger than its tokenizer, and SentencePiece raises on ids beyond its own vocabulary.
- A row may generate ``min(max_new_tokens, max_len - prompt_len)`` tokens, so its prompt plus its
  output never exceed the model's context. The cache is sized for the longest row's need, not for
  ``max_len``, because it is preallocated and a short request should not reserve a full context.
- Sampling state that lasts across steps (the seen-token mask and output counts of the penalties)
  lives in ``_Sampler`` and is only allocated when a penalty is on; greedy decoding without
  penalties or log-probabilities is a bare ``argmax``.
- ``stop_check(row, token_id)`` lets the caller end a row after a token, for stop strings that only
  show in the decoded text.
- A row that finishes leaves the batch at once (``KVCache.select``), so it costs no more work. The
  cache then drops the leading columns that are padding in every remaining row. A short prompt
  batched with a long one therefore keeps its own full context once the long one has finished, and
  the mask is dropped altogether when no padding is left.
"""

from __future__ import annotations

import itertools
from functools import partial
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import torch

from astrai_core import KVCache, Transformer

from ._threads import SMALL_WORK, one_thread
from .config import GenerationConfig
from .sampling import apply_penalties, sample_next_token


@dataclass(frozen=True)
class TokenEvent:
    """The outcome of one decoding step for one prompt.

    Attributes:
        row: Index of the prompt in the list given to ``decode_tokens``.
        token_id: The generated id, or ``None`` when the step produced a stop id.
        finish_reason: ``"stop"`` (a stop id, or ``stop_check`` said so), ``"length"`` (no tokens or
            context left), or ``None`` while the prompt keeps generating.
        logprob: Log-probability of ``token_id``, when ``config.logprobs`` is on.
        top_logprobs: ``(token_id, logprob)`` pairs of the most likely tokens, most likely first,
            when ``config.top_logprobs`` is positive.
    """

    row: int
    token_id: int | None
    finish_reason: str | None
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None


class _Sampler:
    """Picks tokens for a batch and keeps the per-row state that penalties need.

    Args:
        config: The generation settings.
        input_ids: (B, S) left-padded prompts; marks the prompt tokens as seen.
        attention_mask: (B, S) 1 on real tokens.
        vocab_size: Number of ids that may be sampled (the tokenizer's).
        generator: Source of random numbers, or ``None`` for PyTorch's global one.
    """

    def __init__(self, config, input_ids, attention_mask, vocab_size, generator):
        self.config, self.vocab_size, self.generator = config, vocab_size, generator
        self.seen = self.counts = None
        if config.needs_penalties:
            B = input_ids.shape[0]
            width = max(vocab_size, int(input_ids.max()) + 1)
            prompt_counts = torch.zeros(B, width, device=input_ids.device)
            prompt_counts.scatter_add_(1, input_ids, attention_mask.float())  # padding adds 0
            self.seen = (prompt_counts[:, :vocab_size] > 0)  # (B, V)
            self.counts = torch.zeros(B, vocab_size, device=input_ids.device)  # (B, V)

    def pick(self, logits: torch.Tensor) -> tuple[torch.Tensor, list | None, list | None]:
        """Return (B,) tokens for (B, V) logits, and their log-probabilities when requested."""
        # A decoding step's sampling is too small to pay for waking a second thread (see _threads).
        with one_thread(logits.device.type == "cpu" and logits.numel() <= SMALL_WORK):
            return self._pick(logits)

    def _pick(self, logits: torch.Tensor) -> tuple[torch.Tensor, list | None, list | None]:
        config = self.config
        raw = logits
        if self.seen is not None:
            logits = apply_penalties(
                logits.float(),
                self.seen,
                self.counts,
                config.repetition_penalty,
                config.presence_penalty,
                config.frequency_penalty,
            )
        tokens = sample_next_token(
            logits, config.temperature, config.top_k, config.top_p, self.generator, config.min_p
        )  # (B,)
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)
            self.counts.scatter_add_(1, tokens[:, None], torch.ones_like(self.counts[:, :1]))
        if not config.logprobs and not config.top_logprobs:
            return tokens, None, None
        logprobs = torch.log_softmax(raw.float(), dim=-1)  # (B, V)
        chosen = logprobs.gather(1, tokens[:, None]).squeeze(1).tolist()
        top = None
        if config.top_logprobs:
            values, ids = torch.topk(logprobs, config.top_logprobs, dim=-1)  # (B, top_logprobs)
            top = [tuple(zip(row_ids, row_values)) for row_ids, row_values in zip(ids.tolist(), values.tolist())]
        return tokens, chosen, top

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows in ``rows``."""
        if self.seen is not None:
            self.seen, self.counts = self.seen[rows], self.counts[rows]


@torch.inference_mode()
def decode_tokens(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    stop_ids: Collection[int],
    vocab_size: int,
    generator: torch.Generator | None = None,
    stop_check: Callable[[int, int], bool] | None = None,
    forward: Callable[..., torch.Tensor] | None = None,
) -> Iterator[TokenEvent]:
    """Generate tokens for every prompt until each one stops, yielding them step by step.

    Each prompt must be non-empty and shorter than ``model.config.max_len``; the caller checks this.
    Every prompt gets exactly one event with a ``finish_reason``, and it is the prompt's last event.
    ``stop_check(row, token_id)``, called for every generated token that is not a stop id, ends
    that row with ``"stop"`` (keeping the token) when it returns True. ``forward(input_ids,
    position_ids, attention_mask, kv_cache)`` returns the (B, 1, V) logits of the last position;
    by default it is ``model``'s own forward.
    """
    if forward is None:
        forward = partial(_module_forward, model)
    device = next(model.parameters()).device
    max_len = model.config.max_len
    budgets = [min(config.max_new_tokens, max_len - len(ids)) for ids in prompts]
    rows = list(range(len(prompts)))  # original prompt index of each batch row

    input_ids, attention_mask = _left_pad(prompts, device)  # (B, S)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, S)
    sampler = _Sampler(config, input_ids, attention_mask, vocab_size, generator)
    next_positions = position_ids[:, -1] + 1  # (B,) the position of each row's next token
    if not bool((attention_mask == 0).any()):
        attention_mask = None  # no padding: let the model take its unmasked path
    # The last token is never fed back, so the cache needs S + max(budgets) - 1 positions at most.
    kv_cache = model.make_kv_cache(len(prompts), min(max_len, input_ids.shape[1] + max(budgets) - 1))
    logits = forward(input_ids, position_ids, attention_mask, kv_cache)[:, -1, :vocab_size]  # (B, V)

    for step in itertools.count(1):
        tokens, logprobs, top_logprobs = sampler.pick(logits)  # (B,)
        continuing = []  # batch indices of the rows that go on to the next step
        for index, (row, token_id) in enumerate(zip(rows, tokens.tolist())):
            if token_id in stop_ids:
                yield TokenEvent(row, None, "stop")
                continue
            logprob = logprobs[index] if logprobs is not None else None
            top = top_logprobs[index] if top_logprobs is not None else None
            if stop_check is not None and stop_check(row, token_id):
                yield TokenEvent(row, token_id, "stop", logprob, top)
            elif step == budgets[row]:
                yield TokenEvent(row, token_id, "length", logprob, top)
            else:
                yield TokenEvent(row, token_id, None, logprob, top)
                continuing.append(index)
        if not continuing:
            return

        if len(continuing) < len(rows):
            index_tensor = torch.tensor(continuing, device=device)
            kv_cache.select(index_tensor)
            sampler.select(index_tensor)
            tokens, next_positions = tokens[index_tensor], next_positions[index_tensor]
            rows = [rows[index] for index in continuing]
            if attention_mask is not None:
                attention_mask = _drop_shared_padding(kv_cache, attention_mask[index_tensor])

        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        logits = forward(tokens[:, None], next_positions[:, None], attention_mask, kv_cache)
        logits = logits[:, -1, :vocab_size]  # (B, V)
        next_positions = next_positions + 1


def _module_forward(model, input_ids, position_ids, attention_mask, kv_cache) -> torch.Tensor:
    return model(input_ids, position_ids, attention_mask, kv_cache)["logits"][:, -1:]  # (B, 1, V)


def _left_pad(prompts: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(input_ids, attention_mask)``, both (B, S), with each prompt right-aligned."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _drop_shared_padding(kv_cache: KVCache, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Remove the leading cache positions that are padding in every row.

    Returns the mask without those columns, or ``None`` when no row has padding left.
    """
    # Padding only ever sits at the left, so a row's zero count is its padding width.
    shared = int((attention_mask == 0).sum(-1).min())
    if shared > 0:
        kv_cache.drop_left(shared)
        attention_mask = attention_mask[:, shared:]
    return attention_mask if bool((attention_mask == 0).any()) else None
