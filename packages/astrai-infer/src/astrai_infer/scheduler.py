"""``Scheduler``: continuous batching, so many requests share one model at once.

Requests arrive from any thread through ``submit`` and leave as they finish; a background thread
runs the model. Each step it admits waiting requests (prefill), then decodes one token for every
running sequence in one batched forward pass.

Design choices:
- Each request is prefilled alone, into its own cache sized to its prompt, so a prefill needs no
  padding and computes exactly what ``Generator`` computes for that prompt.
- Running sequences share one left-padded batch KV cache. Row ``i`` keeps its cached positions in
  the last ``cached_i`` columns, and the attention mask hides the columns to their left. The batch
  is rebuilt (rows copied, right-aligned, into a new cache) whenever membership changes. The
  widest row then has no padding, so the cache never has more columns than the model's context,
  and a short request left alone after a long one leaves no longer pays for its padding.
  Rebuilding copies every row's cache; that is cheap next to the forward passes it batches,
  and much simpler than paged attention.
- Sampling is per row: every request keeps its own settings, penalty state and seeded
  ``torch.Generator`` (``_decoding._Sampler``), stop strings and UTF-8-safe text
  (``_stop.StopStringText``). A request's tokens therefore depend only on its prompt, settings and
  seed, never on what else is running; greedy and seeded output equal ``Generator.complete``'s
  up to float rounding (padding masks can flip a near-tie between two logits).
- A ``RequestHandle`` is an iterator of ``StreamChunk``s fed through a queue. ``cancel`` (or
  ``close``, so closing a stream cancels it) marks it, and the loop drops it before the next step.
- An exception inside a step fails every request in that step (their handles raise
  ``RuntimeError``); the loop logs it and keeps serving new requests.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from astrai_core import Tokenizer, Transformer, load_checkpoint

from ._decoding import _module_forward, _Sampler
from ._fast_forward import FastForward
from ._stop import StopStringText
from .config import GenerationConfig
from .generator import Completion, Prompt, StreamChunk, _resolve_config, encode_prompt

logger = logging.getLogger(__name__)

# finish_reason of a request that was cancelled before it finished.
CANCELLED = "cancelled"


class RequestHandle:
    """One submitted request: iterate it for ``StreamChunk``s, or call ``result`` for a ``Completion``.

    The last chunk has a ``finish_reason``: ``"stop"``, ``"length"``, or ``"cancelled"`` after
    ``cancel``. Iteration raises ``RuntimeError`` when the scheduler failed the request.

    Attributes:
        request_id: A number unique within the scheduler, for logs.
        prompt_tokens: Length of the encoded prompt, in tokens.
        token_ids: The ids received so far, without a stop id.
    """

    def __init__(self, request_id: int, prompt_tokens: int):
        self.request_id, self.prompt_tokens = request_id, prompt_tokens
        self.token_ids: list[int] = []
        self._events: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._done = False
        self._chunks: list[StreamChunk] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating for this request; the scheduler frees its row before its next step."""
        self._cancelled.set()

    def close(self) -> None:
        """Cancel, so that closing a stream (as a web server does on disconnect) stops generation."""
        if not self._done:
            self.cancel()

    def __iter__(self) -> RequestHandle:
        return self

    def __next__(self) -> StreamChunk:
        if self._done:
            raise StopIteration
        item = self._events.get()
        if isinstance(item, BaseException):
            self._done = True
            raise RuntimeError(f"request {self.request_id} failed: {item}") from item
        token_id, chunk = item
        if token_id is not None:
            self.token_ids.append(token_id)
        self._chunks.append(chunk)
        if chunk.finish_reason is not None:
            self._done = True
        return chunk

    def result(self) -> Completion:
        """Wait for the rest of the request and return all of it, including chunks already read."""
        for _ in self:
            pass
        completion = Completion("", list(self.token_ids), self.prompt_tokens, "")
        completion.text = "".join(chunk.text for chunk in self._chunks)
        for chunk in self._chunks:
            if chunk.logprobs is not None:
                completion.logprobs = (completion.logprobs or []) + chunk.logprobs
            if chunk.top_logprobs is not None:
                completion.top_logprobs = (completion.top_logprobs or []) + chunk.top_logprobs
            completion.finish_reason = chunk.finish_reason or completion.finish_reason
        return completion

    def _put(self, item: Any) -> None:
        self._events.put(item)


