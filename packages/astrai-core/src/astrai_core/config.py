"""Model hyperparameters as a validated, JSON-serialisable dataclass.

Design choices:
- Every field is checked in ``__post_init__`` so a bad value fails where it is written, with a
  message naming the field, the value and a fix, instead of as a shape error deep in a forward pass.
- ``dim_ffn`` is explicit (no hidden multiplier), so a config file states the exact model.
- The head size has two names. ``dim_head`` is the stored field: ``None`` (the default) or an
  explicit size, as in Qwen3-0.6B (``dim=1024``, 16 heads of 128). ``head_dim`` is a property
  that resolves it, and it is what every other module reads. Only the explicit value is stored, so
  a copy made with ``preset`` or ``dataclasses.replace`` that changes ``dim`` or ``n_heads`` gets
  the new default head size.
- Presets are plain instances; ``ModelConfig.preset(name, **overrides)`` copies one with changes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .rope import check_rope_scaling


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-style decoder-only Transformer.

    Attributes:
        vocab_size: Number of token ids, including special tokens.
        dim: Width of the residual stream.
        n_layers: Number of Transformer blocks.
        n_heads: Number of query heads. ``dim`` must be divisible by it unless ``dim_head`` is set.
        n_kv_heads: Number of key/value heads (grouped-query attention); divides ``n_heads``.
        dim_ffn: Hidden width of the SwiGLU feed-forward block.
        dim_head: Size of each attention head, or ``None`` for ``dim // n_heads``. Hugging Face
            calls it ``head_dim``. The ``head_dim`` property returns the size in use.
        max_len: Longest sequence (prompt plus generated tokens) the model accepts.
        norm_eps: Epsilon of every RMSNorm.
        rope_theta: Base of the rotary position embedding frequencies.
        use_qk_norm: Apply RMSNorm to each query and key head before RoPE (as in Qwen3).
        use_gated_attention: Multiply the attention output by a learned sigmoid gate per channel.
        tie_embeddings: Share the input embedding matrix with the output projection.
        rope_scaling: ``None`` for plain RoPE, or a Hugging Face style mapping that extends the
            context: ``{"rope_type": "linear" | "llama3" | "yarn", "factor": ..., ...}``. See
            ``astrai_core.rope`` for each type's parameters.
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    dim_ffn: int
    max_len: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    use_qk_norm: bool = False
    use_gated_attention: bool = False
    tie_embeddings: bool = True
    rope_scaling: dict[str, Any] | None = None
    dim_head: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "dim_ffn", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive number, got {value!r}")
        for name in ("use_qk_norm", "use_gated_attention", "tie_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"ModelConfig.{name} must be true or false, got {value!r}")
        if self.dim_head is not None and (
            isinstance(self.dim_head, bool) or not isinstance(self.dim_head, int) or self.dim_head <= 0
        ):
            raise ValueError(
                "ModelConfig.dim_head must be a positive integer, or null for dim // n_heads, "
                f"got {self.dim_head!r}"
            )
        if self.dim_head is None and self.dim % self.n_heads:
            nearest = _divisors_near(self.dim, self.n_heads)
            raise ValueError(
                f"ModelConfig.dim={self.dim} is not divisible by n_heads={self.n_heads}; "
                f"choose n_heads among the divisors of dim (for example {nearest}), "
                "or set dim_head to the head size you want"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; "
                "each key/value head must serve a whole number of query heads, so pick n_kv_heads "
                f"from {_divisors(self.n_heads)}"
            )
        # Normalised here (legacy "type" key, YaRN defaults) so the stored config is explicit.
        object.__setattr__(self, "rope_scaling", check_rope_scaling(self.rope_scaling, self.max_len))
        if self.dim_head is not None and self.dim_head % 2:
            raise ValueError(
                f"ModelConfig.dim_head={self.dim_head} is odd; rotary embeddings need an even head size, "
                "so choose an even dim_head"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"ModelConfig head size dim/n_heads={self.head_dim} is odd; rotary embeddings need an "
                "even head size, so change dim or n_heads, or set an even dim_head"
            )

    @property
    def head_dim(self) -> int:
        """Size of each attention head: ``dim_head`` when set, otherwise ``dim // n_heads``."""
        return self.dim_head if self.dim_head is not None else self.dim // self.n_heads

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Count the parameters a ``Transformer`` built from this config has."""
        d = self.dim
        q, k = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim  # query and key/value widths
        attention = d * q * 2 + d * k * 2 + (d * q if self.use_gated_attention else 0)
        attention += 2 * self.head_dim if self.use_qk_norm else 0
        block = attention + 3 * d * self.dim_ffn + 2 * d
        total = self.n_layers * block + d
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return total

    # Serialisation

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["dim_head"] is None:
            # Left out so that config.json files of models without an explicit head size still load
            # in AstrAI 0.2.0, which rejects unknown fields.
            del data["dim_head"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model config") -> ModelConfig:
        """Build a config from a mapping, rejecting unknown keys so typos are not silently ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hint = "; the head size field is dim_head" if "head_dim" in unknown else ""
            raise ValueError(f"{source}: unknown field(s) {unknown}; valid fields are {sorted(known)}{hint}")
        missing = sorted(f.name for f in fields(cls) if f.default is dataclasses.MISSING and f.name not in data)
        if missing:
            raise ValueError(f"{source}: missing required field(s) {missing}")
        try:
            return cls(**data)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    # Presets

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Return the named preset, with ``overrides`` replacing some of its fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; available presets: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _divisors_near(n: int, target: int) -> list[int]:
    return sorted(_divisors(n), key=lambda d: abs(d - target))[:3]


PRESETS: dict[str, ModelConfig] = {
    # About 3.1M parameters with an 8k vocabulary: trains in minutes on two CPU cores.
    "tiny": ModelConfig(vocab_size=8192, dim=192, n_layers=4, n_heads=6, n_kv_heads=2, dim_ffn=512, max_len=512),
    # About 6.5M parameters.
    "small": ModelConfig(vocab_size=8192, dim=256, n_layers=6, n_heads=8, n_kv_heads=4, dim_ffn=704, max_len=1024),
    # About 52M parameters.
    "medium": ModelConfig(
        vocab_size=32000, dim=512, n_layers=12, n_heads=8, n_kv_heads=4, dim_ffn=1408, max_len=2048
    ),
    # About 1.1B parameters: the size the project targets for a useful bilingual chat model.
    "1b": ModelConfig(
        vocab_size=64000,
        dim=2048,
        n_layers=20,
        n_heads=16,
        n_kv_heads=4,
        dim_ffn=6144,
        max_len=4096,
        rope_theta=1_000_000.0,
        use_qk_norm=True,
        use_gated_attention=False,
    ),
}
