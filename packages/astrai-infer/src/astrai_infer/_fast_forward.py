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
  use it. float32 products use it from 16 rows (the output projection from 8) and 4M
  multiply-adds up, and PyTorch's own kernel below that, where decoding ran faster. float32 also
  keeps the output projection in column-major order for products of one row, the fastest of the
  three layouts there. The packed and column-major matrices are copies: packing costs the
  model's weight memory again, plus the output projection once more in float32.
  ``tools/bench/gemm_layouts.py`` compares the layouts on matrices in isolation; the thresholds
  come from decoding, where the weights are no longer in the core's own caches.
- RMSNorm weights folded into the next matrices (float32 with ``fuse``): a norm's weight scales
  the columns its following product reads, so the fused q/k/v and gate/up copies (and the
  attention gate's) are made with those columns already scaled, and the norm skips its
  multiplication. A norm over one row computes its scale as a Python float, two operations
  fewer than ``F.rms_norm``.
- One RoPE rotation by ``roll``: the sign of ``cat(-x2, x1)`` is moved into a sine table built
  once, which is exact, and queries and keys are rotated together.
- Small work runs on one thread (see ``_threads``): matrix products whose weights are small,
  attention when it is small, and the elementwise operations of a prefill whose activations
  are narrow. Larger products and attention keep every thread.

Why these: decoding one token of the ~50M preset in float32 spends ~12 of its ~15 ms streaming
weights through matrix-vector products, and each remaining operation runs slower than in a
tight loop because that streaming has evicted the caches (an RMSNorm measured ~45 us there
against ~9 us in a loop of its own), so removing operations pays more than loop timings suggest.

The arithmetic is the model's own: the same RMSNorm in float32, RoPE tables, grouped-query SDPA
and SwiGLU, so logits agree with ``Transformer.forward`` to float rounding (fusing changes the
order of a few float additions inside the matrix products; packed and column-major products and
folded norm weights may round differently in the last bit). Most weights are copied when a
``FastForward`` is built, while the embeddings, the final norm and the RoPE tables are read from
the model on each call. After changing the model's weights, build a new ``FastForward``: an old one
mixes old and new weights.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from astrai_core import KVCache, Transformer

from ._threads import (
    SMALL_ACTIVATIONS,
    SMALL_MATRIX_BYTES,
    SMALL_MATRIX_WORK,
    SMALL_WORK,
    intra_op_threads,
    one_thread,
)


def can_pack(model: Transformer) -> bool:
    """Return whether ``model``'s weights can be prepacked for oneDNN: float32 or bf16 on a CPU."""
    weight = model.embed_tokens.weight
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return weight.dtype == torch.float32 or (
        weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class _Matrix(NamedTuple):
    """A weight matrix in one or more layouts: PyTorch's, oneDNN's packed one, column-major."""

    dense: torch.Tensor | None  # (out, in)
    packed: torch.Tensor | None  # opaque oneDNN tensor
    size: int  # elements
    one_thread_rows: int  # products with at most this many rows run on one CPU thread
    packed_min_rows: int  # float32 products with fewer rows (or under PACKED_MIN_WORK) read ``dense``
    column_major: torch.Tensor | None = None  # (out, in) stored transposed, for one-row products


# A float32 product goes to the packed layout from this many rows (a layer's matrices; the output
# projection from OUTPUT_PACKED_MIN_ROWS) and this many multiply-adds up. Measured by decoding the
# ~50M preset: at 8 rows the layers ran 3-5% faster from the plain layout and the output projection
# 10% faster from the packed one.
PACKED_MIN_ROWS, OUTPUT_PACKED_MIN_ROWS, PACKED_MIN_WORK = 16, 8, 1 << 22


def _linear(x: torch.Tensor, matrix: _Matrix, rows: int) -> torch.Tensor:
    """Return ``x @ weight.T``, reading whichever layout of ``matrix`` is faster for ``rows`` rows."""
    if matrix.column_major is not None and rows == 1:
        return F.linear(x, matrix.column_major)
    if matrix.dense is None:
        return _packed_linear(x, matrix.packed)
    if matrix.packed is not None:
        if rows >= matrix.packed_min_rows and rows * matrix.size >= PACKED_MIN_WORK:
            return _packed_linear(x, matrix.packed)
    return F.linear(x, matrix.dense)


def _packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    # The op torch.compile runs for packed CPU weights (the "freezing" pass of torch._inductor).
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


class _Layer(NamedTuple):
    attention_norm: torch.Tensor | None  # None when folded into qkv and gate
    qkv: tuple[_Matrix, ...]  # one fused (H*D + 2*K*D, C) matrix, or the three separate ones
    qk_norm: torch.Tensor | None  # (H + K, D): q_norm's weight for each query head, then k_norm's
    gate: _Matrix | None  # attention output gate
    o_proj: _Matrix
    ffn_norm: torch.Tensor | None  # None when folded into gate_up
    gate_up: tuple[_Matrix, ...]  # one fused (2*F, C) matrix, or gate and up
    down_proj: _Matrix


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    # RMSNorm's arithmetic through F.rms_norm: normalise in float32, scale in the model's dtype.
    if weight is None:  # folded into the next matrices, which happens in float32 only
        if x.numel() == x.shape[-1] and x.device.type == "cpu":
            # One row (decoding one sequence): its scale as a Python float takes two operations
            # fewer than F.rms_norm, which saved about 30 us per norm decoding the ~50M preset.
            flat = x.reshape(-1)
            return x * (1.0 / math.sqrt(torch.dot(flat, flat).item() / x.shape[-1] + eps))
        return F.rms_norm(x, (x.shape[-1],), None, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), None, eps).type_as(x) * weight


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    # The model's x * cos + cat(-x2, x1) * sin, with the minus sign moved into the sine table
    # (exact: negation only flips a sign bit) so that the rotation is a single roll.
    rotated = x.roll(x.shape[-1] // 2, dims=-1)
    return (x * cos + rotated * signed_sin).to(x.dtype)


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
        # RMSNorm's weight scales its output's columns, which the next matrix product reads: in
        # float32 it can be folded into that matrix's input columns, saving an operation per norm.
        # The fused matrices are copies anyway. bf16 does not fold, so it keeps the model's roundings.
        fold = fuse and model.embed_tokens.weight.dtype == torch.float32

        def matrix(
            *weights: torch.Tensor, norm: torch.Tensor | None = None, packed_min_rows: int = PACKED_MIN_ROWS
        ) -> _Matrix:
            weight = torch.cat(weights).detach() if len(weights) > 1 else weights[0].detach()
            if fold and norm is not None:
                weight = weight * norm.detach()  # (out, in) * (in,)
            # The hint 1 (rows per call) is decoding's; the packed layout serves any row count.
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1) if pack else None
            one_thread_rows = 0
            if self.on_cpu and weight.numel() * weight.element_size() <= SMALL_MATRIX_BYTES:
                one_thread_rows = SMALL_MATRIX_WORK.get(weight.dtype, SMALL_WORK) // weight.numel()
            dense = weight if keep_dense else None
            return _Matrix(dense, packed, weight.numel(), one_thread_rows, packed_min_rows)

        self.layers = []
        for block in model.layers:
            attention, ffn = block.attention, block.feed_forward
            qkv = (attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight)
            gate_up = (ffn.gate_proj.weight, ffn.up_proj.weight)
            attention_norm, ffn_norm = block.attention_norm.weight, block.ffn_norm.weight
            gate = attention.gate_proj
            self.layers.append(
                _Layer(
                    attention_norm=None if fold else attention_norm,
                    qkv=(matrix(*qkv, norm=attention_norm),) if fuse else tuple(map(matrix, qkv)),
                    qk_norm=_stack_qk_norm(attention, self.n_heads, self.n_kv_heads),
                    gate=matrix(gate.weight, norm=attention_norm) if gate is not None else None,
                    o_proj=matrix(attention.o_proj.weight),
                    ffn_norm=None if fold else ffn_norm,
                    gate_up=(matrix(*gate_up, norm=ffn_norm),) if fuse else tuple(map(matrix, gate_up)),
                    down_proj=matrix(ffn.down_proj.weight),
                )
            )
        self.lm_head = matrix(model.lm_head.weight, packed_min_rows=OUTPUT_PACKED_MIN_ROWS)
        if pack and keep_dense:
            # float32's output projection (vocabulary x width) also keeps a column-major copy for
            # products of one row. On the ~50M preset decoding one sequence got 9% faster with it.
            # From two rows up it was slower than the other layouts.
            weight = model.lm_head.weight.detach()
            self.lm_head = self.lm_head._replace(column_major=weight.t().contiguous().t())
        half = self.head_dim // 2
        self.signed_sin = torch.cat([-model.rope_sin[:, :half], model.rope_sin[:, half:]], dim=-1)

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
        sin = self.signed_sin[position_ids].unsqueeze(1)
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
        # Small products run on one thread and the others on every thread, also inside a one-thread
        # block. The check skips the context manager when the count is already right.
        rows = x.numel() // x.shape[-1]
        threads = 1 if rows <= matrix.one_thread_rows else self.threads
        if torch.get_num_threads() == threads:
            return _linear(x, matrix, rows)
        with intra_op_threads(threads):
            return _linear(x, matrix, rows)

    def _attention(self, index, layer, x, cos, sin, mask, is_causal, kv_cache) -> torch.Tensor:
        B, T, C = x.shape
        H, K, D = self.n_heads, self.n_kv_heads, self.head_dim
        if len(layer.qkv) == 1:
            qkv = self._linear(x, layer.qkv[0])
        else:
            qkv = torch.cat([self._linear(x, weight) for weight in layer.qkv], dim=-1)
        # Queries and keys go through qk-norm and RoPE together: half the kernel launches.
        qk, v = qkv.view(B, T, H + 2 * K, D).split([H + K, K], dim=2)
        if layer.qk_norm is not None:
            qk = _rms_norm(qk, layer.qk_norm, self.eps)
        q, k = _rope(qk.transpose(1, 2), cos, sin).split([H, K], dim=1)  # (B, H, T, D), (B, K, T, D)
        k, v = kv_cache.update(index, k, v.transpose(1, 2))  # (B, K, S, D)
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
