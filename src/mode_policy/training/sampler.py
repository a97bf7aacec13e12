"""Resumable, rank-aware, endless shuffling samplers: over one dataset, and over a mixture of datasets.

The order of samples depends only on (seed, data epoch): data epoch ``e`` is a permutation of all
``num_samples`` indices drawn from ``numpy.random.default_rng([seed, e])``. Concatenating the epochs gives
one global stream; optimizer step ``t`` consumes stream positions ``[t * W * B, (t + 1) * W * B)``
(``W`` ranks, ``B`` per-rank batch) and rank ``r`` takes the ``r``-th block of ``B`` of them.

Because position follows from the optimizer step alone, resuming at step ``t`` only needs ``start_step=t``:
no sampler state has to be checkpointed, prefetching cannot make it drift, and a resumed run sees exactly
the batches an uninterrupted run would have seen. The stream is endless (no ``__len__``), so training
length is set by the number of steps, never by epochs.

``MixtureSampler`` keeps that design for a mixture of datasets drawn with given probabilities (below).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from mode_policy.data.mixture import mixture_weights

STREAM_SLICE = 1 << 16  # indices turned into Python ints at a time


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
        _check_position(batch_size, start_step, rank, world_size)
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
            # In slices: a Python list of a 20M-frame epoch would take ~0.7 GB; the int64 order takes 160 MB.
            for start in range(offset, self.num_samples, STREAM_SLICE):
                yield from order[start : start + STREAM_SLICE].tolist()
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world_size
        stream = self._stream(self.start_step * global_batch)
        while True:
            block = [next(stream) for _ in range(global_batch)]
            yield from block[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


class MixtureSampler(Sampler[int]):
    """Yields indices of a ``MixtureDataset`` forever, drawing dataset ``d`` with probability ``weights[d]``.

    sizes: (N,) items per dataset, in the mixture's order (the global index of dataset d's item i is
    ``sum(sizes[:d]) + i``); weights: N numbers >= 0, not all 0 (normalised by
    ``data.mixture.mixture_weights``).
    Optimizer step ``t``'s global batch of ``G = W * B`` draws is a pure function of (seed, t):

    - how many come from each dataset: ``counts[t] = multinomial(G, weights)``, drawn for ``BLOCK`` steps at
      once from ``default_rng([seed, 1, t // BLOCK])``, so the counts consumed before any step are summed
      from a few blocks (resuming at step 1,000,000 draws about a thousand of them);
    - which: dataset d's next ``counts[t][d]`` windows from its own endless stream of epoch permutations
      (a ``ResumableRandomSampler`` stream of that dataset, seeded by (seed, d): no window repeats inside
      one of its epochs), starting at the number it has given before step t;
    - in which order: the G indices shuffled with ``default_rng([seed, 2, t])``; rank ``r`` takes the
      ``r``-th block of ``B``, so ranks never share a draw.

    As with ``ResumableRandomSampler``, resuming needs only ``start_step``. Use with
    ``DataLoader(batch_size=batch_size, drop_last=True)``.
    """

    BLOCK = 1024  # steps whose dataset counts one generator draws

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        *,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        self.weights = mixture_weights(weights, len(sizes))
        empty = [d for d in range(len(sizes)) if sizes[d] < 1 and self.weights[d] > 0]
        if empty:
            raise ValueError(f"dataset(s) {empty} of the mixture have no windows but a weight above 0")
        _check_position(batch_size, start_step, rank, world_size)
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def block_counts(self, block: int) -> np.ndarray:
        """(BLOCK, N) int64: the draws from each dataset at steps ``block * BLOCK`` to
        ``(block + 1) * BLOCK - 1``."""
        rng = np.random.default_rng([self.seed, 1, block])
        return rng.multinomial(self.global_batch, self.weights, size=self.BLOCK).astype(np.int64)

    def consumed(self, step: int) -> np.ndarray:
        """(N,) int64: draws from each dataset before optimizer step ``step``."""
        block, within = divmod(step, self.BLOCK)
        total = np.zeros(len(self.sizes), dtype=np.int64)
        for earlier in range(block):
            total += self.block_counts(earlier).sum(axis=0)
        return total + self.block_counts(block)[:within].sum(axis=0)

    def _dataset_stream(self, dataset: int, position: int) -> Iterator[int]:
        """Dataset ``dataset``'s local indices from stream position ``position`` on."""
        seed = int(np.random.SeedSequence([self.seed, 3, dataset]).generate_state(1)[0])
        return ResumableRandomSampler(int(self.sizes[dataset]), batch_size=1, seed=seed)._stream(position)

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        consumed = self.consumed(step)
        streams = [
            self._dataset_stream(d, int(consumed[d])) if self.sizes[d] > 0 else iter(())
            for d in range(len(self.sizes))
        ]
        block, counts = None, None
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        while True:
            if step // self.BLOCK != block:
                block = step // self.BLOCK
                counts = self.block_counts(block)
            parts = [
                self.offsets[d] + np.fromiter(itertools.islice(stream, int(n)), dtype=np.int64, count=int(n))
                for d, (stream, n) in enumerate(zip(streams, counts[step % self.BLOCK], strict=True))
            ]
            batch = np.concatenate(parts)[
                np.random.default_rng([self.seed, 2, step]).permutation(self.global_batch)
            ]
            yield from batch[mine].tolist()
            step += 1


def _check_position(batch_size: int, start_step: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