@dataclass
class SchedulerStats:
    """Counters since the scheduler started, and the current queue depth and batch size."""

    waiting: int = 0
    running: int = 0
    submitted: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0


@dataclass
class _Sequence:
    """A running request: its settings, sampling state and place in the batch cache."""

    handle: RequestHandle
    prompt_ids: list[int]
    config: GenerationConfig
    budget: int  # tokens it may generate: max_new_tokens, or what the context has left
    sampler: Any = None
    text: Any = None
    generated: int = 0
    cached: int = 0  # positions of this sequence in the KV cache
    last_token: int = 0  # sampled, not yet fed to the model
    finished: bool = False
    prefill_cache: Any = field(default=None, repr=False)


class Scheduler:
    """Serves generation requests from many threads with one model, batching them as they come and go.

    Args:
        model: The model; it is switched to eval mode.
        tokenizer: The tokenizer whose ids the model was trained on.
        max_batch_size: Maximum number of sequences decoded together; later requests wait in a queue.
        fast: Run ``FastForward`` (see ``Generator``) instead of the model's own forward.

    Raises:
        ValueError: ``max_batch_size`` is not a positive integer, or the tokenizer has more ids
            than the model's vocabulary.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_batch_size: int = 16, fast: bool = True):
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}; 16 suits a CPU")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                f"{model.config.vocab_size}; load the tokenizer that was saved with this model"
            )
        self.model, self.tokenizer, self.max_batch_size = model.eval(), tokenizer, max_batch_size
        self.device = next(model.parameters()).device
        fast = fast and isinstance(model, Transformer)
        self._forward = FastForward(model) if fast else partial(_module_forward, model)
        self._stop_ids = set(tokenizer.stop_ids)
        self._ids = itertools.count(1)
        self._condition = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._cache = None  # the batch KVCache of the running sequences
        self._batch_members: list[_Sequence] = []  # the sequences of self._cache's rows, in order
        self._mask: torch.Tensor | None = None  # (B, S) 1 on real cache positions, None without padding
        self._stats = SchedulerStats()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="astrai-scheduler", daemon=True)
        self._thread.start()
        logger.info("scheduler started | max batch %d | context %d tokens", max_batch_size, self.max_len)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        max_batch_size: int = 16,
    ) -> Scheduler:
        """Load a checkpoint directory written by ``astrai_core.save_checkpoint`` and start serving it."""
        checkpoint = load_checkpoint(path, device=device, dtype=dtype)
        if checkpoint.tokenizer is None:
            raise ValueError(f"checkpoint {checkpoint.path} has no tokenizer.model; save it with its tokenizer")
        return cls(checkpoint.model, checkpoint.tokenizer, max_batch_size=max_batch_size)

    @property
    def max_len(self) -> int:
        """The model's context length in tokens (prompt plus output)."""
        return self.model.config.max_len

    def encode(self, prompt: Prompt, config: GenerationConfig | None = None, name: str = "prompt") -> list[int]:
        """Return the ids ``submit`` would use for ``prompt``; raises ``ValueError`` as ``submit`` does."""
        return encode_prompt(self.tokenizer, self.model.config, prompt, name, config or GenerationConfig())

    def submit(self, prompt: Prompt, config: GenerationConfig | None = None, **overrides: Any) -> RequestHandle:
        """Queue a request and return its handle at once.

        Args:
            prompt: Text, a list of token ids, or a list of ``{"role", "content"}`` chat messages.
            config: Generation settings; ``None`` for the defaults.
            **overrides: Fields of ``GenerationConfig`` that replace those of ``config``.

        Raises:
            ValueError: The prompt is malformed or too long, or a setting is out of range.
            RuntimeError: The scheduler has been shut down.
        """
        config = _resolve_config(config, overrides)
        ids = self.encode(prompt, config)
        handle = RequestHandle(next(self._ids), len(ids))
        budget = min(config.max_new_tokens, self.max_len - len(ids))
        sequence = _Sequence(handle, ids, config, budget)
        with self._condition:
            if self._closed:
                raise RuntimeError("the scheduler has been shut down; create a new one to generate")
            self._waiting.append(sequence)
            self._stats.submitted += 1
            self._stats.prompt_tokens += len(ids)
            self._condition.notify()
        return handle

    def stats(self) -> SchedulerStats:
        """A snapshot of the counters, queue depth and batch size."""
        with self._condition:
            snapshot = SchedulerStats(**vars(self._stats))
            snapshot.waiting, snapshot.running = len(self._waiting), len(self._running)
        return snapshot

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the background thread; requests still queued or running fail with ``RuntimeError``."""
        with self._condition:
            if self._closed:
                return
            self._closed = True
            self._condition.notify()
        self._thread.join(timeout)
        logger.info("scheduler stopped after %d requests", self._stats.finished)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # The loop

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._closed and not self._waiting and not self._running:
                    self._condition.wait()
                if self._closed:
                    break
                free = self.max_batch_size - len(self._running)
                admitted = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
            try:
                self._step(admitted)
            except Exception as error:  # a bug or an out-of-memory must not kill the server's thread
                logger.exception("scheduler step failed; failing %d requests", len(self._running) + len(admitted))
                for sequence in {id(s): s for s in self._running + admitted}.values():
                    if not sequence.finished:
                        sequence.handle._put(error)
                with self._condition:
                    self._stats.failed += len(self._running)
                    self._running, self._cache, self._mask = [], None, None
        shutdown = RuntimeError("the scheduler was shut down before the request finished")
        for sequence in list(self._waiting) + self._running:
            sequence.handle._put(shutdown)

    @torch.inference_mode()
    def _step(self, admitted: list[_Sequence]) -> None:
        changed = self._drop_finished(lambda s: s.handle.cancelled, CANCELLED)
        joined = []
        for sequence in admitted:
            if sequence.handle.cancelled:
                self._finish(sequence, "", CANCELLED)
                continue
            logits = self._prefill(sequence)
            if self._emit(sequence, logits) is None:
                joined.append(sequence)
        if joined or changed:
            with self._condition:
                self._running = self._running + joined
            self._rebuild_batch()
        if not self._running:
            return

        logits = self._decode()  # (B, V)
        for row, sequence in enumerate(self._running):
            self._emit(sequence, logits[row : row + 1])
        if self._drop_finished(lambda s: s.finished, None):
            self._rebuild_batch()
        with self._condition:
            self._stats.steps += 1

    def _prefill(self, sequence: _Sequence) -> torch.Tensor:
        """Run the prompt through the model into its own cache; return the (1, V) next-token logits."""
        ids = sequence.prompt_ids
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, L)
        position_ids = torch.arange(len(ids), device=self.device)[None]  # (1, L)
        sequence.prefill_cache = self.model.make_kv_cache(1, len(ids))
        logits = self._forward(input_ids, position_ids, None, sequence.prefill_cache)
        sequence.cached = len(ids)
        seeded = None
        if sequence.config.seed is not None:
            seeded = torch.Generator(device=self.device).manual_seed(sequence.config.seed)
        sequence.sampler = _Sampler(
            sequence.config, input_ids, torch.ones_like(input_ids), self.tokenizer.vocab_size, seeded
        )
        sequence.text = StopStringText(self.tokenizer, sequence.config.stop)
        logger.debug("request %d admitted | %d prompt tokens", sequence.handle.request_id, len(ids))
        return logits[:, -1, : self.tokenizer.vocab_size]

    def _decode(self) -> torch.Tensor:
        """Feed every running sequence its last token in one forward pass; return (B, V) logits."""
        tokens = torch.tensor([[s.last_token] for s in self._running], device=self.device)  # (B, 1)
        positions = torch.tensor([[s.cached] for s in self._running], device=self.device)  # (B, 1)
        mask = self._mask
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(len(self._running), 1)], dim=1)  # (B, S + 1)
        logits = self._forward(tokens, positions, mask, self._cache)[:, -1, : self.tokenizer.vocab_size]
        self._mask = mask
        for sequence in self._running:
            sequence.cached += 1
        return logits

    def _emit(self, sequence: _Sequence, logits: torch.Tensor) -> str | None:
        """Sample the sequence's next token from (1, V) logits and send it; return its finish reason."""
        tokens, logprobs, top_logprobs = sequence.sampler.pick(logits)
        token_id = int(tokens[0])
        if token_id in self._stop_ids:
            return self._finish(sequence, sequence.text.finish(), "stop")
        sequence.generated += 1
        sequence.last_token = token_id
        text = sequence.text.push(token_id)
        reason = "stop" if sequence.text.stopped else "length" if sequence.generated >= sequence.budget else None
        if reason is not None:
            text += sequence.text.finish()
        chunk = StreamChunk(
            text, len(sequence.prompt_ids), sequence.generated, reason, logprobs, top_logprobs
        )
        sequence.handle._put((token_id, chunk))
        with self._condition:
            self._stats.completion_tokens += 1
        if reason is not None:
            self._count_finished(sequence, reason)
        return reason

    def _finish(self, sequence: _Sequence, text: str, reason: str) -> str:
        chunk = StreamChunk(text, len(sequence.prompt_ids), sequence.generated, reason)
        sequence.handle._put((None, chunk))
        self._count_finished(sequence, reason)
        return reason

    def _count_finished(self, sequence: _Sequence, reason: str) -> None:
        sequence.finished = True
        sequence.prefill_cache = None
        with self._condition:
            self._stats.finished += 1
            self._stats.cancelled += reason == CANCELLED
        logger.debug("request %d finished (%s) | %d tokens", sequence.handle.request_id, reason, sequence.generated)

    def _drop_finished(self, predicate, reason: str | None) -> bool:
        """Remove the running sequences for which ``predicate`` holds; ``reason`` ends them first."""
        leaving = [s for s in self._running if predicate(s)]
        if not leaving:
            return False
        for sequence in leaving:
            if reason is not None and not sequence.finished:
                self._finish(sequence, "", reason)
        with self._condition:
            self._running = [s for s in self._running if not predicate(s)]
        return True

    def _rebuild_batch(self) -> None:
        """Copy the running sequences' caches, right-aligned, into a new batch cache and mask."""
        if not self._running:
            self._cache = self._mask = None
            return
        width = max(s.cached for s in self._running)  # S: the widest row has no padding
        # Columns needed until the next rebuild: the widest row leaves within its budget.
        capacity = min(self.max_len, width + max(s.budget - s.generated for s in self._running) + 1)
        cache = self.model.make_kv_cache(len(self._running), capacity)
        mask = torch.zeros(len(self._running), width, dtype=torch.long, device=self.device)  # (B, S)
        old_width = self._cache.length if self._cache is not None else 0
        old_rows = {id(s): row for row, s in enumerate(self._batch_members)} if self._cache is not None else {}
        for row, sequence in enumerate(self._running):
            length = sequence.cached
            if sequence.prefill_cache is not None:  # just prefilled: its own cache of exactly `length`
                source, source_row, source_end = sequence.prefill_cache, 0, length
                sequence.prefill_cache = None
            else:
                source, source_row, source_end = self._cache, old_rows[id(sequence)], old_width
            for target, origin in ((cache.keys, source.keys), (cache.values, source.values)):
                # (layers, K, length, D) slices of one row
                target[:, row, :, width - length : width] = origin[:, source_row, :, source_end - length : source_end]
            mask[row, width - length :] = 1
        cache.length = width
        self._cache, self._batch_members = cache, list(self._running)
        self._mask = mask if bool((mask == 0).any()) else None
