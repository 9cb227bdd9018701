import math

import pytest
import torch

from astrai_infer import apply_top_k, apply_top_p, sample_next_token
from astrai_infer.sampling import apply_min_p, apply_penalties


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_temperature_zero_is_argmax_and_ignores_filters():
    logits = torch.randn(4, 50, generator=seeded())
    expected = logits.argmax(-1)
    assert torch.equal(sample_next_token(logits, temperature=0), expected)
    assert torch.equal(sample_next_token(logits, temperature=0, top_k=3, top_p=0.1), expected)


def test_top_k_one_is_greedy_for_any_seed():
    logits = torch.randn(8, 50, generator=seeded())
    for seed in range(5):
        assert torch.equal(sample_next_token(logits, top_k=1, generator=seeded(seed)), logits.argmax(-1))


def test_tiny_top_p_is_greedy_for_any_seed():
    logits = torch.randn(8, 50, generator=seeded())
    for seed in range(5):
        assert torch.equal(sample_next_token(logits, top_p=1e-6, generator=seeded(seed)), logits.argmax(-1))


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(4, 50, generator=seeded())
    first = [sample_next_token(logits, generator=seeded(7)) for _ in range(2)]
    assert torch.equal(first[0], first[1])


def test_samples_stay_inside_the_top_k():
    logits = torch.randn(1, 50, generator=seeded())
    allowed = set(torch.topk(logits[0], 3).indices.tolist())
    random = seeded(1)
    drawn = {int(sample_next_token(logits, temperature=5.0, top_k=3, generator=random)) for _ in range(200)}
    assert drawn == allowed


def test_top_k_filter_edge_cases():
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0]])
    filtered = apply_top_k(logits, 2)
    assert torch.isfinite(filtered).tolist() == [[True, False, True, False, False]]
    filtered = apply_top_k(logits, 3)
    assert torch.isfinite(filtered).tolist() == [[True, False, True, True, False]]
    assert apply_top_k(logits, 0) is logits
    assert apply_top_k(logits, 5) is logits


def test_top_p_smallest_set_reaching_mass():
    logits = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()
    assert torch.isfinite(apply_top_p(logits, 0.6)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(apply_top_p(logits, 0.4)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(apply_top_p(logits, 0.99)).all()


def test_top_p_works_on_unsorted_rows_independently():
    logits = torch.tensor([[0.1, 0.2, 0.7], [0.7, 0.2, 0.1]]).log()
    surviving = torch.isfinite(apply_top_p(logits, 0.75)).tolist()
    assert surviving == [[False, True, True], [True, True, False]]


def test_top_p_always_keeps_one_token():
    uniform = torch.zeros(2, 10)
    assert torch.isfinite(apply_top_p(uniform, 1e-9)).sum(-1).tolist() == [1, 1]
    # One token has all the probability mass.
    peaked = torch.tensor([[0.0, -math.inf, -math.inf]])
    assert torch.isfinite(apply_top_p(peaked, 0.5)).tolist() == [[True, False, False]]


def test_top_p_one_leaves_logits_unchanged():
    logits = torch.randn(2, 10, generator=seeded())
    assert apply_top_p(logits, 1.0) is logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampling_returns_int64_ids_per_row(dtype):
    logits = torch.randn(3, 20, generator=seeded()).to(dtype)
    ids = sample_next_token(logits, temperature=0.8, top_k=5, top_p=0.9, generator=seeded())
    assert ids.shape == (3,)
    assert ids.dtype == torch.int64
    assert ((ids >= 0) & (ids < 20)).all()


def test_tiny_temperature_acts_greedy():
    logits = torch.tensor([[1.0, 3.0, 2.0], [-5.0, -1.0, -2.0]])
    ids = sample_next_token(logits, temperature=1e-39, generator=torch.Generator().manual_seed(0))
    assert ids.tolist() == [1, 1]


def test_min_p_keeps_tokens_near_the_top():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = apply_min_p(logits, 0.25)  # threshold 0.125: drops only the 0.05 token
    assert torch.isinf(kept[0, 3])
    assert torch.isfinite(kept[0, :3]).all()
    assert torch.equal(apply_min_p(logits, 0.0), logits)
    for seed in range(5):  # min_p close to 1 leaves only the top token
        assert int(sample_next_token(logits, min_p=0.99, generator=seeded(seed))) == 0


def test_repetition_penalty_lowers_negative_and_positive_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    penalised = apply_penalties(logits, seen, None, repetition_penalty=2.0)
    assert penalised.tolist() == [[1.0, -4.0, 1.0, -1.0]]  # a negative logit moves down, not up


def test_presence_and_frequency_penalties_use_output_counts():
    logits = torch.zeros(1, 3)
    counts = torch.tensor([[0.0, 1.0, 3.0]])
    penalised = apply_penalties(logits, None, counts, presence_penalty=0.5, frequency_penalty=0.25)
    assert penalised.tolist() == [[0.0, -0.75, -1.25]]
    assert torch.equal(apply_penalties(logits, None, counts), logits)


@pytest.mark.parametrize("temperature", [1e-7, 1e-320])
def test_denormal_temperature_is_greedy(temperature):
    logits = torch.tensor([[0.5, 2.0, 1.0]])
    assert sample_next_token(logits, temperature=temperature).tolist() == [1]


def test_top_p_rounding_to_zero_keeps_best_token():
    logits = torch.tensor([[0.5, 2.0, 1.0]])
    ids = sample_next_token(logits, temperature=1.0, top_p=1e-46, generator=torch.Generator().manual_seed(0))
    assert ids.tolist() == [1]
