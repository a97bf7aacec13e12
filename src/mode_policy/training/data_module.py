"""The training DataLoader: an endless, resumable, per-rank sampler over any map-style dataset."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mode_policy.training.sampler import ResumableRandomSampler


class ResumableDataModule(L.LightningDataModule):
    """Builds the loader when training starts, i.e. after a checkpoint is restored.

    The sampler starts at ``trainer.global_step`` (0 for a fresh run, the checkpoint's step on resume) and
    gives each rank its own slice of every global batch, so Lightning's ``DistributedSampler`` injection is
    not wanted (``Trainer(use_distributed_sampler=False)``).
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, num_workers: int = 0) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = ResumableRandomSampler(
            len(self.dataset),
            batch_size=self.batch_size,
            seed=self.seed,
            start_step=trainer.global_step,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
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
