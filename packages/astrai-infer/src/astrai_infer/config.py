"""Generation settings as a validated dataclass.

Design choices:
- Every field is checked in ``__post_init__``, so a bad value from a CLI flag or a server request
  fails with a ``ValueError`` that names the field, the value and the accepted range, before any
  model work starts.
- ``temperature=0`` means greedy decoding; ``top_k=0`` and ``top_p=1.0`` turn those filters off.
  The defaults therefore sample from the model's full distribution.
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
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

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
