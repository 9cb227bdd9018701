"""A Llama-style decoder-only Transformer with an optional key/value cache.

Design choices:
- Pre-norm blocks: RMSNorm, rotary position embeddings (RoPE), grouped-query attention through
  ``torch.nn.functional.scaled_dot_product_attention``, and a SwiGLU feed-forward block. Optional
  per-head RMSNorm on queries and keys (Qwen3) and a sigmoid output gate on attention.
- Shapes: ``B`` batch, ``T`` new tokens, ``S`` key positions (cache plus new), ``C`` model width,
  ``H`` query heads, ``K`` key/value heads, ``D`` head size, ``V`` vocabulary.
- Without a cache or mask, attention runs with ``is_causal=True`` so PyTorch can pick its fused
  kernels. With a cache or a padding mask, an explicit boolean mask is built once per forward call.
- Packed training windows hold several documents. Given ``document_ids``, the mask is causal and
  block-diagonal, so no token attends to another document; the caller passes ``position_ids`` that
  restart at each document. Without ``document_ids`` nothing changes.
- The cache is preallocated (static), so decoding allocates nothing per token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .rope import rope_frequencies


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32: bf16 sums of squares lose too much precision.
        x_float = x.float()
        x_float = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return x_float.type_as(x) * self.weight


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, heads, T, D) by the angles in ``cos``/``sin`` (B, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class KVCache:
    """Preallocated keys and values for every layer, filled left to right.

    ``length`` is the number of positions already written; the model writes the next ``T``
    positions and advances it after its last layer.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        self.max_len = max_len or config.max_len
        shape = (config.n_layers, batch_size, config.n_kv_heads, self.max_len, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` (B, K, T, D) after the cached positions and return all keys and values."""
        start, length = self.length, k.shape[2]
        # A view of the layer, then narrow: fewer indexing calls than slicing, once per layer per token.
        keys, values = self.keys[layer], self.values[layer]  # (B, K, max_len, D)
        keys.narrow(2, start, length).copy_(k)
        values.narrow(2, start, length).copy_(v)
        return keys.narrow(2, 0, start + length), values.narrow(2, 0, start + length)

    def drop_left(self, count: int) -> None:
        """Remove the first ``count`` positions of every row, shifting the rest to the start.

        Used when the leading positions are padding that no remaining row needs.
        """
        if not 0 <= count <= self.length:
            raise ValueError(f"cannot drop {count} positions from a cache holding {self.length}")
        end = self.length
        for tensor in (self.keys, self.values):  # (layers, B, K, max_len, D)
            tensor[:, :, :, : end - count] = tensor[:, :, :, count:end].clone()
        self.length = end - count

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows in ``rows`` (for dropping finished sequences)."""
        self.keys = self.keys[:, rows]
        self.values = self.values[:, rows]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        # H * D equals the model width unless the config sets an explicit head size (dim_head).
        q_dim = config.n_heads * config.head_dim
        kv_dim = config.n_kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.dim, q_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, kv_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, kv_dim, bias=False)
        self.o_proj = nn.Linear(q_dim, config.dim, bias=False)
        self.gate_proj = nn.Linear(config.dim, q_dim, bias=False) if config.use_gated_attention else None
        if config.use_qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        kv_cache: KVCache | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|K, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)  # (B, K, S, D)
        is_causal = mask is None and kv_cache is None
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.n_heads != self.n_kv_heads
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H * D)
        if self.gate_proj is not None:
            y = y * torch.sigmoid(self.gate_proj(x))
        return self.o_proj(y)


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.dim_ffn, bias=False)
        self.up_proj = nn.Linear(config.dim, config.dim_ffn, bias=False)
        self.down_proj = nn.Linear(config.dim_ffn, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, mask, kv_cache):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, kv_cache)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """Decoder-only language model; ``forward`` returns ``{"logits": (B, T, V)}``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # Not persistent: the tables are recomputed from the config, so checkpoints stay small.
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_rope()
        self.reset_parameters()
        # Set to True to trade recomputation for activation memory during training.
        self.gradient_checkpointing = False

    def init_rope(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the RoPE tables in float32 on ``device`` (default: where the embedding is)."""
        device = device if device is not None else self.embed_tokens.weight.device
        config = self.config
        cos, sin = rope_frequencies(config.head_dim, config.max_len, config.rope_theta, config.rope_scaling)
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) would also cast the RoPE tables; bf16 angles drift at long positions, so the
        # tables are rebuilt in float32 on the new device instead.
        super()._apply(fn, recurse)
        if not self.embed_tokens.weight.is_meta:
            self.init_rope()
        return self

    def reset_parameters(self) -> None:
        """Initialise weights as GPT-2 does: N(0, 0.02), residual outputs scaled by depth."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if param.dim() == 1:
                nn.init.ones_(param)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, mean=0.0, std=residual_std)
            else:
                nn.init.normal_(param, mean=0.0, std=0.02)

    def make_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """Allocate a cache on the model's device and in its dtype."""
        weight = self.embed_tokens.weight
        return KVCache(self.config, batch_size, max_len, dtype=weight.dtype, device=weight.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute next-token logits.

        Args:
            input_ids: (B, T) token ids.
            position_ids: (B, T) RoPE positions. Defaults to consecutive positions after the cache.
            attention_mask: (B, S) with 1 for real tokens and 0 for padding, over the cached and the
                new positions. Used for left-padded batches; queries never attend to padded keys.
            kv_cache: A cache from ``make_kv_cache``; the new keys and values are appended to it.
            document_ids: (B, T) document of each token in packed windows, e.g. ``0, 0, 1, 1, 1``;
                a token attends only to earlier tokens of its own document. Training only: it
                cannot be combined with ``kv_cache``.
        """
        B, T = input_ids.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.max_len:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the model's max_len={self.config.max_len}; "
                "shorten the input or use a model with a longer context"
            )
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        cos = self.rope_cos[position_ids].unsqueeze(1)  # (B, 1, T, D)
        sin = self.rope_sin[position_ids].unsqueeze(1)
        mask = self._attention_mask(B, T, start, attention_mask, kv_cache is not None, input_ids.device)
        if document_ids is not None:
            mask = self._document_mask(document_ids, mask, input_ids.shape, kv_cache is not None)

        x = self.embed_tokens(input_ids)  # (B, T, C)
        for block in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # Keep only each block's input; its activations are recomputed in the backward pass.
                x = checkpoint(block, x, cos, sin, mask, kv_cache, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.length += T
        logits = self.lm_head(self.norm(x))  # (B, T, V)
        return {"logits": logits}

    @staticmethod
    def _document_mask(document_ids, mask, shape, cached) -> torch.Tensor:
        """Restrict ``mask`` (or plain causal attention) to earlier tokens of the same document."""
        if cached:
            raise ValueError(
                "document_ids cannot be combined with a kv_cache; pass document_ids only when training on packed windows"
            )
        if document_ids.shape != shape:
            raise ValueError(f"document_ids must have the shape of input_ids {tuple(shape)}, got {tuple(document_ids.shape)}")
        T = shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()  # (T, T)
        same_document = document_ids[:, None, :, None] == document_ids[:, None, None, :]  # (B, 1, T, T)
        document_mask = same_document & causal
        return document_mask if mask is None else mask & document_mask

    @staticmethod
    def _attention_mask(B, T, start, attention_mask, cached, device) -> torch.Tensor | None:
        """Build a boolean (B, 1, T, S) mask where True means "may attend", or None for plain causal."""
        if attention_mask is None and (not cached or T == 1):
            # No cache: SDPA's is_causal handles it. One new token: it may see every cached position.
            return None
        S = start + T
        query_pos = torch.arange(start, S, device=device).unsqueeze(1)  # (T, 1)
        key_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
        mask = (key_pos <= query_pos).expand(B, 1, T, S)
        if attention_mask is not None:
            if attention_mask.shape != (B, S):
                raise ValueError(f"attention_mask must have shape {(B, S)}, got {tuple(attention_mask.shape)}")
            mask = mask & attention_mask.bool()[:, None, None, :]
            # A fully padded query row would softmax over nothing and give NaN; let it see itself.
            mask = mask | (key_pos == query_pos)
        return mask
