"""A resumable, rank-aware, endless shuffling sampler.

The order of samples depends only on (seed, data epoch): data epoch ``e`` is a permutation of all
``num_samples`` indices drawn from ``numpy.random.default_rng([seed, e])``. Concatenating the epochs gives
one global stream; optimizer step ``t`` consumes stream positions ``[t * W * B, (t + 1) * W * B)``
(``W`` ranks, ``B`` per-rank batch) and rank ``r`` takes the ``r``-th block of ``B`` of them.

Because position follows from the optimizer step alone, resuming at step ``t`` only needs ``start_step=t``:
no sampler state has to be checkpointed, prefetching cannot make it drift, and a resumed run sees exactly
the batches an uninterrupted run would have seen. The stream is endless (no ``__len__``), so training
length is set by the number of steps, never by epochs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    """Yields dataset indices forever, starting at optimizer step ``start_step``.

    Use with ``DataLoader(batch_size=batch_size, drop_last=True)`` so that each yielded block of
    ``batch_size`` indices is exactly one batch of this rank.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError("the training dataset is empty; collect or point at a dataset with frames")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """(num_samples,) int64: the order of data epoch ``epoch``."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def _stream(self, position: int) -> Iterator[int]:
        """Global stream of indices from ``position`` on."""
        epoch, offset = divmod(position, self.num_samples)
        while True:
            order = self.epoch_permutation(epoch)
            yield from order[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world_size
        stream = self._stream(self.start_step * global_batch)
        while True:
            block = [next(stream) for _ in range(global_batch)]
            yield from block[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
