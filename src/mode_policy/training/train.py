"""``train()``: a MoDE policy on a LeRobot dataset with Lightning, resumable step for step.

run = train("data/mt10", "runs/mt10", steps=20_000, batch_size=256, seed=0)
policy = MoDEPolicy.from_pretrained(run / "policy")        # the EMA weights

Run directory::

    RUN/train_config.json       everything needed to resume (dataset, settings, policy config)
    RUN/checkpoints/last.ckpt   written atomically every ``checkpoint_every`` steps and at the end
    RUN/tb/                     TensorBoard: loss, lr, grad norm, load balance, per-layer expert usage
    RUN/policy/                 the EMA policy (``MoDEPolicy.save_pretrained``), written when training ends
    RUN/metrics.csv, RUN/learning_curve.png, RUN/train_summary.json
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.loggers import TensorBoardLogger

from mode_policy.data.stats import constant_dimensions
from mode_policy.io import CorruptFileError, atomic_write_text, check_output_dir, load_checkpoint, read_json
from mode_policy.keys import ACTION_KEY, STATE_KEY
from mode_policy.messages import warn
from mode_policy.training.callbacks import (
    EMA,
    AtomicCheckpoint,
    ExportOnTrainEnd,
    LossHistory,
    StepProgressBar,
)
from mode_policy.training.data_module import ResumableDataModule
from mode_policy.training.module import OptimConfig, PolicyModule
from mode_policy.training.policy_factory import parse_overrides, policy_config_for

CONFIG_FILE = "train_config.json"
# What marks a folder as a training run of ours (one that --out may point into again).
RUN_MARKERS = (CONFIG_FILE, "checkpoints")


@dataclass
class TrainSettings:
    """What ``train()`` was asked to do; saved as RUN/train_config.json."""

    dataset: str
    steps: int
    batch_size: int
    seed: int
    lr: float
    weight_decay: float
    warmup_steps: int
    min_lr_ratio: float
    grad_clip: float
    ema_decay: float
    checkpoint_every: int
    log_every: int
    devices: int | str
    num_nodes: int
    strategy: str
    precision: str
    max_minutes: float | None
    policy: dict[str, Any]


def resolve_precision(precision: str) -> str:
    """ "auto": bf16 mixed precision where a CUDA GPU supports it, float32 elsewhere (CPU bf16 is slower)."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


# Defaults of the settings a caller may leave as None (a resumed run takes them from its train_config.json).
DEFAULTS: dict[str, Any] = {
    "steps": 20_000,
    "batch_size": 256,
    "seed": 0,
    "lr": 3e-4,
    "weight_decay": 0.05,
    "warmup_steps": None,  # min(500, steps // 10)
    "min_lr_ratio": 0.1,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "checkpoint_every": 1000,
    "log_every": 10,
}


