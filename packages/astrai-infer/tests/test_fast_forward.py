"""FastForward must compute what Transformer.forward computes, on every path it has."""

import pytest
import torch

from astrai_core import ModelConfig, Transformer
from astrai_infer import GenerationConfig, Generator
from astrai_infer import _fast_forward as fast_forward
from astrai_infer._fast_forward import FastForward, can_pack
from astrai_infer._threads import one_thread

VARIANTS = {
    "gqa": {},
    "qk-norm": {"use_qk_norm": True},
    "gated": {"use_gated_attention": True},
    "mqa-tied": {"n_kv_heads": 1, "tie_embeddings": True},
    "yarn": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}},
    "wide-heads": {"dim_head": 24, "use_qk_norm": True},  # H * D = 96 != dim = 64, as in Qwen3-0.6B
}


def make_model(dtype=torch.float32, **overrides) -> Transformer:
    torch.manual_seed(0)
    fields = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=96, max_len=64)
    fields.update({"tie_embeddings": False, **overrides})
    model = Transformer(ModelConfig(**fields)).eval()
    # Norm weights start at 1, which would hide a FastForward that drops or misplaces them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model.to(dtype)


@pytest.mark.parametrize("batch", [1, 2])  # one row takes its own RMSNorm and output-projection paths
@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prefill_and_decode_match_the_model(variant, fuse, batch):
    model = make_model(**VARIANTS[variant])
    fast = FastForward(model, fuse=fuse)
    tokens = torch.randint(0, 97, (batch, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(tokens)["logits"]  # (B, T, V)
        cache = model.make_kv_cache(batch)
        positions = torch.arange(20).expand(batch, 20)
        pieces = [fast(tokens[:, :12], positions[:, :12], None, cache, logits_to_keep=12)]
        for t in range(12, 20):
            pieces.append(fast(tokens[:, t : t + 1], positions[:, t : t + 1], None, cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-5, rtol=1e-5)


def test_left_padded_prefill_matches_the_unpadded_model():
    model = make_model(use_qk_norm=True)
    fast = FastForward(model)
    tokens = torch.randint(4, 97, (1, 6), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), tokens], dim=1)  # (1, 9)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        expected = model(tokens)["logits"][:, -1:]
        logits = fast(padded, positions, mask, model.make_kv_cache(1))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "settings",
    [
        {"fast": False},
        {"fast": True, "fuse": False},
        {"fast": True, "fuse": True},
        {"fast": True, "pack": False},
    ],
)
def test_every_generator_path_gives_the_same_greedy_tokens(tokenizer, dtype, settings, monkeypatch):
    # This model is too small for float32 products to reach the packed layout on their own.
    monkeypatch.setattr(fast_forward, "PACKED_MIN_WORK", 0)
    model = make_model(dtype, vocab_size=tokenizer.vocab_size, n_layers=3)
    reference = Generator(model, tokenizer, fast=False)
    generator = Generator(model, tokenizer, **settings)
    prompts = ["The quick brown fox", "今天天气很好，", "a", [1, 50, 60, 70, 80, 90, 100]]
    config = GenerationConfig(temperature=0, max_new_tokens=12)
    expected = reference.complete_batch(prompts, config)
    assert generator.complete_batch(prompts, config) == expected
    assert [generator.complete(prompt, config) for prompt in prompts] == expected


def test_generator_uses_fast_forward_by_default(generator):
    assert isinstance(generator._forward, FastForward) and generator._forward.fused


needs_bf16_packing = pytest.mark.skipif(
    not can_pack(make_model(torch.bfloat16)), reason="this CPU has no oneDNN bf16 support"
)


