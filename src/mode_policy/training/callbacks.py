"""Lightning callbacks of a training run: EMA weights, atomic checkpoints, the loss history, the step bar."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar, WeightAveraging

from mode_policy.io import atomic_write_text
from mode_policy.policies.folders import POLICY_SUBDIR


def ema_multi_avg_fn(decay: float):
    """``AveragedModel`` multi-tensor EMA with warmup: decay_n = min(decay, (1 + n) / (10 + n)).

    n is the number of averages taken so far. The warmup keeps a short run's EMA from being dominated by the
    random initialisation (with a fixed 0.999, 1000 steps leave 37% of the initial weights in the average).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        n = int(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)

    return update


class EMA(WeightAveraging):
    """Lightning's ``WeightAveraging`` with a warmed-up EMA, updated after every optimizer step.

    Checkpoints hold the EMA weights as ``state_dict`` and the raw weights as ``current_model_state``
    (Lightning's layout, restored exactly on resume); when training ends the model holds the EMA weights,
    which are the ones evaluated and exported.
    """

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__(multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay


class AtomicCheckpoint(Checkpoint):
    """Writes ``dirpath/last.ckpt`` every ``every_n_steps`` optimizer steps and at the last step.

    Each save goes to a temporary file first and is renamed over ``last.ckpt`` (``os.replace`` is atomic),
    so an interruption at any moment leaves a complete checkpoint. It runs after every other callback's
    ``on_train_batch_end`` (Lightning moves checkpoint callbacks last), so the EMA update of this step and a
    time-budget stop decided in this step are already included.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.last_saved_step: int | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        step = trainer.global_step
        final = trainer.max_steps is not None and 0 < trainer.max_steps <= step
        if step % self.every_n_steps == 0 or final or trainer.should_stop:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        if self.last_saved_step == trainer.global_step:
            return
        tmp = self.dirpath / f".last.ckpt.tmp-{os.getpid()}"
        # Every rank builds the dict; rank 0 writes it, then all ranks sync.
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.last_path)
        trainer.strategy.barrier("AtomicCheckpoint.save")
        self.last_saved_step = trainer.global_step


class LossHistory(L.Callback):
    """Averages of the logged training metrics over windows of ``every`` steps, kept in the checkpoint.

    rows: list of {"step": int, "loss": float, "lr": float, ...}; read by ``training.curves``.
    """

    KEYS = ("train/loss", "train/diffusion", "train/load_balance", "train/lr")

    def __init__(self, every: int = 10) -> None:
        self.every = max(1, every)
        self.rows: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._count = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        metrics = trainer.callback_metrics
        for key in self.KEYS:
            if key in metrics:
                self._sums[key] = self._sums.get(key, 0.0) + float(metrics[key])
        self._count += 1
        if trainer.global_step % self.every == 0:
            row = {"step": trainer.global_step}
            row.update({key.removeprefix("train/"): total / self._count for key, total in self._sums.items()})
            self.rows.append(row)
            self._sums, self._count = {}, 0

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "sums": self._sums, "count": self._count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])
        self._sums = dict(state_dict["sums"])
        self._count = int(state_dict["count"])


class ValidationLoss(L.Callback):
    """The diffusion loss of the EMA weights on held-out windows, every ``every`` steps and at the end.

    windows: a map-style dataset of held-out samples (e.g. ``ActionChunkDataset`` over validation
    episodes); the first ``max_samples`` are batched once, and every evaluation uses the same sigmas and
    noise (generators seeded per batch), so the curve moves only with the weights. Each value goes into
    ``history``'s row of that step as ``val_diffusion`` (metrics.csv, learning_curve.png, the checkpoint).
    Must come after :class:`EMA` and ``history`` in the callback list.
    """

    def __init__(
        self,
        windows: Any,
        history: LossHistory,
        every: int,
        *,
        max_samples: int = 1024,
        batch_size: int = 256,
    ) -> None:
        from torch.utils.data import DataLoader

        if every < 1:
            raise ValueError(f"validation every must be >= 1 step, got {every}")
        if len(windows) == 0:
            raise ValueError("the validation set has no windows: give it at least one whole episode")
        self.every, self.history = every, history
        count = min(len(windows), max_samples)
        subset = torch.utils.data.Subset(windows, range(count))
        self.batches = list(DataLoader(subset, batch_size=min(batch_size, count), shuffle=False))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        final = trainer.max_steps is not None and 0 < trainer.max_steps <= step
        if step % self.every and not final and not trainer.should_stop:
            return
        averaging = [c for c in trainer.callbacks if isinstance(c, WeightAveraging)]
        average = getattr(averaging[0], "_average_model", None) if averaging else None
        policy = (average.module if average is not None else pl_module).policy
        was_training = policy.training
        policy.eval()
        with torch.no_grad():
            losses = [
                float(policy.compute_loss(batch, generator=torch.Generator().manual_seed(i))[1]["diffusion"])
                for i, batch in enumerate(self.batches)
            ]
        policy.train(was_training)
        value = sum(losses) / len(losses)
        rows = self.history.rows
        if rows and rows[-1]["step"] == step:
            rows[-1]["val_diffusion"] = value
        else:
            rows.append({"step": step, "val_diffusion": value})


class FitScheduleToBudget(L.Callback):
    """Fits the run's length and its cosine decay to a wall-clock budget of ``seconds``.

    A speed probe before training misjudges the real loop (data loading, logging, checkpoints, other work on
    the cores), so a run planned in steps either stops early on its time budget with the cosine unfinished
    or ends with time left. Every ``every`` steps this re-plans: the steps that still fit at the rate
    measured since the first re-plan (``margin`` of the time left, the export's ``reserve_seconds``
    kept aside) become the run's ``max_steps`` and the cosine's ``total_steps``. The learning rate stays
    continuous: only the remaining part of the curve stretches or shrinks. For runs that are not resumed
    (the quickstart); a run planned in steps keeps its own length.
    """

    def __init__(
        self, seconds: float, *, every: int = 50, margin: float = 0.98, reserve_seconds: float = 5.0,
        clock: Any = time.perf_counter,
    ) -> None:  # fmt: skip
        if seconds <= 0:
            raise ValueError(f"the time budget must be positive, got {seconds} s")
        self.seconds, self.every, self.margin, self.reserve = seconds, every, margin, reserve_seconds
        self.clock = clock  # seconds, monotonic; a test passes a fake one
        self._started = 0.0
        self._first: tuple[float, int] | None = None
        self.plans: list[tuple[int, int]] = []  # (at step, planned total steps)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = self.clock()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every:
            return
        now = self.clock()
        if self._first is None:  # the first steps warm up the allocator; measure from here
            self._first = (now, step)
            return
        rate = (step - self._first[1]) / (now - self._first[0])
        left = self.seconds - (now - self._started) - self.reserve
        total = max(step + 1, step + int(self.margin * rate * left))
        trainer.fit_loop.epoch_loop.max_steps = total
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.lr_lambdas = [_with_total_steps(fn, total) for fn in scheduler.lr_lambdas]
        self.plans.append((step, total))


def _with_total_steps(schedule: Any, total_steps: int) -> Any:
    """The same ``functools.partial`` schedule ending at ``total_steps``."""
    from functools import partial

    if not isinstance(schedule, partial) or "total_steps" not in schedule.keywords:
        raise TypeError(f"cannot refit the learning-rate schedule {schedule!r}: it has no total_steps")
    return partial(schedule.func, *schedule.args, **{**schedule.keywords, "total_steps": total_steps})


class StepProgressBar(TQDMProgressBar):
    """A tqdm bar over optimizer steps (``n / max_steps``), not over epochs of an endless sampler."""

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("train")
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        bar = getattr(self, "_train_progress_bar", None)
        if bar is not None and bar.total != trainer.max_steps:  # re-planned (FitScheduleToBudget)
            bar.total = trainer.max_steps
        super().on_train_batch_end(trainer, *args)


class ExportOnTrainEnd(L.Callback):
    """When training ends: the EMA policy to ``RUN/policy``, the curve, and a summary (rank 0 only).

    Must come after :class:`EMA` in the callback list: EMA's ``on_train_end`` puts the averaged weights
    into the model first.
    """

    def __init__(self, run_dir: str | Path, history: LossHistory) -> None:
        self.run_dir = Path(run_dir)
        self.history = history
        self._start_time = 0.0
        self._start_step = 0
        self.summary: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_time = time.perf_counter()
        self._start_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from mode_policy.training.curves import plot_learning_curve, write_metrics_csv

        seconds = time.perf_counter() - self._start_time
        steps = trainer.global_step - self._start_step
        pl_module.policy.save_pretrained(self.run_dir / POLICY_SUBDIR)
        rows = self.history.rows
        if rows:
            write_metrics_csv(rows, self.run_dir / "metrics.csv")
            plot_learning_curve(rows, self.run_dir / "learning_curve.png", title=self.run_dir.name)
        self.summary = {
            "global_step": trainer.global_step,
            "steps_this_session": steps,
            "seconds_this_session": round(seconds, 2),
            "steps_per_second": round(steps / seconds, 3) if seconds > 0 else None,
            "final_loss": rows[-1].get("loss") if rows else None,
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
        }
        atomic_write_text(self.run_dir / "train_summary.json", json.dumps(self.summary, indent=2) + "\n")
