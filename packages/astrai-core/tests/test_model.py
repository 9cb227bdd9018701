import pytest
import torch
from astrai_core import ModelConfig, Transformer


def make_model(**overrides) -> Transformer:
    fields = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=64, max_len=64)
    fields.update(overrides)
    torch.manual_seed(0)
    return Transformer(ModelConfig(**fields)).eval()


VARIANTS = [
    {},
    {"use_qk_norm": True},
    {"use_gated_attention": True},
    {"tie_embeddings": False},
    {"n_kv_heads": 4},
    {"n_kv_heads": 1, "use_qk_norm": True, "use_gated_attention": True},
    # Explicit head sizes: 4 x 16 is wider than dim=32, and dim=32 does not divide into 6 heads.
    {"dim_head": 16},
    {"n_heads": 6, "n_kv_heads": 3, "dim_head": 4, "use_qk_norm": True, "use_gated_attention": True},
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_logits_shape(overrides):
    model = make_model(**overrides)
    logits = model(torch.randint(0, 97, (3, 11)))["logits"]
    assert logits.shape == (3, 11, 97)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("overrides", VARIANTS)
def test_kv_cache_matches_full_forward(overrides):
    model = make_model(**overrides)
    tokens = torch.randint(0, 97, (2, 12))
    full = model(tokens)["logits"]
    cache = model.make_kv_cache(batch_size=2)
    pieces = [model(tokens[:, :5], kv_cache=cache)["logits"]]
    for t in range(5, 12):
        pieces.append(model(tokens[:, t : t + 1], kv_cache=cache)["logits"])
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_causality():
    model = make_model()
    tokens = torch.randint(0, 97, (1, 10))
    changed = tokens.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 97
    before, after = model(tokens)["logits"], model(changed)["logits"]
    torch.testing.assert_close(before[:, :7], after[:, :7])
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_left_padding_matches_unpadded():
    model = make_model()
    tokens = torch.randint(4, 97, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), tokens], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    expected = model(tokens)["logits"]
    got = model(padded, position_ids=positions, attention_mask=mask)["logits"][:, 3:]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_tied_embeddings_share_storage():
    model = make_model(tie_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    untied = make_model(tie_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()


def test_too_long_input_raises():
    model = make_model(max_len=16)
    with pytest.raises(ValueError, match="max_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_bfloat16_forward_runs():
    model = make_model().to(torch.bfloat16)
    logits = model(torch.randint(0, 97, (2, 8)))["logits"]
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits.float()).all()


def test_backward_reaches_every_parameter():
    model = make_model(use_qk_norm=True, use_gated_attention=True, tie_embeddings=False).train()
    model(torch.randint(0, 97, (2, 8)))["logits"].sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_cache_drop_left_keeps_later_positions():
    model = make_model()
    cache = model.make_kv_cache(batch_size=1)
    model(torch.randint(0, 97, (1, 6)), kv_cache=cache)
    tail = cache.keys[:, :, :, 2:6].clone()
    cache.drop_left(2)
    assert cache.length == 4
    assert torch.equal(cache.keys[:, :, :, :4], tail)
    with pytest.raises(ValueError, match="cannot drop"):
        cache.drop_left(5)


def test_explicit_head_size_shapes():
    model = make_model(n_heads=6, n_kv_heads=2, dim_head=8, use_gated_attention=True)
    attention = model.layers[0].attention
    assert attention.q_proj.weight.shape == (48, 32)
    assert attention.k_proj.weight.shape == (16, 32)
    assert attention.v_proj.weight.shape == (16, 32)
    assert attention.o_proj.weight.shape == (32, 48)
    assert attention.gate_proj.weight.shape == (48, 32)
    assert model.rope_cos.shape == (64, 8)
    assert model.make_kv_cache(batch_size=3).keys.shape == (2, 3, 2, 64, 8)