@pytest.mark.parametrize(
    "dtype, tolerance",
    # bf16 keeps 8 bits of mantissa, and packed and plain products may differ in the last one.
    [(torch.float32, 1e-5), pytest.param(torch.bfloat16, 0.05, marks=needs_bf16_packing)],
)
@pytest.mark.parametrize("variant", ["gqa", "qk-norm", "gated", "wide-heads"])
def test_packed_weights_match_the_model(variant, dtype, tolerance, monkeypatch):
    # Send every float32 product of this small model to the packed layout too.
    monkeypatch.setattr(fast_forward, "PACKED_MIN_WORK", 0)
    monkeypatch.setattr(fast_forward, "PACKED_MIN_ROWS", 2)
    monkeypatch.setattr(fast_forward, "OUTPUT_PACKED_MIN_ROWS", 2)
    model = make_model(dtype, **VARIANTS[variant])
    packed, plain = FastForward(model), FastForward(model, pack=False)
    assert packed.packed and not plain.packed
    tokens = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(12).expand(2, 12)
    with torch.inference_mode():
        expected = model(tokens)["logits"].float()
        outputs = []
        for fast in (packed, plain):
            cache = model.make_kv_cache(2)
            # A multi-row prefill, two-row decoding steps, then one row alone.
            pieces = [fast(tokens[:, :8], positions[:, :8], None, cache, logits_to_keep=8)]
            pieces += [fast(tokens[:, t : t + 1], positions[:, t : t + 1], None, cache) for t in range(8, 11)]
            cache.select(torch.tensor([1]))
            last = fast(tokens[1:, 11:], positions[1:, 11:], None, cache)
            outputs.append((torch.cat(pieces, dim=1).float(), last.float()))
    for steps, last in outputs:
        torch.testing.assert_close(steps, expected[:, :11], atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(last, expected[1:, 11:], atol=tolerance, rtol=tolerance)


def test_pack_true_is_rejected_where_packing_is_impossible():
    with pytest.raises(ValueError, match="pack=True needs a float32 or bf16 model"):
        FastForward(make_model(torch.float16), pack=True)
    assert not FastForward(make_model(torch.float16)).packed  # the default only packs where it can
    assert FastForward(make_model(torch.float32)).packed


def test_one_thread_restores_thread_count():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with one_thread():
                assert torch.get_num_threads() == 1
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        with one_thread(enabled=False):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_small_products_run_on_one_thread(monkeypatch):
    # With this limit the tiny model's gate/up matrix (192 x 64 floats, 48 KiB) counts as large and
    # every other matrix (32 KiB at most) as small.
    monkeypatch.setattr(fast_forward, "SMALL_MATRIX_BYTES", 32 * 1024)
    model = make_model()
    fast = FastForward(model)
    threads_seen = {}  # matrix elements (rows x columns) -> thread counts its products ran on

    def spy(x, matrix, rows):
        threads_seen.setdefault(matrix.size, set()).add(torch.get_num_threads())
        return linear(x, matrix, rows)

    linear = fast_forward._linear
    monkeypatch.setattr(fast_forward, "_linear", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            cache = model.make_kv_cache(1)
            fast(torch.tensor([[5, 6, 7]]), torch.arange(3)[None], None, cache)
            threads_seen.clear()  # only the decoding step below: one row per product
            fast(torch.tensor([[8]]), torch.tensor([[3]]), None, cache)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    gate_up = 2 * 96 * 64
    assert threads_seen.pop(gate_up) == {2}
    assert threads_seen and all(seen == {1} for seen in threads_seen.values()), threads_seen


def test_fast_forward_runs_with_autograd_on():
    # Callers outside inference mode get logits too (decoding itself runs under inference mode).
    model = make_model()
    fast = FastForward(model)
    cache = model.make_kv_cache(1)
    logits = fast(torch.tensor([[5, 6, 7]]), torch.arange(3)[None], None, cache)
    with torch.no_grad():
        expected = model(torch.tensor([[5, 6, 7]]))["logits"][:, -1:]
    torch.testing.assert_close(logits.detach(), expected, atol=1e-5, rtol=1e-5)
