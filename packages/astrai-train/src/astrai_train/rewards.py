"""Reward functions for GRPO, kept in a registry so a config can name them.

A reward function takes the generated text and keyword arguments describing the rollout, and
returns a float (the built-ins return 0.0 or 1.0):

    @register_reward("short")
    def short(completion: str, *, prompt: str, answer: str | None, finish_reason: str) -> float:
        return 1.0 if len(completion) < 200 else 0.0

Built-ins:
- ``answer_match``: the completion states the reference ``answer``: the same text after trimming,
  or, when the answer is a number, the last number in the completion equals it.
- ``format``: the completion is non-empty and ended with an end-of-turn token (not cut off).
- ``language``: the completion is written in the prompt's language (Chinese or English, as
  ``astrai_core.detect_language`` decides).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from astrai_core import detect_language

RewardFunction = Callable[..., float]

REWARD_FUNCTIONS: dict[str, RewardFunction] = {}

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def register_reward(name: str) -> Callable[[RewardFunction], RewardFunction]:
    """Register ``fn`` under ``name`` so ``strategy_options.rewards`` can use it."""

    def decorator(fn: RewardFunction) -> RewardFunction:
        if name in REWARD_FUNCTIONS and REWARD_FUNCTIONS[name] is not fn:
            raise ValueError(f"a reward function named {name!r} is already registered")
        REWARD_FUNCTIONS[name] = fn
        return fn

    return decorator


def get_reward(name: str) -> RewardFunction:
    if name not in REWARD_FUNCTIONS:
        raise ValueError(
            f"unknown reward function {name!r}; available: {sorted(REWARD_FUNCTIONS)}. "
            "Register your own with @register_reward(name) in a module imported before training"
        )
    return REWARD_FUNCTIONS[name]


def _last_number(text: str) -> float | None:
    matches = _NUMBER.findall(text)
    return float(matches[-1].replace(",", "")) if matches else None


@register_reward("answer_match")
def answer_match(completion: str, *, answer: str | None = None, **_: object) -> float:
    if answer is None:
        return 0.0
    if completion.strip() == answer.strip():
        return 1.0
    expected = _last_number(answer)
    if expected is None or _NUMBER.fullmatch(answer.strip()) is None:
        return 0.0
    got = _last_number(completion)
    return 1.0 if got is not None and math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9) else 0.0


@register_reward("format")
def well_formed(completion: str, *, finish_reason: str = "stop", **_: object) -> float:
    return 1.0 if completion.strip() and finish_reason == "stop" else 0.0


@register_reward("language")
def same_language(completion: str, *, prompt: str = "", **_: object) -> float:
    if not completion.strip():
        return 0.0
    return 1.0 if detect_language(completion) == detect_language(prompt) else 0.0
