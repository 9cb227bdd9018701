"""Generation settings as a validated dataclass.

Design choices:
- Every field is checked in ``__post_init__``, so a bad value from a CLI flag or a server request
  fails with a ``ValueError`` that names the field, the value and the accepted range, before any
  model work starts.
- ``temperature=0`` means greedy decoding; ``top_k=0``, ``top_p=1.0``, ``min_p=0`` and the neutral
  penalties (1.0, 0, 0) turn those controls off. The defaults therefore sample from the model's
  full distribution.
- ``stop`` is stored as a tuple (a single string becomes a one-element tuple), so a config stays
  immutable.
- ``seed`` belongs to one call: the generator seeds a fresh ``torch.Generator`` with it, so two calls
  with the same seed, prompt and settings return the same text on the same device and dtype.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

# torch.Generator.manual_seed accepts seeds up to this value.
MAX_SEED = 2**64 - 1
# The most alternatives per position that logprobs returns (OpenAI's API allows 20 too).
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick the tokens of one generation call.

    Attributes:
        max_new_tokens: Maximum number of tokens to generate (at least 1). Generation also stops
            earlier at a stop token or when the model's context is full.
        temperature: Divides the logits before sampling; higher is more random. ``0`` selects the
            most likely token at every step (greedy decoding) and ignores ``top_k`` and ``top_p``.
        top_k: Sample only among the ``top_k`` most likely tokens; ``0`` turns the filter off.
        top_p: Sample only among the most likely tokens whose probabilities add up to ``top_p``
            (nucleus sampling). The most likely token is always kept, and ``1.0`` turns the
            filter off.
        seed: Seed for this call's random numbers, or ``None`` to draw from PyTorch's global
            generator.
        min_p: Sample only among tokens at least ``min_p`` times as likely as the most likely
            one; ``0`` turns the filter off.
        repetition_penalty: Makes tokens of the prompt and the output less likely (``> 1``) or
            more likely (``< 1``); positive logits are divided by it, negative ones multiplied.
            ``1.0`` turns it off.
        presence_penalty: Subtracted from the logit of every token already in the output, in
            [-2, 2]; positive values favour new tokens.
        frequency_penalty: Subtracted from a token's logit once per time it occurs in the output,
            in [-2, 2].
        stop: Strings that end generation. The text stops before the first one that appears,
            even when it spans several tokens; it is not part of the returned text.
        logprobs: Return the log-probability of every generated token under the model's
            distribution (before penalties, temperature and filters).
        top_logprobs: Also return this many most likely alternatives per position, 0 to 20.
        truncate_prompt: When a prompt leaves no room in the context, keep its last tokens
            (as many as leave room for ``max_new_tokens``) instead of raising ``ValueError``.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    truncate_prompt: bool = False

    def __post_init__(self) -> None:
        _check_integer("max_new_tokens", self.max_new_tokens, minimum=1, fix="use 1 or more")
        _check_integer("top_k", self.top_k, minimum=0, fix="use 0 to turn top-k filtering off")
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(
                f"GenerationConfig.temperature must be a finite number >= 0, got {self.temperature!r}; "
                "use 0 for greedy decoding or a value such as 0.7 for sampling"
            )
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(
                f"GenerationConfig.top_p must be in (0, 1], got {self.top_p!r}; "
                "use 1.0 to turn nucleus sampling off"
            )
        if self.seed is not None:
            _check_integer("seed", self.seed, minimum=0, fix="use None for an unseeded call")
            if self.seed > MAX_SEED:
                raise ValueError(f"GenerationConfig.seed must be at most 2**64 - 1, got {self.seed!r}")

        if not _is_number(self.min_p) or not 0 <= self.min_p < 1:
            raise ValueError(
                f"GenerationConfig.min_p must be in [0, 1), got {self.min_p!r}; use 0 to turn min-p off"
            )
        if not _is_number(self.repetition_penalty) or not 0 < self.repetition_penalty < math.inf:
            raise ValueError(
                f"GenerationConfig.repetition_penalty must be a finite number > 0, got "
                f"{self.repetition_penalty!r}; use 1.0 to turn it off or about 1.1 to discourage repeats"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2 <= value <= 2:
                raise ValueError(f"GenerationConfig.{name} must be in [-2, 2], got {value!r}; use 0 to turn it off")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(text, str) and text for text in stop):
            raise ValueError(
                f"GenerationConfig.stop must be a list of non-empty strings, got {self.stop!r}; "
                "use [] for no stop strings"
            )
        object.__setattr__(self, "stop", tuple(stop))
        for name in ("logprobs", "truncate_prompt"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GenerationConfig.{name} must be true or false, got {getattr(self, name)!r}")
        _check_integer("top_logprobs", self.top_logprobs, minimum=0, fix="use 0 for none")
        if self.top_logprobs > MAX_TOP_LOGPROBS:
            raise ValueError(
                f"GenerationConfig.top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {self.top_logprobs!r}"
            )

    @property
    def needs_penalties(self) -> bool:
        """Whether any repetition, presence or frequency penalty is on."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0 or self.frequency_penalty != 0

    def replace(self, **changes: Any) -> GenerationConfig:
        """Return a copy with some fields changed, validated like a new config.

        Raises:
            TypeError: A name in ``changes`` is not a field of ``GenerationConfig``.
            ValueError: A new value is out of range.
        """
        names = {field.name for field in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown generation setting(s) {unknown}; valid settings are {sorted(names)}")
        return dataclasses.replace(self, **changes)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_integer(name: str, value: object, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"GenerationConfig.{name} must be an integer >= {minimum}, got {value!r}; {fix}")
