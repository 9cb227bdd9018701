"""Run small CPU operations on one intra-op thread.

With ``OMP_WAIT_POLICY=PASSIVE``, which steadies PyTorch on shared machines, OpenMP's worker threads
sleep between parallel regions. Every operation that splits its work across them then pays for
waking them: about 70 us per call on the project's 2-vCPU Xeon (SDPA of one decoding step took
80 us on two threads and 9 us on one). Decoding therefore runs such small operations on one
thread and keeps every thread for the matrix products.

``torch.set_num_threads`` is process-wide, so another thread running PyTorch operations at the
same moment also gets one thread until the block ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Below this many multiply-adds, one thread should finish before a sleeping second one wakes.
# An estimate from the 70 us wake-up above, not a measured crossover.
SMALL_WORK = 1 << 21


@contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """Limit PyTorch's CPU operations to one thread inside the block, when ``enabled``."""
    threads = torch.get_num_threads()
    if not enabled or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
