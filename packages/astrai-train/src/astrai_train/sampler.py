"""A shuffled sampler that can resume in the middle of an epoch.

Each epoch is a fresh permutation drawn from ``seed + epoch``, so the order depends only on the seed
and the epoch number. Resuming from ``consumed`` samples skips exactly the samples already used,
without repeating or dropping any.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    """Endless stream of dataset indices, epoch after epoch, starting after ``consumed`` samples."""

    def __init__(self, num_samples: int, seed: int = 0, consumed: int = 0):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset; pack some data first")
        self.num_samples = num_samples
        self.seed = seed
        self.consumed = consumed

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.consumed, self.num_samples)
        while True:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=generator)
            for index in order[offset:].tolist():
                self.consumed += 1
                yield index
            epoch, offset = epoch + 1, 0

    @property
    def epoch(self) -> int:
        return self.consumed // self.num_samples
