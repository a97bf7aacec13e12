"""The LightningModule that trains any policy exposing ``compute_loss(batch) -> (loss, logs)``.

It owns what is specific to one optimisation step: the loss, logging, the divergence check, the optimizer
and learning-rate schedule, and the per-rank RNG state that makes a resumed run continue exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from mode_policy.keys import ACTION_KEY
from mode_policy.training.rng import capture_rng_state, restore_rng_state
from mode_policy.training.schedule import warmup_cosine

RNG_KEY = "mode_policy_rng_states"


class TrainingDivergedError(FloatingPointError):
    """The loss or the gradient became NaN or infinite; the run stopped before the bad update."""


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay (per optimizer step)."""

    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    total_steps: int = 1000
    min_lr_ratio: float = 0.1


class PolicyModule(L.LightningModule):
    """Wraps ``policy`` (an ``nn.Module`` with ``compute_loss``) for ``lightning.Trainer``.

    seed: fresh runs reseed every rank with (seed, rank) at the start of training, so ranks draw different
    noise; resumed runs restore each rank's saved generator state instead.
    checkpoint_hint: where the run's checkpoint is written; the divergence message names it when it exists
    (the last good checkpoint) and says to start anew when it does not.
    check_grad_finite: stop on a non-finite gradient norm too (off for fp16, where the grad scaler skips
    such steps on purpose).
    """

    def __init__(
        self,
        policy: nn.Module,
        optim: OptimConfig,
        *,
        seed: int = 0,
        checkpoint_hint: str = "",
        check_grad_finite: bool = True,
    ) -> None:
        super().__init__()
        if not callable(getattr(policy, "compute_loss", None)):
            raise TypeError(f"{type(policy).__name__} has no compute_loss(batch) -> (loss, logs) method")
        self.policy = policy
        self.optim = optim
        self.seed = seed
        self.checkpoint_hint = checkpoint_hint
        self.check_grad_finite = check_grad_finite
        self._pending_rng: list[dict[str, Any]] | None = None

    # Steps ------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logs = self.policy.compute_loss(batch)
        # Every rank takes the same decision, so no rank waits forever in a collective another rank left.
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            self._diverged(f"loss is {loss.item()}")
        batch_size = len(batch[ACTION_KEY]) if ACTION_KEY in batch else None
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        for name, value in (logs or {}).items():
            self._log_value(name, value, batch_size)
        return loss

    def _log_value(self, name: str, value: Any, batch_size: int | None) -> None:
        """Scalars as ``train/<name>``; a (layers, experts) table as ``train/<name>/layer<l>/expert<e>``."""
        if name == "loss":
            return
        value = torch.as_tensor(value).detach().float()
        if value.numel() == 1:
            self.log(f"train/{name}", value.reshape(()), batch_size=batch_size)
        elif value.dim() == 2 and self.trainer.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            # Per-layer expert usage: many scalars, so only on logging steps.
            for layer, row in enumerate(value):
                for expert, share in enumerate(row):
                    self.log(f"train/{name}/layer{layer}/expert{expert}", share, batch_size=batch_size)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        self.log("train/grad_norm", norm)
        # Gradients are already all-reduced here, so every rank sees the same norm.
        if self.check_grad_finite and not bool(torch.isfinite(norm)):
            self._diverged(f"gradient norm is {norm.item()}")

    def _diverged(self, what: str) -> None:
        lower = f"{self.optim.lr / 10:g}"
        if self.checkpoint_hint and Path(self.checkpoint_hint).is_file():
            recover = (
                f"the last good checkpoint is {self.checkpoint_hint}: continue from it with a lower learning "
                f"rate (--resume --lr {lower}; in Python resume=True, lr={lower})"
            )
        else:
            recover = (
                "no checkpoint was written before it, so there is nothing to resume: start the run again "
                f"with a lower learning rate (--lr {lower}; in Python lr={lower})"
            )
        raise TrainingDivergedError(
            f"training diverged at step {self.trainer.global_step + 1}: {what}; stopped before applying the "
            f"update; {recover}, or train in float32 (--precision 32-true)"
        )

    # Optimizer ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for param in self.policy.parameters():
            if param.requires_grad:
                # Matrices decay; biases, norm gains and 1-D embeddings do not (standard transformer recipe).
                (decay if param.dim() >= 2 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, betas=self.optim.betas)
        schedule = partial(
            warmup_cosine,
            warmup_steps=self.optim.warmup_steps,
            total_steps=self.optim.total_steps,
            min_lr_ratio=self.optim.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # RNG state ---------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self._apply_learning_rate()
        if self._pending_rng is not None:
            states, self._pending_rng = self._pending_rng, None
            rank, world = self.trainer.global_rank, self.trainer.world_size
            if len(states) != world:
                raise RuntimeError(
                    f"the checkpoint holds RNG states of {len(states)} ranks but this run has {world}; "
                    "resume with the same --devices and --num-nodes as the interrupted run"
                )
            restore_rng_state(states[rank])
        else:
            L.seed_everything(self.seed * 1000 + self.trainer.global_rank, verbose=False)

    def _apply_learning_rate(self) -> None:
        """A resumed run may be given a new peak learning rate (the fix for a diverged run); the scheduler
        restored from the checkpoint still holds the old one, so it is replaced here."""
        for scheduler_config in self.trainer.lr_scheduler_configs:
            scheduler = scheduler_config.scheduler
            if all(base == self.optim.lr for base in scheduler.base_lrs):
                continue
            scheduler.base_lrs = [self.optim.lr] * len(scheduler.base_lrs)
            for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
                group["initial_lr"] = self.optim.lr
                group["lr"] = self.optim.lr * factor(scheduler.last_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = capture_rng_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint[RNG_KEY] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied in on_train_start, after everything between loading and the first step has run.
        self._pending_rng = checkpoint.get(RNG_KEY)