def train(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
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
) -> Path:
    """Train a MoDE policy on the LeRobot dataset at ``dataset_dir``; returns the run directory ``out_dir``.

    steps: optimizer steps in total (default 20000); batch_size: per device (default 256); lr: peak AdamW
    learning rate (3e-4) with ``warmup_steps`` of linear warmup (min(500, steps // 10)) then cosine decay
    to ``min_lr_ratio * lr``; grad_clip: max gradient norm; ema_decay: of the exported EMA weights.
    resume: continue from ``out_dir/checkpoints/last.ckpt`` with the same step, weights, optimizer, EMA,
    data order and RNG state. Settings left as None are then taken from ``out_dir/train_config.json``; a
    given one that differs raises (``steps`` may grow: training continues, the cosine stretches).
    policy_overrides: ``{"denoiser.width": 64}`` or ``["denoiser.width=64"]`` (``valid_override_keys()``).
    devices / num_nodes / strategy / accelerator: passed to ``lightning.Trainer`` (DDP: ``strategy="ddp"``
    or ``"ddp_spawn"``; on CPU the gloo backend). precision: a Lightning precision or "auto" (bf16 mixed on
    GPUs with bf16, else float32). max_minutes: stop on a wall-clock budget (the export still happens).
    The exported RUN/policy holds the EMA weights and the dataset's normalisation stats.
    """
    from mode_policy.data.lerobot import LeRobotDataset
    from mode_policy.data.windows import ActionChunkDataset
    from mode_policy.policies.configuration_mode import MoDEPolicyConfig
    from mode_policy.policies.modeling_mode import MoDEPolicy

    run = check_output_dir(out_dir, option="--out", owned=RUN_MARKERS, what="training run")
    checkpoint = run / "checkpoints" / "last.ckpt"
    given = {
        "steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr, "weight_decay": weight_decay,
        "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio, "grad_clip": grad_clip,
        "ema_decay": ema_decay, "checkpoint_every": checkpoint_every, "log_every": log_every,
    }  # fmt: skip
    _check_settings({k: v for k, v in given.items() if v is not None})
    if not resume and checkpoint.exists():
        raise FileExistsError(
            f"{run} already holds a training run ({checkpoint}); continue it with --resume, or choose a "
            "new --out directory"
        )
    dataset = LeRobotDataset(dataset_dir)
    overrides = parse_overrides(policy_overrides)
    common = {
        "devices": devices, "num_nodes": num_nodes, "strategy": strategy,
        "precision": resolve_precision(precision), "max_minutes": max_minutes,
    }  # fmt: skip
    if resume:
        settings = _settings_for_resume(run, checkpoint, dataset, given, overrides, common)
    else:
        values = {k: DEFAULTS[k] if v is None else v for k, v in given.items()}
        if values["warmup_steps"] is None:
            values["warmup_steps"] = min(500, values["steps"] // 10)
        settings = TrainSettings(
            dataset=str(Path(dataset_dir).resolve()),
            policy=policy_config_for(dataset, overrides).to_dict(),
            **values,
            **common,
        )
    _check_settings(asdict(settings))
    _warn_constant_actions(dataset)
    run.mkdir(parents=True, exist_ok=True)
    if _is_global_zero_launch():
        atomic_write_text(run / CONFIG_FILE, json.dumps(asdict(settings), indent=2) + "\n")

    L.seed_everything(settings.seed, verbose=False)  # same initial weights on every rank
    config = MoDEPolicyConfig.from_dict(settings.policy)
    policy = MoDEPolicy(config, dataset.stats)
    windows = ActionChunkDataset(
        dataset,
        n_obs_steps=config.n_obs_steps,
        chunk_size=config.chunk_size,
        state_key=STATE_KEY if config.use_state else None,
        image_keys=config.image_keys,
    )
    module = PolicyModule(
        policy,
        OptimConfig(
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            warmup_steps=settings.warmup_steps,
            total_steps=settings.steps,
            min_lr_ratio=settings.min_lr_ratio,
        ),
        seed=settings.seed,
        checkpoint_hint=str(checkpoint),
        check_grad_finite=settings.precision not in ("16-mixed", "16"),
    )
    data = ResumableDataModule(
        windows, batch_size=settings.batch_size, seed=settings.seed, num_workers=num_workers
    )

    history = LossHistory(every=settings.log_every)
    callbacks: list[Callback] = []
    if max_minutes is not None:
        callbacks.append(Timer(duration=timedelta(minutes=max_minutes), interval="step", verbose=progress))
    # Order matters at train end: EMA copies the averaged weights into the model before the export.
    callbacks += [EMA(settings.ema_decay), history, ExportOnTrainEnd(run, history), *(extra_callbacks or [])]
    callbacks.append(AtomicCheckpoint(run / "checkpoints", settings.checkpoint_every))
    if progress:
        callbacks.append(StepProgressBar(refresh_rate=max(1, settings.log_every)))
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
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
    trainer.fit(module, datamodule=data, ckpt_path=str(checkpoint) if resume else None)
    return run


def _settings_for_resume(
    run: Path,
    checkpoint: Path,
    dataset: Any,
    given: dict[str, Any],
    overrides: dict[str, Any],
    common: dict[str, Any],
) -> TrainSettings:
    """The saved settings; given ones must agree (``steps`` may grow, ``lr`` may change: the way out of a
    diverged run), launch settings are taken as given."""
    path = run / CONFIG_FILE
    if not checkpoint.is_file() or not path.is_file():
        missing = checkpoint if not checkpoint.is_file() else path
        raise FileNotFoundError(
            f"cannot resume {run}: {missing} does not exist; start a new run without --resume"
        )
    saved = _read_settings(path)
    adjustable = ("steps", "checkpoint_every", "log_every", "lr")
    conflicts = [
        f"{name}: run has {getattr(saved, name)!r}, asked {value!r}"
        for name, value in given.items()
        if value is not None and name not in adjustable and value != getattr(saved, name)
    ]
    if str(dataset.root.resolve()) != saved.dataset:
        conflicts.append(f"dataset: run has {saved.dataset}, asked {dataset.root.resolve()}")
    if overrides and policy_config_for(dataset, overrides).to_dict() != saved.policy:
        conflicts.append("policy: the --set overrides give another policy config than the run's")
    if conflicts:
        raise ValueError(
            f"--resume of {run} with settings that differ from the interrupted run ({'; '.join(conflicts)}); "
            "resume with the original settings (or none: they are read from train_config.json), or start a "
            "new run"
        )
    for name in adjustable:
        if given[name] is not None:
            setattr(saved, name, given[name])
    fix = "resume from an earlier copy of it, or start a new run in a new --out folder"
    resumed_step = load_checkpoint(checkpoint, fix=fix).get("global_step", 0)
    if resumed_step >= saved.steps:
        raise ValueError(
            f"{run} is already at step {resumed_step} of {saved.steps}; pass a larger --steps to train "
            "further"
        )
    for name, value in common.items():
        setattr(saved, name, value)
    return saved


def _read_settings(path: Path) -> TrainSettings:
    fix = "restore it, or start a new run in a new --out folder"
    values = read_json(path, fix=fix)
    try:
        return TrainSettings(**values)
    except TypeError:
        raise CorruptFileError(f"{path} does not hold the settings of a training run; {fix}") from None


# Settings a caller may pass, the check each must pass, and what that check says.
_SETTING_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": (lambda v: _is_int(v) and v >= 1, "a positive integer (--steps)"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive integer (--batch-size)"),
    "checkpoint_every": (lambda v: _is_int(v) and v >= 1, "a positive integer (--checkpoint-every)"),
    "log_every": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "warmup_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "seed": (lambda v: _is_int(v), "an integer (--seed)"),
    "lr": (lambda v: _is_number(v) and 0 < v < math.inf, "a positive learning rate (--lr)"),
    "weight_decay": (lambda v: _is_number(v) and 0 <= v < math.inf, "a number >= 0"),
    "grad_clip": (lambda v: _is_number(v) and 0 <= v < math.inf, "a number >= 0 (0: no clipping)"),
    "min_lr_ratio": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "ema_decay": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "max_minutes": (lambda v: v is None or (_is_number(v) and v > 0), "a positive number (--max-minutes)"),
}


def _check_settings(values: dict[str, Any]) -> None:
    for name, value in values.items():
        check = _SETTING_CHECKS.get(name)
        if check is not None and not check[0](value):
            raise ValueError(f"{name} must be {check[1]}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _warn_constant_actions(dataset: Any) -> None:
    """A dimension that never varies trains silently into a policy that can only output that value."""
    stats = dataset.stats.get(ACTION_KEY)
    dims = [] if stats is None else constant_dimensions(stats)
    if dims:
        values = [float(stats["min"][d]) for d in dims]
        warn(
            f"action dimension(s) {dims} of {dataset.root} never vary in the data (min == max = {values}): "
            "the policy will always output that value there; check the recording if it should move"
        )


def _is_global_zero_launch() -> bool:
    # Under a DDP launch every process runs train(); only the first one writes shared files.
    # (Lightning's "ddp" relaunch sets LOCAL_RANK / NODE_RANK; torchrun and SLURM set RANK.)
    return all(int(os.environ.get(name, "0")) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))
