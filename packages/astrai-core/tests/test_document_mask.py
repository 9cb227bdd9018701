"""Attention restricted to documents: packed windows behave like their documents run one by one."""

import pytest
import torch
from astrai_core import ModelConfig, Transformer


def make_model(**overrides) -> Transformer:
    fields = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=64, max_len=64)
    fields.update(overrides)
    torch.manual_seed(0)
    return Transformer(ModelConfig(**fields)).eval()


def packed_inputs(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One window of documents of ``lengths``: (input_ids, position_ids, document_ids), each (1, T)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 97, (1, sum(lengths)), generator=generator)
    position_ids = torch.cat([torch.arange(length) for length in lengths]).unsqueeze(0)
    document_ids = torch.cat([torch.full((length,), index) for index, length in enumerate(lengths)]).unsqueeze(0)
    return input_ids, position_ids, document_ids


@pytest.mark.parametrize("overrides", [{}, {"use_qk_norm": True, "use_gated_attention": True, "n_kv_heads": 1}])
def test_packed_documents_match_separate_runs(overrides):
    model = make_model(**overrides)
    lengths = [5, 9, 3]
    input_ids, position_ids, document_ids = packed_inputs(lengths)

    with torch.no_grad():
        packed = model(input_ids, position_ids=position_ids, document_ids=document_ids)["logits"]
        separate = [model(piece)["logits"] for piece in input_ids.split(lengths, dim=1)]

    torch.testing.assert_close(packed, torch.cat(separate, dim=1), atol=1e-5, rtol=1e-5)


def test_without_document_ids_documents_leak():
    model = make_model()
    input_ids, _, _ = packed_inputs([6, 6])
    changed = input_ids.clone()
    changed[0, :6] = (changed[0, :6] + 1) % 97

    with torch.no_grad():
        before = model(input_ids)["logits"][0, 6:]
        after = model(changed)["logits"][0, 6:]

    assert not torch.allclose(before, after)  # the plain causal path lets document 2 see document 1


def test_one_document_equals_default_path():
    model = make_model()
    input_ids, position_ids, document_ids = packed_inputs([12])

    with torch.no_grad():
        masked = model(input_ids, position_ids=position_ids, document_ids=document_ids)["logits"]
        causal = model(input_ids)["logits"]

    torch.testing.assert_close(masked, causal, atol=1e-5, rtol=1e-5)


def test_document_ids_errors():
    model = make_model()
    input_ids, _, document_ids = packed_inputs([4, 4])

    with pytest.raises(ValueError, match="document_ids must have the shape of input_ids"):
        model(input_ids, document_ids=document_ids[:, :5])
    with pytest.raises(ValueError, match="cannot be combined with a kv_cache"):
        model(input_ids, document_ids=document_ids, kv_cache=model.make_kv_cache(1))
