"""Run small CPU operations on one intra-op thread.

With ``OMP_WAIT_POLICY=PASSIVE``, which steadies PyTorch on shared machines, OpenMP's worker threads
sleep between parallel regions. Every operation that splits its work across them then pays for
waking them: about 70 us per call on the project's 2-vCPU Xeon (SDPA of one decoding step took
80 us on two threads and 9 us on one). Decoding therefore runs such small operations on one
thread, and also matrix products whose weights are small (see SMALL_MATRIX_BYTES); larger
products keep every thread.

NOTE: PyTorch gives a thread the count last set anywhere in the process when the thread first runs
parallel work, so a thread that starts its PyTorch work while a block runs keeps a count of one.
Decoding spends most of its time at one thread: of 200 threads started while a Scheduler decoded,
46-63 kept a count of one. Start threads that run PyTorch before decoding, or set their count in them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

# Below this many multiply-adds, one thread should finish before a sleeping second one wakes.
# An estimate from the 70 us wake-up above, not a measured crossover.
SMALL_WORK = 1 << 21

# A matrix product runs on one thread when its weight is at most this many bytes and its
# multiply-adds (rows x weight elements) are at most SMALL_MATRIX_WORK for its dtype. Such a
# product mostly streams its weight from cache, and one core does that before the second wakes.
# NOTE: measured on the machine above, decoding the ~50M preset: batch 1 float32 went from 16.5 to
# 15.1 ms per token, batch 1 bf16 from 14.6 to 10.0 ms and batch 8 bf16 from 16.3 to 11.9 ms.
# float32 at batch 8 with every layer product on one thread was 1 ms slower, hence its lower bound.
SMALL_MATRIX_BYTES = 1 << 22
SMALL_MATRIX_WORK = {torch.bfloat16: 1 << 24}  # other dtypes: SMALL_WORK

# Activations (batch x tokens x width) up to this many elements get elementwise work on one thread.
# NOTE: on the machine above this made a 256-token float32 prefill of the ~50M preset 1.14x faster.
# It left the ~7M preset and bf16 within 5%. Other shapes are not measured.
SMALL_ACTIVATIONS = 1 << 17


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Set PyTorch's intra-op thread count to ``count`` inside the block, and restore it after."""
    previous = torch.get_num_threads()
    if count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def one_thread(enabled: bool = True) -> AbstractContextManager[None]:
    """Limit PyTorch's CPU operations to one thread inside the block, when ``enabled``."""
    return intra_op_threads(1) if enabled else nullcontext()
