"""The training DataLoader: an endless, resumable, per-rank sampler over any map-style dataset, or over a
dataset mixture drawn with given weights."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mode_policy.training.sampler import MixtureSampler, ResumableRandomSampler


class ResumableDataModule(L.LightningDataModule):
    """Builds the loader when training starts, i.e. after a checkpoint is restored.

    The sampler starts at ``trainer.global_step`` (0 for a fresh run, the checkpoint's step on resume) and
    gives each rank its own slice of every global batch, so Lightning's ``DistributedSampler`` injection is
    not wanted (``Trainer(use_distributed_sampler=False)``).

    weights: with a ``data.mixture.MixtureDataset`` (which has ``sizes``), the probability of drawing from
    each of its datasets (``MixtureSampler``); None: every item equally often (``ResumableRandomSampler``).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.weights = weights

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        position = dict(
            batch_size=self.batch_size,
            seed=self.seed,
            start_step=trainer.global_step,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        if self.weights is None:
            sampler = ResumableRandomSampler(len(self.dataset), **position)
        else:
            sampler = MixtureSampler(self.dataset.sizes, self.weights, **position)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # An explicit generator: creating the iterator then draws its worker base seed from here, not from
            # the global RNG whose state a resumed run restores.
            generator=torch.Generator().manual_seed(self.seed),
        )
