"""Next-token selection: greedy, temperature, top-k and top-p (nucleus) sampling.

Design choices:
- Functions take a batch of last-position logits ``(B, V)`` and return one id per row, so the
  same code serves one prompt and a batch.
- Filters set the logits of removed tokens to ``-inf`` instead of editing probabilities, so they
  compose. The order is temperature, then top-k, then top-p over the tokens top-k left.
- Top-p keeps a token when the probability of the tokens ranked above it is below ``top_p``. The
  most likely token has nothing above it, so it always survives, even for a tiny ``top_p``.
- Sampling runs in float32 even when the model runs in bfloat16, because bfloat16 probabilities are
  too coarse for the cumulative sum that top-p needs.
- Randomness comes only from the ``torch.Generator`` passed in, or from PyTorch's global generator
  when it is ``None``. The generator must live on the logits' device.
"""

from __future__ import annotations

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


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities reach ``top_p`` in each row.

    The most likely token is always kept. ``top_p=1.0`` returns ``logits`` unchanged.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_above = torch.cumsum(probs, dim=-1) - probs  # (B, V) probability of the better-ranked tokens
    sorted_logits = sorted_logits.masked_fill(mass_above >= top_p, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, sorted_ids, sorted_logits)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token of each row.

    Args:
        logits: (B, V) logits for the next position.
        temperature: Divisor of the logits before filtering. ``0`` takes the most likely token
            (the first one on ties) and ignores the other settings.
        top_k: Number of most likely tokens to sample from; ``0`` for all.
        top_p: Probability mass of the most likely tokens to sample from; ``1.0`` for all.
        generator: Source of random numbers on ``logits.device``; ``None`` uses the global one.

    Returns:
        (B,) int64 token ids on ``logits.device``.
    """
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    # Subtracting the row maximum first keeps a tiny temperature from overflowing to inf - inf = NaN.
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    logits = apply_top_p(apply_top_k(logits, top_k), top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
