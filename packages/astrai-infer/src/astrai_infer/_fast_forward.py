"""A lean forward pass of ``astrai_core.Transformer`` for decoding: same numbers, fewer calls.

Decoding one token of a small model spends most of its time in Python and in launching many tiny
kernels, not in arithmetic. ``FastForward`` computes what ``Transformer.forward`` computes with
fewer of both:

- Fused projections (``fuse=True``): the query, key and value weights of a layer are concatenated
  into one matrix, and so are the gate and up weights of its feed-forward block, so a layer runs
  two matrix products where it ran five. The fused matrices are copies, so they cost as much
  memory as those weights again; ``fuse=False`` keeps only the model's own tensors.
- Plain functions over tensors gathered once (no ``nn.Module`` calls, hooks or attribute lookups
  per layer), and each layer's weights kept in a tuple.
- ``logits_to_keep``: a prefill computes the output projection for the last position only.
- A prefill into an empty cache without padding uses SDPA's ``is_causal`` path, not a mask.

The arithmetic is the model's own: the same RMSNorm in float32, RoPE tables, grouped-query SDPA
and SwiGLU, so logits agree with ``Transformer.forward`` to float rounding (fusing only changes
the order of a few float additions inside the matrix products). The weights are read when a
``FastForward`` is built; build a new one after changing the model's weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from astrai_core import KVCache, Transformer


class _Layer(NamedTuple):
    attention_norm: torch.Tensor
    qkv: tuple[torch.Tensor, ...]  # one fused (H*D + 2*K*D, C) matrix, or the three separate ones
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    gate: torch.Tensor | None  # attention output gate
    o_proj: torch.Tensor
    ffn_norm: torch.Tensor
    gate_up: tuple[torch.Tensor, ...]  # one fused (2*F, C) matrix, or gate and up
    down_proj: torch.Tensor


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x_float = x.float()
    x_float = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + eps)
    return x_float.type_as(x) * weight


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class FastForward:
    """The forward pass of a ``Transformer`` for generation, returning only the last logits.

    Args:
        model: The model; its weights are gathered (and, with ``fuse``, copied) now.
        fuse: Concatenate the q/k/v and gate/up weights of each layer.
    """

    def __init__(self, model: Transformer, fuse: bool = True):
        config = model.config
        self.config, self.model, self.fused = config, model, fuse
        self.eps = config.norm_eps
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.layers = []
        for block in model.layers:
            attention, ffn = block.attention, block.feed_forward
            qkv = (attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight)
            gate_up = (ffn.gate_proj.weight, ffn.up_proj.weight)
            self.layers.append(
                _Layer(
                    attention_norm=block.attention_norm.weight,
                    qkv=(torch.cat(qkv).detach(),) if fuse else qkv,
                    q_norm=attention.q_norm.weight if attention.q_norm is not None else None,
                    k_norm=attention.k_norm.weight if attention.k_norm is not None else None,
                    gate=attention.gate_proj.weight if attention.gate_proj is not None else None,
                    o_proj=attention.o_proj.weight,
                    ffn_norm=block.ffn_norm.weight,
                    gate_up=(torch.cat(gate_up).detach(),) if fuse else gate_up,
                    down_proj=ffn.down_proj.weight,
                )
            )

    def __call__(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kv_cache: KVCache,
        logits_to_keep: int = 1,
    ) -> torch.Tensor:
        """Return the (B, logits_to_keep, V) logits of the last positions and fill ``kv_cache``.

        Args:
            input_ids: (B, T) token ids.
            position_ids: (B, T) RoPE positions.
            attention_mask: (B, S) 1 on real tokens over the cached and new positions, or ``None``
                when no row has padding.
            kv_cache: The cache to append to.
            logits_to_keep: Number of final positions to compute logits for.
        """
        model = self.model
        B, T = input_ids.shape
        start = kv_cache.length
        if start + T > self.config.max_len:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the model's max_len={self.config.max_len}; "
                "shorten the prompt or lower max_new_tokens"
            )
        cos = model.rope_cos[position_ids].unsqueeze(1)  # (B, 1, T, D)
        sin = model.rope_sin[position_ids].unsqueeze(1)
        mask = self._mask(B, T, start, attention_mask, input_ids.device)
        is_causal = mask is None and T > 1  # only an empty cache without padding gets here with T > 1

        x = F.embedding(input_ids, model.embed_tokens.weight)  # (B, T, C)
        for index, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.attention_norm, self.eps)
            x = x + self._attention(index, layer, h, cos, sin, mask, is_causal, kv_cache)
            h = _rms_norm(x, layer.ffn_norm, self.eps)
            if len(layer.gate_up) == 1:
                gate, up = F.linear(h, layer.gate_up[0]).chunk(2, dim=-1)  # 2 x (B, T, F)
            else:
                gate, up = F.linear(h, layer.gate_up[0]), F.linear(h, layer.gate_up[1])
            x = x + F.linear(F.silu(gate) * up, layer.down_proj)
        kv_cache.length += T
        x = x[:, -logits_to_keep:]  # (B, logits_to_keep, C)
        return F.linear(_rms_norm(x, model.norm.weight, self.eps), model.lm_head.weight)  # (B, logits_to_keep, V)

    def _attention(self, index, layer, x, cos, sin, mask, is_causal, kv_cache) -> torch.Tensor:
        B, T, C = x.shape
        H, K, D = self.n_heads, self.n_kv_heads, self.head_dim
        if len(layer.qkv) == 1:
            q, k, v = F.linear(x, layer.qkv[0]).split([H * D, K * D, K * D], dim=-1)
        else:
            q, k, v = (F.linear(x, weight) for weight in layer.qkv)
        q, k, v = q.view(B, T, H, D), k.view(B, T, K, D), v.view(B, T, K, D)
        if layer.q_norm is not None:
            q, k = _rms_norm(q, layer.q_norm, self.eps), _rms_norm(k, layer.k_norm, self.eps)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|K, T, D)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        k, v = kv_cache.update(index, k, v)  # (B, K, S, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=H != K)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)
        if layer.gate is not None:
            y = y * torch.sigmoid(F.linear(x, layer.gate))
        return F.linear(y, layer.o_proj)

    @staticmethod
    def _mask(B, T, start, attention_mask, device) -> torch.Tensor | None:
        """Return a (B, 1, T, S) boolean mask (True: may attend), or ``None`` when none is needed."""
        if attention_mask is None and (T == 1 or start == 0):
            return None  # one new token sees every cached position; an empty cache is plain causal
        S = start + T
        query_pos = torch.arange(start, S, device=device).unsqueeze(1)  # (T, 1)
        key_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
        mask = (key_pos <= query_pos).expand(B, 1, T, S)
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
            mask = mask | (key_pos == query_pos)  # a fully padded query row would give NaN
        return mask
