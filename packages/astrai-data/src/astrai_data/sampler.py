"""A deterministic shuffled sampler that shards across ranks and resumes from a sample count.

Design choices:
- All ranks read one global, endless stream of sample indices: epoch ``e`` is a permutation drawn
  from ``seed + e``, and the epochs follow each other. Global position ``g`` holds sample
  ``permutation(g // n)[g % n]``. The order therefore depends only on the seed, never on the
  number of ranks or on when a run was stopped.
- Rank ``r`` of ``W`` takes the global positions ``r, r + W, r + 2W, ...``. Every position goes to
  exactly one rank, so each sample is drawn once per epoch across all ranks. Ranks never run out at
  different times, because the stream does not end at an epoch boundary. An epoch whose length is
  not a multiple of ``W`` simply ends in the middle of a round.
- ``consumed`` counts samples drawn by all ranks together. Each index a rank yields advances it by
  ``W``, because the other ranks yield one each in lockstep. Resuming from the saved count
  continues at the next global position, with the same or a different number of ranks, and
  repeats or skips no sample.
- ``consumed`` counts the indices handed out. A DataLoader with ``num_workers > 0`` draws indices
  ahead of training, so save the count of samples actually trained on in that case.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class ShuffledSampler(Sampler[int]):
    """Endless, sharded, resumable stream of shuffled dataset indices.

    Attributes:
        num_samples: Size of the dataset.
        seed: Seed of the epoch permutations (epoch ``e`` uses ``seed + e``).
        consumed: Samples drawn so far by all ranks together; advances while iterating.
        rank: This process's rank.
        world_size: Number of ranks.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        consumed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        """Create the sampler.

        Args:
            num_samples: Size of the dataset.
            seed: Seed of the epoch permutations.
            consumed: Samples already drawn by all ranks together, e.g. from a checkpoint.
            rank: This process's rank; defaults to ``torch.distributed``'s rank if it is
                initialised, else 0.
            world_size: Number of ranks; defaults to ``torch.distributed``'s world size if it is
                initialised, else 1.

        Raises:
            ValueError: ``num_samples`` is not positive, ``consumed`` is negative, or ``rank`` is not
                in ``[0, world_size)``.
        """
        if num_samples <= 0:
            raise ValueError(f"num_samples={num_samples}: cannot sample from an empty dataset; pack some data first")
        if consumed < 0:
            raise ValueError(f"consumed={consumed} must be >= 0; pass the count saved with the checkpoint")
        distributed = dist.is_available() and dist.is_initialized()
        if world_size is None:
            world_size = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size) with world_size={world_size} >= 1")
        self.num_samples = num_samples
        self.seed = seed
        self.consumed = consumed
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        position = self.consumed + self.rank
        epoch, order = -1, None
        while True:
            if position // self.num_samples != epoch:
                epoch = position // self.num_samples
                order = self.permutation(epoch)
            self.consumed += self.world_size
            yield int(order[position % self.num_samples])
            position += self.world_size

    def permutation(self, epoch: int) -> np.ndarray:
        """Return the sample order of ``epoch``, the same on every rank, as an int64 array.

        An array takes 8 bytes a sample, a Python list of ints about 36.
        """
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=generator).numpy()

    @property
    def epoch(self) -> int:
        """The epoch of the next global position."""
        return self.consumed // self.num_samples
