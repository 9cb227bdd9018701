"""``Generator``: text in, text out, for one model and its tokenizer.

Design choices:
- A prompt is text (encoded with a leading bos), a list of token ids (used as given), or a list of
  ``{"role", "content"}`` messages (chat template plus an open assistant turn). Prompts are checked
  before any model work, and every problem with one raises ``ValueError``, because prompts usually
  come from request data.
- Every call goes through the same KV-cached decoding loop (``_decoding.decode_tokens``): a single
  prompt is a batch of one, and a stream is that loop read one token at a time.
- Settings come as a ``GenerationConfig`` plus keyword overrides, so a caller can keep one config and
  change a field per call: ``generate(prompt, config, max_new_tokens=20)``.
- A seeded call draws from its own ``torch.Generator`` on the model's device. The same seed,
  prompt and settings give the same tokens in ``complete`` and ``stream`` on the same device and
  dtype. A seeded batch draws every row from one generator, so its sampled rows differ from
  the same prompts run one by one. Greedy batches match one-by-one decoding, unless padding
  changes float rounding enough to flip a near-tie between two logits.
- Nothing here is tied to the CPU: tensors follow the model's device, so
  ``Generator.from_checkpoint(path, device="cuda", dtype=torch.bfloat16)`` decodes on the GPU.
  NOTE: the tests run on CPU only, so the GPU path has not been run by them.
- One call at a time: every public method acquires a ``threading.Lock`` while it uses the model.
  Concurrent threads (for example Flask request threads) queue instead of running at once. This
  bounds memory to one KV cache.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from astrai_core import Tokenizer, Transformer, load_checkpoint

from ._decoding import TokenEvent, decode_tokens
from ._fast_forward import FastForward
from ._stop import StopStringText
from .config import GenerationConfig

Prompt = str | Sequence[int] | Sequence[dict]


@dataclass
class Completion:
    """The result of a finished generation.

    Attributes:
        text: The generated text, decoded from ``token_ids``.
        token_ids: The generated ids, without the stop token.
        prompt_tokens: Length of the encoded prompt, in tokens.
        finish_reason: ``"stop"`` when the model generated a stop id or the text reached a stop
            string, ``"length"`` when ``max_new_tokens`` was reached or the model's context was full.
        logprobs: Log-probability of each id in ``token_ids``, when ``logprobs`` was requested.
        top_logprobs: For each id in ``token_ids``, the ``top_logprobs`` most likely
            ``(token_id, logprob)`` pairs, when requested.

    With stop strings, ``text`` ends before the stop string while ``token_ids`` keeps every
    generated id, including those that spell the stop string.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    logprobs: list[float] | None = None
    top_logprobs: list[tuple[tuple[int, float], ...]] | None = None


