"""ShuffledSampler: epoch permutations, sharding across ranks, and resuming without repeats or gaps."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest
import torch
from astrai_data import ShuffledSampler


def take(sampler: ShuffledSampler, count: int) -> list[int]:
    return list(islice(iter(sampler), count))


def global_stream(num_samples: int, seed: int, world_size: int, rounds: int, consumed: int = 0) -> list[int]:
    """Interleave the ranks' indices round by round, the order a synchronous job consumes them."""
    samplers = [ShuffledSampler(num_samples, seed, consumed, rank, world_size) for rank in range(world_size)]
    streams = [take(sampler, rounds) for sampler in samplers]
    return [index for round_ in zip(*streams, strict=True) for index in round_]


def test_each_epoch_is_the_seeded_permutation() -> None:
    sampler = ShuffledSampler(10, seed=3)

    indices = take(sampler, 30)

    for epoch in range(3):
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        assert indices[epoch * 10 : (epoch + 1) * 10] == expected
    assert sampler.consumed == 30
    assert sampler.epoch == 3
    assert take(ShuffledSampler(10, seed=4), 10) != indices[:10]


@pytest.mark.parametrize(("num_samples", "world_size"), [(12, 3), (10, 4), (5, 2), (3, 4)])
def test_ranks_share_each_epoch_exactly_once(num_samples: int, world_size: int) -> None:
    epochs = 3
    rounds = -(-num_samples * epochs // world_size)  # enough rounds to cover three epochs

    stream = global_stream(num_samples, seed=0, world_size=world_size, rounds=rounds)

    assert stream == take(ShuffledSampler(num_samples, seed=0), len(stream))
    for epoch in range(epochs):
        assert Counter(stream[epoch * num_samples : (epoch + 1) * num_samples]) == Counter(range(num_samples))


def test_resume_continues_without_repeat_or_gap() -> None:
    full = take(ShuffledSampler(7, seed=1), 40)

    first = ShuffledSampler(7, seed=1)
    part = take(first, 13)
    rest = take(ShuffledSampler(7, seed=1, consumed=first.consumed), 27)

    assert first.consumed == 13
    assert part + rest == full


@pytest.mark.parametrize(("before", "after"), [(2, 2), (2, 3), (4, 1)])
def test_resume_on_another_number_of_ranks(before: int, after: int) -> None:
    full = take(ShuffledSampler(11, seed=5), 48)
    samplers = [ShuffledSampler(11, seed=5, rank=rank, world_size=before) for rank in range(before)]
    streams = [take(sampler, 6) for sampler in samplers]
    consumed = samplers[0].consumed

    resumed = global_stream(11, seed=5, world_size=after, rounds=(48 - consumed) // after, consumed=consumed)

    assert all(sampler.consumed == consumed == 6 * before for sampler in samplers)
    assert [index for round_ in zip(*streams, strict=True) for index in round_] == full[:consumed]
    assert resumed == full[consumed : consumed + len(resumed)]


def test_data_loader_draws_batches_and_counts() -> None:
    sampler = ShuffledSampler(8, seed=0)
    loader = torch.utils.data.DataLoader(list(range(100, 108)), batch_size=3, sampler=sampler)

    batches = [batch.tolist() for batch in islice(iter(loader), 3)]

    assert sampler.consumed == 9
    assert [index - 100 for batch in batches for index in batch] == take(ShuffledSampler(8), 9)


def test_defaults_without_distributed_and_errors() -> None:
    sampler = ShuffledSampler(4)

    assert (sampler.rank, sampler.world_size, sampler.consumed) == (0, 1, 0)
    with pytest.raises(ValueError, match="num_samples=0: cannot sample from an empty dataset"):
        ShuffledSampler(0)
    with pytest.raises(ValueError, match="consumed=-1 must be >= 0"):
        ShuffledSampler(4, consumed=-1)
    with pytest.raises(ValueError, match=r"rank=2 must be in \[0, world_size\) with world_size=2"):
        ShuffledSampler(4, rank=2, world_size=2)
