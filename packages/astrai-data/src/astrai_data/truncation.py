"""The policy for conversations, preference pairs and prompts that do not fit their window.

Design choices:
- A sequence has a prompt part, every token before its first learnable token (``bos``, system and
  user turns, the header of the first assistant turn), followed by the response part.
- ``"truncate"`` (the default) shortens the prompt part first. It removes tokens right after ``bos``,
  so the text nearest the response survives, until the sequence fits. The prompt part keeps at
  least half a window (or all of it when it is shorter), so a long response cannot erase the
  question it answers. If the sequence is still too long, the response part is cut at its end.
  Prompt files have no response part, so a long prompt keeps ``bos`` and its last tokens.
- ``"drop"`` leaves a record that does not fit out of the file.
- Both policies count what they remove. A kept record always has a learnable token; one that would
  not is dropped and counted as dropped, never stored with an empty mask.
- Text documents are never truncated: they continue in the next window instead.
"""

from __future__ import annotations

import numpy as np

TOO_LONG_POLICIES: tuple[str, ...] = ("truncate", "drop")


def check_policy(too_long: str) -> str:
    """Return ``too_long`` if it names a policy; raise ``ValueError`` naming the choices otherwise."""
    if too_long not in TOO_LONG_POLICIES:
        raise ValueError(f"too_long={too_long!r} is not a policy; use one of {list(TOO_LONG_POLICIES)}")
    return too_long


def prompt_cut(length: int, prompt_length: int, window: int) -> int:
    """Return how many prompt tokens after ``bos`` the ``"truncate"`` policy removes.

    Args:
        length: Tokens in the sequence (for a preference pair, the longer of the two).
        prompt_length: Tokens before the first learnable token, ``bos`` included.
        window: Tokens the sequence must fit into.
    """
    excess = length - window
    if excess <= 0:
        return 0
    floor = min(prompt_length, max(1, window // 2))
    return max(0, min(excess, prompt_length - floor))


def cut_sequence(ids: np.ndarray, loss_mask: np.ndarray, cut: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove ``cut`` tokens after the first one, then keep at most ``window`` tokens from the start."""
    if cut:
        ids = np.concatenate([ids[:1], ids[1 + cut :]])
        loss_mask = np.concatenate([loss_mask[:1], loss_mask[1 + cut :]])
    return ids[:window], loss_mask[:window]
