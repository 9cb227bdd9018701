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
- Prepacked weights on CPU (``pack``): each matrix is also stored in the blocked layout that
  oneDNN's matrix product reads, so no call has to reorder or repack it. bf16 products always
  use it; float32 products use it only from 8 rows and 4M multiply-adds up (prefill, batched
  decoding of a larger model), where it won, and PyTorch's own kernel below that, where it lost.
  The packed matrices are copies and cost the model's weight memory again; float32 keeps the
  plain ones too. Measured with ``tools/bench/gemm_layouts.py`` on the project's Xeon (AVX-512
  BF16, AMX), two runs: a pass over the ~50M preset's matrices ran 1.2-1.6x faster packed in
  bf16, 1.1-1.4x faster in float32 at 8 and 256 rows, and 0.7-0.9x as fast at 1 and 2 rows.
- Small work runs on one thread (see ``_threads``): attention when it is small, and the
  elementwise operations of a prefill whose activations are narrow. Matrix products and larger
  attention keep every thread.

The arithmetic is the model's own: the same RMSNorm in float32, RoPE tables, grouped-query SDPA
and SwiGLU, so logits agree with ``Transformer.forward`` to float rounding (fusing only changes
the order of a few float additions inside the matrix products, and packed products may round
differently in the last bit). The weights are read when a ``FastForward`` is built; build a
new one after changing the model's weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from astrai_core import KVCache, Transformer

from ._threads import SMALL_ACTIVATIONS, SMALL_WORK, intra_op_threads, one_thread


