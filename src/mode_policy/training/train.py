"""``train()``: any registered policy type on a LeRobot dataset with Lightning, resumable step for step.

run = train("data/mt10", "runs/mt10", steps=20_000, batch_size=256, seed=0)   # policy_type="mode"
policy = load_policy(run)                                                     # the EMA weights
run = train(["data/a", "data/b"], "runs/ab", dataset_weights=[0.7, 0.3])      # a dataset mixture

Run directory::

    RUN/train_config.json       everything needed to resume (datasets, settings, policy config with its type)
    RUN/checkpoints/last.ckpt   written atomically every ``checkpoint_every`` steps and at the end
    RUN/tb/                     TensorBoard: loss, lr, grad norm, load balance, per-layer expert usage
    RUN/policy/                 the EMA policy (``save_pretrained``), written when training ends
    RUN/metrics.csv, RUN/learning_curve.png, RUN/train_summary.json
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.loggers import TensorBoardLogger

from mode_policy.data.stats import constant_dimensions
from mode_policy.io import atomic_write_text, check_output_dir
from mode_policy.keys import ACTION_KEY, STATE_KEY
from mode_policy.messages import warn
from mode_policy.policies.config import parse_overrides
from mode_policy.policies.folders import CHECKPOINT, RUN_SETTINGS
from mode_policy.policies.registry import DEFAULT_TYPE, get_policy_class, policy_config_from_dict
from mode_policy.training.callbacks import (
    EMA,
    AtomicCheckpoint,
    ExportOnTrainEnd,
    LossHistory,
    StepProgressBar,
    ValidationLoss,
)
from mode_policy.training.data_module import ResumableDataModule
from mode_policy.training.datasets import (
    open_data,
    policy_stats,
    requested_data,
    sampling_weights,
    training_items,
    where,
)
from mode_policy.training.finetune import (
    check_freeze_names,
    finetune_config,
    freeze_groups,
    load_initial_weights,
    source_policy,
)
from mode_policy.training.module import OptimConfig, PolicyModule
from mode_policy.training.settings import (
    TrainSettings,
    check_settings,
    new_settings,
    resolve_precision,
    resumed_data,
    resumed_settings,
)

# What marks a folder as a training run of ours (one that --out may point into again).
RUN_MARKERS = (RUN_SETTINGS, "checkpoints")


def train(
    dataset_dir: str | Path | list[str | Path],
    out_dir: str | Path,
    *,
    policy_type: str = DEFAULT_TYPE,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    policy_overrides: dict[str, Any] | list[str] | None = None,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str = "auto",
    accelerator: str = "auto",
    lr: float | None = None,
    weight_decay: float | None = None,
    warmup_steps: int | None = None,
    min_lr_ratio: float | None = None,
    grad_clip: float | None = None,
    ema_decay: float | None = None,
    checkpoint_every: int | None = None,
    log_every: int | None = None,
    max_minutes: float | None = None,
    num_workers: int = 0,
    progress: bool = True,
    extra_callbacks: list[Callback] | None = None,
    val_dataset: str | Path | None = None,
    val_every: int | None = None,
    init_from: str | Path | None = None,
    freeze: str | list[str] | None = None,
    extend_tasks: bool = False,
    dataset_weights: list[float] | None = None,
    normalization: str | None = None,
    rename: dict[str, str] | list[str] | None = None,
    drop: list[str] | None = None,
) -> Path:
    """Train a policy on the LeRobot dataset at ``dataset_dir``; returns the run directory ``out_dir``.

    dataset_dir: one dataset folder, or a list of them: a mixture (``mode_policy.data.mixture``), whose tasks
    merge into one vocabulary (the same instruction is the same task) and whose datasets must agree on fps
    and features. dataset_weights: the probability of drawing from each (any positive scale, normalised;
    default proportional to their frames); every batch is drawn by ``MixtureSampler``. normalization:
    ``"pooled"`` (default: each feature's stats merged over the mixture, weighted by dataset_weights) or
    ``"per-dataset"`` (each sample normalised with its own dataset's stats; the policy keeps them all and
    normalises with the first dataset's at inference, ``use_dataset_stats(name)`` picks another). rename:
    ``{old: new}`` or ``["old=new"]``, feature keys renamed in the datasets that have them; drop: feature
    keys left out (e.g. a camera only one dataset has). The data settings are saved in train_config.json: a
    resumed run needs the same dataset list and takes the rest from there.

    policy_type: a registered policy type that can learn from a dataset (has ``compute_loss``; default
    "mode"); a resumed run keeps its own. steps: optimizer steps in total (default 20000); batch_size: per
    device (default 256); lr: peak AdamW learning rate (3e-4) with ``warmup_steps`` of linear warmup
    (min(500, steps // 10)) then cosine decay to ``min_lr_ratio * lr``; grad_clip: max gradient norm;
    ema_decay: of the exported EMA weights.
    resume: continue from ``out_dir/checkpoints/last.ckpt`` with the same step, weights, optimizer, EMA,
    data order and RNG state. Settings left as None are then taken from ``out_dir/train_config.json``; a
    given one that differs raises (``steps`` may grow: training continues, the cosine stretches; ``lr``
    may change).
    policy_overrides: ``{"denoiser.width": 64}`` or ``["denoiser.width=64"]`` (the type's
    ``override_keys()``). devices / num_nodes / strategy / accelerator: passed to ``lightning.Trainer``
    (DDP: ``strategy="ddp"`` or ``"ddp_spawn"``; on CPU the gloo backend). precision: a Lightning precision
    or "auto" (bf16 mixed on GPUs with bf16, else float32). max_minutes: stop on a wall-clock budget (the
    export still happens). The exported RUN/policy holds the EMA weights and the dataset's normalisation
    stats. val_dataset: a held-out LeRobot dataset recorded like the training set; the EMA weights' diffusion
    loss on it (same sigmas and noise each time) is taken every ``val_every`` steps (default
    ``checkpoint_every``) and at the end, as ``val_diffusion`` in metrics.csv and learning_curve.png.
    init_from: fine-tune a trained policy (a run, a save_pretrained folder or a shipped name; any trainable
    type): its architecture and weights, this dataset's stats and tasks (``extend_tasks``: new tasks for a
    one-hot encoder); freeze: parameter groups to keep fixed, e.g. ``"router,experts"``
    (``mode_policy.training.finetune``).
    """
    run = check_output_dir(out_dir, option="--out", owned=RUN_MARKERS, what="training run")
    given = {
        "steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr, "weight_decay": weight_decay,
        "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio, "grad_clip": grad_clip,
        "ema_decay": ema_decay, "checkpoint_every": checkpoint_every, "log_every": log_every,
    }  # fmt: skip
    launch = {
        "devices": devices, "num_nodes": num_nodes, "strategy": strategy,
        "precision": resolve_precision(precision), "max_minutes": max_minutes,
    }  # fmt: skip
    check_settings({**given, **launch})
    if not resume and (run / CHECKPOINT).exists():
        raise FileExistsError(
            f"{run} already holds a training run ({run / CHECKPOINT}); continue it with --resume, or choose "
            "a new --out directory"
        )
    data = requested_data(dataset_dir, dataset_weights, normalization, rename, drop)
    if resume:
        data = resumed_data(run, run / CHECKPOINT, data)
    dataset = open_data(data)
    finetune = {"init_from": init_from, "freeze": check_freeze_names(freeze), "extend_tasks": extend_tasks}
    settings, source = _settings(
        run, dataset, data, policy_type, policy_overrides, given, launch, resume, **finetune
    )
    _warn_constant_actions(dataset)
    validation = _validation(settings, dataset, val_dataset, val_every)
    module, data = _build(settings, dataset, run, num_workers, source)
    _write_settings(run, settings)
    trainer = _trainer(settings, run, accelerator, progress, extra_callbacks, validation)
    trainer.fit(module, datamodule=data, ckpt_path=str(run / CHECKPOINT) if resume else None)
    return run


def _settings(
    run, dataset, data, policy_type, overrides, given, launch, resume, *, init_from, freeze, extend_tasks
):
    """(the run's settings, the policy to start from or None): new settings (the policy config built for
    the dataset or mixture, or fine-tuned from ``init_from``; ``data`` its data fields) or the resumed
    run's."""
    if (freeze or extend_tasks) and init_from is None and not resume:
        raise ValueError("--freeze and --extend-tasks go with --init-from (the trained policy to fine-tune)")
    if resume:  # --set overrides must then rebuild the run's own policy config
        rebuild = (
            (lambda saved_type: policy_config_for(dataset, overrides, saved_type).to_dict())
            if overrides
            else None
        )
        settings = resumed_settings(run, run / CHECKPOINT, given, launch, rebuild)
        _check_resumed_finetune(run, settings, init_from, freeze)
        return settings, None
    if init_from is None:
        config = policy_config_for(dataset, overrides, policy_type)
        return new_settings(data, given, config.to_dict(), launch), None
    source = source_policy(init_from)
    config = finetune_config(source, init_from, dataset, overrides, extend_tasks=extend_tasks, freeze=freeze)
    settings = new_settings(data, given, config.to_dict(), launch)
    settings.init_from, settings.freeze = str(init_from), freeze
    return settings, source


def policy_config_for(dataset: Any, overrides: Any = None, policy_type: str = DEFAULT_TYPE) -> Any:
    """The config of a trainable policy type for ``dataset`` with ``--set`` overrides (a list of
    ``"key=value"`` or a dict); refuses types that cannot learn from a dataset."""
    cls = get_policy_class(policy_type)
    if not callable(getattr(cls, "compute_loss", None)):
        raise ValueError(
            f"policy type {policy_type!r} does not learn from a dataset (it has no compute_loss); it is made "
            f"with `{cls.made_by}`"
        )
    config_class = cls.config_class
    return config_class.for_dataset(dataset, parse_overrides(overrides, config_class.override_keys()))


def _write_settings(run: Path, settings: TrainSettings) -> None:
    run.mkdir(parents=True, exist_ok=True)
    if _is_global_zero_launch():
        atomic_write_text(run / RUN_SETTINGS, json.dumps(asdict(settings), indent=2) + "\n")


def _build(settings: TrainSettings, dataset: Any, run: Path, num_workers: int, source: Any = None):
    """The policy (its registered type, normalising as ``settings.normalization`` says; with ``source``,
    starting from its weights; frozen groups applied) wrapped for Lightning, and the resumable data module
    (a mixture's items drawn with its weights)."""
    L.seed_everything(settings.seed, verbose=False)  # same initial weights on every rank
    config = policy_config_from_dict(settings.policy)
    policy = get_policy_class(config.tag)(config, policy_stats(dataset, settings.normalization))
    if source is not None:
        load_initial_weights(policy, source)
    freeze_groups(policy, settings.freeze or [])
    windows = training_items(dataset, lambda part: _windows(config, part))
    optim = OptimConfig(
        lr=settings.lr, weight_decay=settings.weight_decay, warmup_steps=settings.warmup_steps,
        total_steps=settings.steps, min_lr_ratio=settings.min_lr_ratio,
    )  # fmt: skip
    module = PolicyModule(
        policy,
        optim,
        seed=settings.seed,
        checkpoint_hint=str(run / CHECKPOINT),
        check_grad_finite=settings.precision not in ("16-mixed", "16"),
    )
    data = ResumableDataModule(
        windows,
        batch_size=settings.batch_size,
        seed=settings.seed,
        num_workers=num_workers,
        weights=sampling_weights(dataset),
    )
    return module, data


def _check_resumed_finetune(run: Path, saved: TrainSettings, init_from: Any, freeze: list[str]) -> None:
    """A resumed fine-tuning run restores its own weights and frozen groups; given ones must match."""
    if (init_from is not None and str(init_from) != saved.init_from) or (freeze and freeze != saved.freeze):
        raise ValueError(
            f"--resume of {run}: it was started with --init-from {saved.init_from} and --freeze "
            f"{','.join(saved.freeze or []) or 'none'}; resume without them (they are read from "
            "train_config.json)"
        )


def _windows(config: Any, dataset: Any) -> Any:
    """The training samples of ``dataset`` for a policy of ``config``: its observation and action windows."""
    from mode_policy.data.windows import ActionChunkDataset

    keys = config.observation_keys
    return ActionChunkDataset(
        dataset,
        n_obs_steps=config.n_obs_steps,
        chunk_size=config.chunk_size,
        state_key=STATE_KEY if STATE_KEY in keys else None,
        image_keys=[key for key in keys if key != STATE_KEY],
    )


def _validation(settings: TrainSettings, dataset: Any, val_dataset: Any, every: int | None) -> tuple | None:
    """(windows, every) of a held-out dataset (seen with the run's --rename / --drop), its features checked
    against the training set's; None without one. A policy with per-dataset stats normalises it with its
    inference dataset's."""
    from mode_policy.data.lerobot import LeRobotDataset
    from mode_policy.data.mixture import DatasetView

    if val_dataset is None:
        return None
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ValueError(f"--val-every must be a positive number of steps, got {every!r}")
    held_out = LeRobotDataset(val_dataset)
    if settings.rename or settings.drop:
        held_out = DatasetView(held_out, settings.rename, settings.drop or [])
    config = policy_config_from_dict(settings.policy)
    for key in (*config.observation_keys, ACTION_KEY):
        ours, theirs = dataset.features.get(key, {}).get("shape"), held_out.features.get(key, {}).get("shape")
        if ours != theirs:
            raise ValueError(
                f"the validation dataset {held_out.root} has {key} of shape {theirs}, the training set "
                f"{dataset.root} {ours}: give a validation set recorded like the training set"
            )
    return _windows(config, held_out), every or settings.checkpoint_every


def _trainer(
    settings: TrainSettings, run: Path, accelerator: str, progress: bool, extra: list[Callback] | None,
    validation: tuple | None = None,
) -> L.Trainer:  # fmt: skip
    history = LossHistory(every=settings.log_every)
    callbacks: list[Callback] = []
    if settings.max_minutes is not None:
        budget = timedelta(minutes=settings.max_minutes)
        callbacks.append(Timer(duration=budget, interval="step", verbose=progress))
    # Order matters at train end: EMA copies the averaged weights into the model before the export.
    callbacks += [EMA(settings.ema_decay), history]
    if validation is not None:
        windows, every = validation
        callbacks.append(ValidationLoss(windows, history, every))
    callbacks += [ExportOnTrainEnd(run, history), *(extra or [])]
    callbacks.append(AtomicCheckpoint(run / Path(CHECKPOINT).parent, settings.checkpoint_every))
    if progress:
        callbacks.append(StepProgressBar(refresh_rate=max(1, settings.log_every)))
    return L.Trainer(
        accelerator=accelerator,
        devices=settings.devices,
        num_nodes=settings.num_nodes,
        strategy=settings.strategy,
        precision=settings.precision,
        max_steps=settings.steps,
        max_epochs=-1,
        gradient_clip_val=settings.grad_clip or None,
        callbacks=callbacks,
        logger=TensorBoardLogger(save_dir=str(run), name="tb", version=""),
        log_every_n_steps=settings.log_every,
        use_distributed_sampler=False,  # the sampler slices batches per rank itself
        enable_progress_bar=progress,
        enable_model_summary=progress,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def _warn_constant_actions(dataset: Any) -> None:
    """A dimension that never varies trains silently into a policy that can only output that value."""
    stats = dataset.stats.get(ACTION_KEY)
    dims = [] if stats is None else constant_dimensions(stats)
    if dims:
        values = [float(stats["min"][d]) for d in dims]
        warn(
            f"action dimension(s) {dims} of {where(dataset)} never vary in the data (min == max = {values}): "
            "the policy will always output that value there; check the recording if it should move"
        )


def _is_global_zero_launch() -> bool:
    # Under a DDP launch every process runs train(); only the first one writes shared files.
    # (Lightning's "ddp" relaunch sets LOCAL_RANK / NODE_RANK; torchrun and SLURM set RANK.)
    return all(int(os.environ.get(name, "0")) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))
