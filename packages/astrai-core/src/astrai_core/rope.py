"""Rotary position embedding tables, with the context-extension scalings Llama and Qwen models use.

Design choices:
- Tables are computed once per model, in float64 and then rounded to float32, for every position
  up to ``max_len``. The model indexes them with ``position_ids``, so nothing here runs per token.
- The layout is rotate-half: frequency ``i`` drives dimensions ``i`` and ``i + D/2`` of a head
  (``D`` the head size). Hugging Face transformers uses the same layout, so weights move between
  the two without permuting the query and key projections.
- ``rope_scaling`` takes the dictionaries that Hugging Face ``config.json`` files carry, so an
  imported model keeps its context extension:
  - ``linear``: every frequency divided by ``factor`` (position interpolation);
  - ``llama3``: low frequencies divided by ``factor``, high ones kept, a smooth blend between
    (Llama 3.1 and later);
  - ``yarn``: a per-frequency blend of interpolation and extrapolation, plus an ``attention_factor``
    that scales cos and sin (Qwen long-context configs).
  Dynamic NTK and LongRoPE change the tables with the sequence length or per layer; they are
  rejected by ``check_rope_scaling`` instead of being approximated.
- ``check_rope_scaling`` returns a normalised copy: ``"type"`` becomes ``"rope_type"`` and YaRN's
  ``original_max_position_embeddings`` defaults to ``max_len``, as it does in transformers.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# For each scaling type: the parameters it needs and those it may have.
ROPE_SCALING_PARAMETERS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "linear": (frozenset({"factor"}), frozenset()),
    "llama3": (
        frozenset({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}),
        frozenset(),
    ),
    "yarn": (
        frozenset({"factor"}),
        frozenset(
            {
                "original_max_position_embeddings",
                "attention_factor",
                "beta_fast",
                "beta_slow",
                "mscale",
                "mscale_all_dim",
                "truncate",
            }
        ),
    ),
}


def check_rope_scaling(scaling: Any, max_len: int) -> dict[str, Any] | None:
    """Validate a ``rope_scaling`` mapping and return it normalised, or ``None`` for plain RoPE.

    Args:
        scaling: ``None`` or a mapping such as ``{"rope_type": "linear", "factor": 4.0}``.
        max_len: The model's context length; YaRN's default ``original_max_position_embeddings``.

    Raises:
        ValueError: The type is unknown, a parameter is missing, unknown or out of range.
    """
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(
            f"ModelConfig.rope_scaling must be null or an object, got {scaling!r}; "
            'for example {"rope_type": "linear", "factor": 2.0}'
        )
    scaling = dict(scaling)
    if "type" in scaling:
        legacy = scaling.pop("type")
        scaling.setdefault("rope_type", legacy)
    rope_type = scaling.pop("rope_type", None)
    if rope_type in (None, "default"):
        if scaling:
            raise ValueError(f"ModelConfig.rope_scaling without a rope_type cannot have parameters {sorted(scaling)}")
        return None
    if rope_type not in ROPE_SCALING_PARAMETERS:
        raise ValueError(
            f"ModelConfig.rope_scaling.rope_type={rope_type!r} is not supported; "
            f"use one of {sorted(ROPE_SCALING_PARAMETERS)} or null for plain RoPE"
        )
    required, optional = ROPE_SCALING_PARAMETERS[rope_type]
    missing = sorted(required - set(scaling))
    unknown = sorted(set(scaling) - required - optional)
    if missing or unknown:
        raise ValueError(
            f"ModelConfig.rope_scaling for {rope_type!r} has missing {missing} and unknown {unknown} "
            f"parameters; it needs {sorted(required)} and may have {sorted(optional)}"
        )
    for name, value in scaling.items():
        if name == "truncate":
            if not isinstance(value, bool):
                raise ValueError(f"ModelConfig.rope_scaling.truncate must be true or false, got {value!r}")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"ModelConfig.rope_scaling.{name} must be a positive number, got {value!r}")
    if scaling["factor"] < 1:
        raise ValueError(
            f"ModelConfig.rope_scaling.factor must be at least 1, got {scaling['factor']!r}; "
            "it is the context extension ratio"
        )
    if rope_type == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ValueError(
            f"ModelConfig.rope_scaling.high_freq_factor={scaling['high_freq_factor']!r} must be larger "
            f"than low_freq_factor={scaling['low_freq_factor']!r}"
        )
    if rope_type == "yarn":
        scaling.setdefault("original_max_position_embeddings", max_len)
    return {"rope_type": rope_type, **scaling}


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> tuple[torch.Tensor, float]:
    """Return the (D/2,) float64 inverse frequencies and the factor that multiplies cos and sin."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv_freq, 1.0
    rope_type, factor = scaling["rope_type"], scaling["factor"]
    if rope_type == "linear":
        return inv_freq / factor, 1.0
    if rope_type == "llama3":
        return _llama3_frequencies(inv_freq, scaling), 1.0
    return _yarn_frequencies(inv_freq, head_dim, theta, scaling)


def _llama3_frequencies(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Divide wavelengths longer than the original context by ``factor``; blend the middle band."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original_len = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    # 0 where the wavelength is at least original_len / low, 1 where it is at most original_len / high.
    smooth = ((original_len / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def _yarn_frequencies(
    inv_freq: torch.Tensor, head_dim: int, theta: float, scaling: dict[str, Any]
) -> tuple[torch.Tensor, float]:
    """Interpolate the slow frequencies, keep the fast ones, ramp linearly in between (YaRN)."""
    factor = scaling["factor"]
    original_len = scaling["original_max_position_embeddings"]
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def dimension_of(rotations: float) -> float:
        # The dimension whose frequency makes `rotations` full turns over the original context.
        return head_dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dimension_of(beta_fast), dimension_of(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # the ramp would divide by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0.0, 1.0)
    # ramp is 0 for fast frequencies (extrapolated: kept) and 1 for slow ones (interpolated).
    scaled = (1 - ramp) * inv_freq + ramp * inv_freq / factor

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor, 1.0)
    return scaled, float(attention_factor)


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_frequencies(
    head_dim: int, max_len: int, theta: float, scaling: dict[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float32 cos and sin tables of shape (max_len, head_dim) in the rotate-half layout.

    Args:
        head_dim: Size of one attention head (even).
        max_len: Number of positions to tabulate.
        theta: RoPE base.
        scaling: A mapping normalised by ``check_rope_scaling``, or ``None`` for plain RoPE.
    """
    inv_freq, attention_factor = inverse_frequencies(head_dim, theta, scaling)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (max_len, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (max_len, D)
    return (angles.cos() * attention_factor).float(), (angles.sin() * attention_factor).float()
