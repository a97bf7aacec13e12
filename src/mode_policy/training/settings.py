"""What a training run was asked to do: ``TrainSettings`` (RUN/train_config.json), their defaults and
checks, and the rules of ``--resume`` (the saved settings win; ``steps`` may grow, ``lr`` may change; the
data, a dataset mixture included, must be the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mode_policy.data.mixture import mixture_weights
from mode_policy.io import CorruptFileError, load_checkpoint
from mode_policy.policies.folders import RUN_SETTINGS, data_fields, read_run_settings
from mode_policy.policies.registry import get_policy_class, policy_config_from_dict


@dataclass
class TrainSettings:
    """What ``train()`` was asked to do; saved as RUN/train_config.json."""

    dataset: str  # the training dataset (a mixture's first)
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
    policy: dict[str, Any]  # the policy config, with its policy_type
    init_from: str | None = None  # fine-tuning: the policy the weights started from
    freeze: list[str] | None = None  # fine-tuning: parameter groups without gradient
    # A dataset mixture (training.datasets): every dataset folder in order (``dataset`` is the first) and
    # each one's sampling probability (summing to 1); None for one dataset.
    datasets: list[str] | None = None
    dataset_weights: list[float] | None = None
    normalization: str = "pooled"  # a mixture's stats: "pooled" or "per-dataset"
    rename: dict[str, str] | None = None  # --rename: feature keys renamed where a dataset has them
    drop: list[str] | None = None  # --drop: feature keys left out

    def data(self) -> dict[str, Any]:
        """What the run trains on, as ``training.datasets.requested_data`` gives it: the dataset list (one
        dataset: a list of one), weights, normalisation, rename and drop."""
        return data_fields(vars(self))


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
# What a resumed run may be given anew: more steps, another logging cadence, and a new peak learning rate
# (the way out of a diverged run).
ADJUSTABLE_ON_RESUME = ("steps", "checkpoint_every", "log_every", "lr")


def resolve_precision(precision: str) -> str:
    """ "auto": bf16 mixed precision where a CUDA GPU supports it, float32 elsewhere (CPU bf16 is slower)."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def new_settings(
    data: dict[str, Any], given: dict[str, Any], policy: dict[str, Any], launch: dict[str, Any]
) -> TrainSettings:
    """Settings of a fresh run: the given ones, defaults for the rest. data: the run's data fields
    (``TrainSettings.data``; one dataset or a mixture with its weights resolved)."""
    values = {k: DEFAULTS[k] if v is None else v for k, v in given.items()}
    if values["warmup_steps"] is None:
        values["warmup_steps"] = min(500, values["steps"] // 10)
    roots = [str(Path(root).resolve()) for root in data["datasets"]]
    mixture = len(roots) > 1
    settings = TrainSettings(
        dataset=roots[0],
        policy=policy,
        **values,
        **launch,
        datasets=roots if mixture else None,
        dataset_weights=[float(w) for w in data["dataset_weights"]] if mixture else None,
        normalization=data["normalization"] or "pooled",
        rename=dict(data["rename"]) or None,
        drop=list(data["drop"]) or None,
    )
    check_settings(vars(settings))
    return settings


def resumed_data(run: Path, checkpoint: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The data fields of the run to resume (``TrainSettings.data``), the datasets as given; a given dataset
    list other than the run's, or a given weight, normalisation, rename or drop other than its own, is one
    ValueError line."""
    saved = _read_resumable(run, checkpoint)
    ours = saved.data()
    asked = [str(Path(root).resolve()) for root in data["datasets"]]
    if asked != ours["datasets"]:
        raise ValueError(
            f"--resume of {run}: it trains on {', '.join(ours['datasets'])}, asked {', '.join(asked)}; "
            "resume with the same --dataset list, in the same order, or start a new run"
        )
    conflicts = []
    weights = data["dataset_weights"]
    if weights is not None and len(asked) > 1:
        weights = mixture_weights(weights, len(asked)).tolist()
        if not np.allclose(weights, ours["dataset_weights"], rtol=1e-9, atol=1e-12):
            conflicts.append(f"dataset_weights: run has {ours['dataset_weights']}, asked {weights}")
    for name in ("normalization", "rename", "drop"):
        if data[name] and data[name] != ours[name]:
            conflicts.append(f"{name}: run has {ours[name]!r}, asked {data[name]!r}")
    if conflicts:
        raise ValueError(
            f"--resume of {run} with data settings that differ from the interrupted run "
            f"({'; '.join(conflicts)}); resume without them (they are read from train_config.json), or start "
            "a new run"
        )
    return {**ours, "datasets": list(data["datasets"])}


def resumed_settings(
    run: Path,
    checkpoint: Path,
    given: dict[str, Any],
    launch: dict[str, Any],
    rebuild_policy: Callable[[str], dict[str, Any]] | None = None,
) -> TrainSettings:
    """The saved settings of ``run``; given ones must agree but for ``ADJUSTABLE_ON_RESUME``, launch
    settings (devices, precision, budget) are taken as given. ``rebuild_policy(policy_type)``: the policy
    config the caller's ``--set`` overrides give for the run's policy type, which must equal the run's.
    The data (datasets, mixture) is checked by ``resumed_data``."""
    saved = _read_resumable(run, checkpoint)
    conflicts = [
        f"{name}: run has {getattr(saved, name)!r}, asked {value!r}"
        for name, value in given.items()
        if value is not None and name not in ADJUSTABLE_ON_RESUME and value != getattr(saved, name)
    ]
    saved_policy = policy_config_from_dict(saved.policy)
    if rebuild_policy is not None and rebuild_policy(saved_policy.tag) != saved_policy.to_dict():
        conflicts.append("policy: the --set overrides give another policy config than the run's")
    if conflicts:
        raise ValueError(
            f"--resume of {run} with settings that differ from the interrupted run ({'; '.join(conflicts)}); "
            "resume with the original settings (or none: they are read from train_config.json), or start a "
            "new run"
        )
    for name in ADJUSTABLE_ON_RESUME:
        if given[name] is not None:
            setattr(saved, name, given[name])
    fix = "resume from an earlier copy of it, or start a new run in a new --out folder"
    resumed_step = load_checkpoint(checkpoint, fix=fix).get("global_step", 0)
    if resumed_step >= saved.steps:
        raise ValueError(
            f"{run} is already at step {resumed_step} of {saved.steps}; pass a larger --steps to train "
            "further"
        )
    for name, value in launch.items():
        setattr(saved, name, value)
    check_settings(vars(saved))
    return saved


def _read_resumable(run: Path, checkpoint: Path) -> TrainSettings:
    if not checkpoint.is_file() or not (run / RUN_SETTINGS).is_file():
        missing = checkpoint if not checkpoint.is_file() else run / RUN_SETTINGS
        raise FileNotFoundError(
            f"cannot resume {run}: {missing} does not exist; start a new run without --resume"
        )
    return read_settings(run)


def read_settings(run: Path) -> TrainSettings:
    values = read_run_settings(run)
    try:
        settings = TrainSettings(**values)
        get_policy_class(policy_config_from_dict(settings.policy).tag)
    except (TypeError, ValueError, AttributeError) as error:
        raise CorruptFileError(
            f"{run / RUN_SETTINGS} does not hold the settings of a training run ({error}); restore it, or "
            "start a new run in a new --out folder"
        ) from None
    return settings


# Settings a caller may pass, the check each must pass, and what that check says.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
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
    "normalization": (lambda v: v in ("pooled", "per-dataset"), "pooled or per-dataset (--normalization)"),
}


def check_settings(values: dict[str, Any]) -> None:
    """ValueError naming the first setting (and its flag) that is out of range; None values are skipped."""
    for name, value in values.items():
        check = _CHECKS.get(name)
        if check is not None and value is not None and not check[0](value):
            raise ValueError(f"{name} must be {check[1]}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