def can_pack(model: Transformer) -> bool:
    """Return whether ``model``'s weights can be prepacked for oneDNN: float32 or bf16 on a CPU."""
    weight = model.embed_tokens.weight
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return weight.dtype == torch.float32 or (
        weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class _Matrix(NamedTuple):
    """A weight matrix in PyTorch's layout, oneDNN's packed layout, or both."""

    dense: torch.Tensor | None  # (out, in)
    packed: torch.Tensor | None  # opaque oneDNN tensor


# A float32 product goes to the packed layout from this many rows and multiply-adds up.
PACKED_MIN_ROWS, PACKED_MIN_WORK = 8, 1 << 22


def _linear(x: torch.Tensor, matrix: _Matrix) -> torch.Tensor:
    """Return ``x @ weight.T``, from whichever layout of ``matrix`` is faster for ``x``."""
    if matrix.dense is None:
        return _packed_linear(x, matrix.packed)
    if matrix.packed is not None:
        rows = x.numel() // x.shape[-1]
        if rows >= PACKED_MIN_ROWS and rows * matrix.dense.numel() >= PACKED_MIN_WORK:
            return _packed_linear(x, matrix.packed)
    return F.linear(x, matrix.dense)


def _packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    # The op torch.compile runs for packed CPU weights (the "freezing" pass of torch._inductor).
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


class _Layer(NamedTuple):
    attention_norm: torch.Tensor
    qkv: tuple[_Matrix, ...]  # one fused (H*D + 2*K*D, C) matrix, or the three separate ones
    qk_norm: torch.Tensor | None  # (H + K, D): q_norm's weight for each query head, then k_norm's
    gate: _Matrix | None  # attention output gate
    o_proj: _Matrix
    ffn_norm: torch.Tensor
    gate_up: tuple[_Matrix, ...]  # one fused (2*F, C) matrix, or gate and up
    down_proj: _Matrix


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # RMSNorm's arithmetic through F.rms_norm: normalise in float32, scale in the model's dtype.
    return F.rms_norm(x.float(), (x.shape[-1],), None, eps).type_as(x) * weight


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


def _stack_qk_norm(attention, n_heads: int, n_kv_heads: int) -> torch.Tensor | None:
    if attention.q_norm is None:
        return None
    q_weight = attention.q_norm.weight.detach().expand(n_heads, -1)
    k_weight = attention.k_norm.weight.detach().expand(n_kv_heads, -1)
    return torch.cat([q_weight, k_weight])  # (H + K, D)


class FastForward:
    """The forward pass of a ``Transformer`` for generation, returning only the last logits.

    Args:
        model: The model; its weights are gathered (and, with ``fuse`` or ``pack``, copied) now.
        fuse: Concatenate the q/k/v and gate/up weights of each layer.
        pack: Prepack every matrix for oneDNN. ``None`` packs when ``can_pack(model)``; ``True``
            raises ``ValueError`` where it cannot (GPUs, float16, bf16 on CPUs without support).
    """

    def __init__(self, model: Transformer, fuse: bool = True, pack: bool | None = None):
        config = model.config
        if pack is None:
            pack = can_pack(model)
        elif pack and not can_pack(model):
            weight = model.embed_tokens.weight
            raise ValueError(
                f"pack=True needs a float32 or bf16 model on a CPU with oneDNN support, got "
                f"{weight.dtype} on {weight.device}; pass pack=None to pack only where it can"
            )
        self.config, self.model, self.fused, self.packed = config, model, fuse, pack
        self.eps = config.norm_eps
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.on_cpu = model.embed_tokens.weight.device.type == "cpu"
        keep_dense = not pack or model.embed_tokens.weight.dtype == torch.float32

        def matrix(*weights: torch.Tensor) -> _Matrix:
            weight = torch.cat(weights).detach() if len(weights) > 1 else weights[0].detach()
            # The hint 1 (rows per call) is decoding's; the packed layout serves any row count.
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1) if pack else None
            return _Matrix(weight if keep_dense else None, packed)

        self.layers = []
        for block in model.layers:
            attention, ffn = block.attention, block.feed_forward
            qkv = (attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight)
            gate_up = (ffn.gate_proj.weight, ffn.up_proj.weight)
            self.layers.append(
                _Layer(
                    attention_norm=block.attention_norm.weight,
                    qkv=(matrix(*qkv),) if fuse else tuple(map(matrix, qkv)),
                    qk_norm=_stack_qk_norm(attention, self.n_heads, self.n_kv_heads),
                    gate=matrix(attention.gate_proj.weight) if attention.gate_proj is not None else None,
                    o_proj=matrix(attention.o_proj.weight),
                    ffn_norm=block.ffn_norm.weight,
                    gate_up=(matrix(*gate_up),) if fuse else tuple(map(matrix, gate_up)),
                    down_proj=matrix(ffn.down_proj.weight),
                )
            )
        self.lm_head = matrix(model.lm_head.weight)

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

        self.threads = torch.get_num_threads()  # what matrix products and large attention get
        # Elementwise operations split across threads from 32768 elements (ATen's grain size), so
        # one thread helps only when some of them are that large and none is much larger.
        rows, widest = B * T, 2 * self.config.dim_ffn
        narrow = self.on_cpu and rows * widest > 32768 and rows * self.config.dim <= SMALL_ACTIVATIONS
        with one_thread(narrow):
            x = F.embedding(input_ids, model.embed_tokens.weight)  # (B, T, C)
            for index, layer in enumerate(self.layers):
                h = _rms_norm(x, layer.attention_norm, self.eps)
                x = x + self._attention(index, layer, h, cos, sin, mask, is_causal, kv_cache)
                h = _rms_norm(x, layer.ffn_norm, self.eps)
                if len(layer.gate_up) == 1:
                    gate, up = self._linear(h, layer.gate_up[0]).chunk(2, dim=-1)  # 2 x (B, T, F)
                else:
                    gate, up = self._linear(h, layer.gate_up[0]), self._linear(h, layer.gate_up[1])
                x = x + self._linear(F.silu(gate) * up, layer.down_proj)
            kv_cache.length += T
            x = x[:, -logits_to_keep:]  # (B, logits_to_keep, C)
            x = _rms_norm(x, model.norm.weight, self.eps)
            return self._linear(x, self.lm_head)  # (B, logits_to_keep, V)

    def _linear(self, x: torch.Tensor, matrix: _Matrix) -> torch.Tensor:
        # Matrix products take every thread, also inside a one-thread block. The check skips the
        # context manager on the common path, which runs it 49 times per token for the ~50M preset.
        if torch.get_num_threads() == self.threads:
            return _linear(x, matrix)
        with intra_op_threads(self.threads):
            return _linear(x, matrix)

    def _attention(self, index, layer, x, cos, sin, mask, is_causal, kv_cache) -> torch.Tensor:
        B, T, C = x.shape
        H, K, D = self.n_heads, self.n_kv_heads, self.head_dim
        if len(layer.qkv) == 1:
            qkv = self._linear(x, layer.qkv[0])
        else:
            qkv = torch.cat([self._linear(x, weight) for weight in layer.qkv], dim=-1)
        qkv = qkv.view(B, T, H + 2 * K, D)
        # Queries and keys go through qk-norm and RoPE together: half the kernel launches.
        qk, v = qkv[:, :, : H + K], qkv[:, :, H + K :]
        if layer.qk_norm is not None:
            qk = _rms_norm(qk, layer.qk_norm, self.eps)
        qk = _rope(qk.transpose(1, 2), cos, sin)  # (B, H + K, T, D)
        k, v = kv_cache.update(index, qk[:, H:], v.transpose(1, 2))  # (B, K, S, D)
        q = qk[:, :H]
        small = self.on_cpu and B * H * T * k.shape[2] * D <= SMALL_WORK
        with intra_op_threads(1 if small else self.threads):
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=H != K
            )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        if layer.gate is not None:
            y = y * torch.sigmoid(self._linear(x, layer.gate))
        return self._linear(y, layer.o_proj)

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
