"""Next-token selection: penalties, greedy, temperature, top-k, top-p (nucleus) and min-p sampling.

Design choices:
- Functions take a batch of last-position logits ``(B, V)`` and return one id per row, so the
  same code serves one prompt and a batch.
- Filters set the logits of removed tokens to ``-inf`` instead of editing probabilities, so they
  compose. The order is penalties (on the raw logits, so they also steer greedy decoding), then
  temperature, top-k, top-p over the tokens top-k left, and min-p over what remains.
- Penalties follow vLLM's definitions. The repetition penalty divides a positive logit and
  multiplies a negative one, so it always makes a seen token less likely (dividing a negative
  logit would make it more likely); it applies to tokens seen in the prompt or the output. The
  presence and frequency penalties subtract ``presence`` once and ``frequency`` per occurrence,
  for tokens of the output only, as in OpenAI's API.
- Min-p keeps the tokens whose probability is at least ``min_p`` times the top token's.
- Top-p keeps a token when the probability of the tokens ranked above it is below ``top_p``. The
  most likely token has nothing above it, so it always survives, even for a tiny ``top_p``.
- Sampling runs in float32 even when the model runs in bfloat16, because bfloat16 probabilities are
  too coarse for the cumulative sum that top-p needs.
- Randomness comes only from the ``torch.Generator`` passed in, or from PyTorch's global generator
  when it is ``None``. The generator must live on the logits' device.
"""

from __future__ import annotations

import math

import torch


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest logits of each row and set the rest to ``-inf``.

    Tokens tied with the ``top_k``-th largest logit are kept too. ``top_k=0`` or ``top_k`` at least
    the vocabulary size returns ``logits`` unchanged.
    """
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    threshold = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < threshold, float("-inf"))


MIN_SAMPLING_TEMPERATURE = 1e-6


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities reach ``top_p`` in each row.

    The most likely token is always kept. ``top_p=1.0`` returns ``logits`` unchanged.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_above = torch.cumsum(probs, dim=-1) - probs  # (B, V) probability of the better-ranked tokens
    removed = mass_above >= top_p
    removed[..., 0] = False  # a top_p that rounds to 0 in float32 must still leave one token
    sorted_logits = sorted_logits.masked_fill(removed, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, sorted_ids, sorted_logits)


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Set to ``-inf`` the logits whose probability is below ``min_p`` times the row's highest.

    ``min_p=0`` returns ``logits`` unchanged; the most likely token always survives.
    """
    if min_p <= 0:
        return logits
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p), without a softmax.
    threshold = logits.max(dim=-1, keepdim=True).values + math.log(min_p)  # (B, 1)
    return logits.masked_fill(logits < threshold, float("-inf"))


def apply_penalties(
    logits: torch.Tensor,
    seen: torch.Tensor | None,
    counts: torch.Tensor | None,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
) -> torch.Tensor:
    """Penalise tokens that already occurred; returns new logits.

    Args:
        logits: (B, V) logits.
        seen: (B, V) bool, True for tokens in the prompt or the output; used by the repetition
            penalty.
        counts: (B, V) number of times each token occurs in the output; used by the presence and
            frequency penalties.
        repetition_penalty: ``> 1`` discourages repeats: positive logits of seen tokens are divided
            by it, negative ones multiplied. ``1.0`` turns it off.
        presence_penalty: Subtracted once from the logit of every token in the output.
        frequency_penalty: Subtracted from a token's logit once per occurrence in the output.
    """
    if repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if (presence_penalty or frequency_penalty) and counts is not None:
        logits = logits - frequency_penalty * counts - presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    min_p: float = 0.0,
) -> torch.Tensor:
    """Pick the next token of each row (apply penalties first with ``apply_penalties``).

    Args:
        logits: (B, V) logits for the next position.
        temperature: Divisor of the logits before filtering. ``0`` takes the most likely token
            (the first one on ties) and ignores the other settings.
        top_k: Number of most likely tokens to sample from; ``0`` for all.
        top_p: Probability mass of the most likely tokens to sample from; ``1.0`` for all.
        generator: Source of random numbers on ``logits.device``; ``None`` uses the global one.
        min_p: Drop tokens less likely than ``min_p`` times the most likely one; ``0`` for none.

    Returns:
        (B,) int64 token ids on ``logits.device``.
    """
    # Below this, dividing float32 logits by the temperature underflows or divides by zero; the
    # distribution is a point mass on the most likely token anyway, so decode greedily.
    if temperature < MIN_SAMPLING_TEMPERATURE:
        return torch.argmax(logits, dim=-1)
    # Subtracting the row maximum first keeps a tiny temperature from overflowing to inf - inf = NaN.
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    logits = apply_min_p(apply_top_p(apply_top_k(logits, top_k), top_p), min_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