@dataclass
class StreamChunk:
    """One step of a streamed generation.

    Attributes:
        text: New text since the previous chunk. It never ends inside a UTF-8 character and may be
            ``""`` while a character's bytes are still arriving.
        prompt_tokens: Length of the encoded prompt, in tokens.
        completion_tokens: Number of ids generated so far, not counting a stop id.
        finish_reason: ``None`` on every chunk except the last, which has ``"stop"`` or ``"length"``
            as in ``Completion``.
        logprobs: Log-probabilities of the ids generated in this step (zero or one), when
            requested.
        top_logprobs: The most likely alternatives for those ids, when requested.

    With stop strings, text that could be the start of a stop string is held back until a later
    token rules it out, so a stream never shows any part of a stop string.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    logprobs: list[float] | None = None
    top_logprobs: list[tuple[tuple[int, float], ...]] | None = None


class Generator:
    """Generates text from a ``Transformer`` and the ``Tokenizer`` it was trained with.

    A Generator serves one call at a time. Each public method holds an internal lock while it
    runs, so calls from other threads wait their turn. A stream holds the lock from its first
    chunk until it is exhausted or closed. Finish or close a stream before making another call from
    the same thread, or that call waits forever.

    Args:
        model: The model; it is switched to eval mode.
        tokenizer: The tokenizer whose ids the model was trained on.
        fast: Decode with ``FastForward``, a lean copy of the model's forward pass (same logits up
            to float rounding, fewer Python calls per token). ``False`` calls ``model`` itself.
            It reads the weights now, so build a new Generator after changing them.
        fuse: With ``fast``, concatenate each layer's q/k/v and gate/up weights into one matrix
            each (fewer, larger matrix products; costs those weights' memory again).
        pack: With ``fast``, also store the weight matrices in oneDNN's packed layout on CPU, for
            faster bf16 products and faster float32 prefill and batched decoding, and in float32
            a column-major copy of the output projection for decoding one sequence (costs the
            weights' memory again). ``None`` packs where it can; ``True`` raises ``ValueError``
            where it cannot (GPUs, float16).

    Raises:
        ValueError: The tokenizer has more ids than the model's vocabulary.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        fast: bool = True,
        fuse: bool = True,
        pack: bool | None = None,
    ):
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                f"{model.config.vocab_size}; load the tokenizer that was saved with this model"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()
        # Test doubles and other modules with Transformer's call signature run their own forward.
        self._forward = FastForward(model, fuse, pack) if fast and isinstance(model, Transformer) else None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Generator:
        """Load a checkpoint directory written by ``astrai_core.save_checkpoint``.

        Args:
            path: The checkpoint directory; it must contain ``tokenizer.model``.
            device: Where to run the model, for example ``"cpu"`` or ``"cuda"``.
            dtype: Cast the weights to this dtype (for example ``torch.bfloat16``), or ``None`` to
                keep the saved dtype.

        Raises:
            FileNotFoundError: ``path`` is not a checkpoint directory.
            ValueError: The checkpoint has no tokenizer or its files do not match.
        """
        checkpoint = load_checkpoint(path, device=device, dtype=dtype)
        if checkpoint.tokenizer is None:
            raise ValueError(
                f"checkpoint {checkpoint.path} has no tokenizer.model; save it with "
                "save_checkpoint(path, model, tokenizer) so generation can encode prompts"
            )
        return cls(checkpoint.model, checkpoint.tokenizer)

    # Whole completions

    def complete(
        self, prompt: Prompt, config: GenerationConfig | None = None, **overrides: Any
    ) -> Completion:
        """Generate a completion for one prompt.

        Args:
            prompt: Text, a list of token ids, or a list of ``{"role", "content"}`` chat messages.
            config: Generation settings; ``None`` for the defaults of ``GenerationConfig``.
            **overrides: Fields of ``GenerationConfig`` that replace those of ``config``.

        Returns:
            The generated text and ids, the prompt length and why generation stopped.

        Raises:
            ValueError: The prompt is malformed or leaves no room in the model's context, or a
                setting is out of range.
            TypeError: An override is not a field of ``GenerationConfig``.
        """
        config = _resolve_config(config, overrides)
        ids = self._encode_prompt(prompt, "prompt", config)
        with self._lock:
            return self._complete_batch([ids], config)[0]

    def generate(self, prompt: Prompt, config: GenerationConfig | None = None, **overrides: Any) -> str:
        """Return the text of ``complete(prompt, config, **overrides)``."""
        return self.complete(prompt, config, **overrides).text

    def complete_batch(
        self, prompts: Sequence[Prompt], config: GenerationConfig | None = None, **overrides: Any
    ) -> list[Completion]:
        """Generate completions for several prompts in one left-padded batch.

        Rows leave the batch as they finish. With greedy decoding (``temperature=0``) each result
        equals ``complete`` on that prompt alone. Takes the same arguments and raises the same
        errors as ``complete``; errors name the prompt's index.

        Returns:
            One ``Completion`` per prompt, in the order of ``prompts``.
        """
        config = _resolve_config(config, overrides)
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(
                f"prompts must be a list of prompts, got {type(prompts).__name__}; "
                "use complete() for a single prompt"
            )
        ids = [self._encode_prompt(prompt, f"prompts[{index}]", config) for index, prompt in enumerate(prompts)]
        if not ids:
            return []
        with self._lock:
            return self._complete_batch(ids, config)

    def generate_batch(
        self, prompts: Sequence[Prompt], config: GenerationConfig | None = None, **overrides: Any
    ) -> list[str]:
        """Return the texts of ``complete_batch(prompts, config, **overrides)``."""
        return [completion.text for completion in self.complete_batch(prompts, config, **overrides)]

    # Streaming

    def stream(
        self, prompt: Prompt, config: GenerationConfig | None = None, **overrides: Any
    ) -> Iterator[StreamChunk]:
        """Generate for one prompt, yielding a chunk per generated token.

        When a stop id ends generation, one more chunk without a new token closes the stream. The
        last chunk carries the ``finish_reason``. The chunks' texts joined together equal
        ``generate`` with the same seed and settings, and no chunk's text ends inside a UTF-8
        character. The prompt and settings are checked when this is called, so errors raise before
        the first chunk. The lock is held from the first chunk until the iterator is exhausted or
        closed.

        Takes the same arguments and raises the same errors as ``complete``.
        """
        config = _resolve_config(config, overrides)
        ids = self._encode_prompt(prompt, "prompt", config)
        return self._stream(ids, config)

    def stream_generate(
        self, prompt: Prompt, config: GenerationConfig | None = None, **overrides: Any
    ) -> Iterator[str]:
        """Yield the non-empty texts of ``stream(prompt, config, **overrides)``."""
        return (chunk.text for chunk in self.stream(prompt, config, **overrides) if chunk.text)

    # Internals

    def _complete_batch(self, prompts: list[list[int]], config: GenerationConfig) -> list[Completion]:
        completions = [Completion("", [], len(prompt), "") for prompt in prompts]
        if config.logprobs or config.top_logprobs:
            for completion in completions:
                completion.logprobs = [] if config.logprobs else None
                completion.top_logprobs = [] if config.top_logprobs else None
        texts = [StopStringText(self.tokenizer, config.stop) for _ in prompts] if config.stop else None

        def stop_check(row: int, token_id: int) -> bool:
            texts[row].push(token_id)
            return texts[row].stopped

        for event in self._decode(prompts, config, stop_check if texts else None):
            completion = completions[event.row]
            if event.token_id is not None:
                completion.token_ids.append(event.token_id)
                _append_logprobs(completion, event)
            if event.finish_reason is not None:
                completion.finish_reason = event.finish_reason
        for row, completion in enumerate(completions):
            if texts is None:
                completion.text = self.tokenizer.decode(completion.token_ids)
            else:
                texts[row].finish()
                completion.text = texts[row].text
        return completions

    def _stream(self, prompt: list[int], config: GenerationConfig) -> Iterator[StreamChunk]:
        with self._lock:
            text = StopStringText(self.tokenizer, config.stop)
            released: list[str] = []  # text released since the last chunk

            def stop_check(row: int, token_id: int) -> bool:
                released.append(text.push(token_id))
                return text.stopped

            completion_tokens = 0
            for event in self._decode([prompt], config, stop_check):
                chunk = StreamChunk("", len(prompt), completion_tokens, event.finish_reason)
                if event.token_id is not None:
                    completion_tokens += 1
                    chunk.completion_tokens = completion_tokens
                    _append_logprobs(chunk, event)
                if event.finish_reason is not None:
                    released.append(text.finish())
                chunk.text = "".join(released)
                released.clear()
                yield chunk

    def _decode(
        self, prompts: list[list[int]], config: GenerationConfig, stop_check: Callable[[int, int], bool] | None
    ) -> Iterator[TokenEvent]:
        """Run the decoding loop, with a generator seeded for this call when ``config.seed`` is set."""
        seeded = None if config.seed is None else torch.Generator(device=self.device).manual_seed(config.seed)
        stop_ids, vocab_size = self.tokenizer.stop_ids, self.tokenizer.vocab_size
        return decode_tokens(self.model, prompts, config, stop_ids, vocab_size, seeded, stop_check, self._forward)

    def _encode_prompt(self, prompt: Prompt, name: str, config: GenerationConfig) -> list[int]:
        return encode_prompt(self.tokenizer, self.model.config, prompt, name, config)


def encode_prompt(
    tokenizer: Tokenizer, model_config: Any, prompt: Prompt, name: str, config: GenerationConfig
) -> list[int]:
    """Turn a prompt into token ids and check that it fits the model; ``name`` labels errors.

    Shared by ``Generator`` and ``Scheduler``; raises ``ValueError`` for every problem with the prompt.
    """
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, add_bos=True)
    elif not isinstance(prompt, (list, tuple)):
        raise ValueError(
            f"{name} must be a string, a list of token ids or a list of chat messages, "
            f"got {type(prompt).__name__}"
        )
    elif not prompt:
        raise ValueError(f"{name} is an empty list; pass text, token ids or chat messages")
    elif all(isinstance(message, dict) for message in prompt):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
    else:
        ids = list(prompt)
        _check_token_ids(ids, name, model_config.vocab_size)

    max_len = model_config.max_len
    keep = max(1, max_len - config.max_new_tokens)  # leaves room for max_new_tokens when it can
    if config.truncate_prompt and len(ids) > keep:
        return ids[-keep:]
    if len(ids) >= max_len:
        raise ValueError(
            f"{name} is {len(ids)} tokens long, but the model's max_len is {max_len} and must "
            f"leave room for at least one new token; shorten it to at most {max_len - 1} tokens, "
            "or pass truncate_prompt=True to keep only its last tokens"
        )
    return ids


def _check_token_ids(ids: list, name: str, vocab_size: int) -> None:
    for token_id in ids:
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise ValueError(
                f"{name} must contain only token ids (int) or only chat messages (dict), "
                f"found {token_id!r}"
            )
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"{name} contains token id {token_id}, but the model's vocabulary has ids 0 to "
                f"{vocab_size - 1}"
            )


def _append_logprobs(result: Completion | StreamChunk, event: TokenEvent) -> None:
    """Add the event's log-probabilities to a completion or chunk that collects them."""
    if event.logprob is not None:
        if result.logprobs is None:
            result.logprobs = []
        result.logprobs.append(event.logprob)
    if event.top_logprobs is not None:
        if result.top_logprobs is None:
            result.top_logprobs = []
        result.top_logprobs.append(event.top_logprobs)


def _resolve_config(config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    """Return ``config`` (or the defaults) with ``overrides`` applied and validated."""
    if config is None:
        config = GenerationConfig()
    elif not isinstance(config, GenerationConfig):
        raise TypeError(f"config must be a GenerationConfig or None, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config
