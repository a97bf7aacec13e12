"""Where policies live on disk: a ``save_pretrained`` folder, a training or distillation run holding one
(``RUN/policy``), or a checkpoint shipped in the package; and what a run folder records.

resolve_policy_dir("runs/mt10")          # -> (runs/mt10/policy, runs/mt10)
run_data("runs/mt10")                    # -> the dataset(s) the run trained on, if they are still there
open_run_data("runs/mt10")               # -> those datasets opened as training opened them
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mode_policy.io import read_json

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
POLICY_CONFIG = "config.json"
EXPORTED_SUFFIX = ".onnx"  # an exported policy is one file (mode_policy.runtime)
POLICY_SUBDIR = "policy"  # RUN/policy: where a run exports its policy
RUN_SETTINGS = "train_config.json"  # what a training run was asked to do
CHECKPOINT = "checkpoints/last.ckpt"


def shipped_pretrained() -> list[str]:
    """Names of the checkpoints shipped in ``mode_policy/pretrained/<name>/``."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / POLICY_CONFIG).is_file())


def resolve_policy_dir(policy_or_dir: str | Path) -> tuple[Path, Path | None]:
    """(directory written by ``save_pretrained``, the run it belongs to or None).

    Accepts a run directory (uses ``RUN/policy``), a ``save_pretrained`` directory, the name of a shipped
    pretrained checkpoint, or an exported ``.onnx`` file (returned as it is).
    """
    path = Path(policy_or_dir).expanduser()
    if path.suffix == EXPORTED_SUFFIX and path.is_file():
        return path, None
    if path.is_dir():
        if (path / POLICY_SUBDIR / POLICY_CONFIG).is_file():
            return path / POLICY_SUBDIR, path
        if (path / POLICY_CONFIG).is_file():
            return path, None
        if (path / CHECKPOINT).is_file():
            raise FileNotFoundError(
                f"{path} is a training run without an exported policy (RUN/policy is written when training "
                f"ends); finish it with `mode-policy train --resume --out {path}`"
            )
        raise FileNotFoundError(
            f"{path} holds neither a training run (RUN/policy/{POLICY_CONFIG}) nor a saved policy "
            f"({POLICY_CONFIG} + model.safetensors); pass one of those"
        )
    shipped = PRETRAINED_DIR / str(policy_or_dir)
    if (shipped / POLICY_CONFIG).is_file():
        return shipped, None
    names = shipped_pretrained()
    available = ", ".join(names) if names else "none shipped in this install"
    raise FileNotFoundError(
        f"no policy at {policy_or_dir!r}: not a directory, and not a shipped pretrained name ({available}); "
        "pass a training run directory, a save_pretrained directory, or a shipped name"
    )


def read_run_settings(run_dir: str | Path) -> dict[str, Any]:
    """RUN/train_config.json as a dict (a damaged file is one line naming it)."""
    path = Path(run_dir) / RUN_SETTINGS
    values = read_json(path, fix="restore it, or start a new run in a new --out folder")
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold the settings of a training run (a JSON object)")
    return values


def data_fields(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What a run trains on, from its settings (train_config.json, or ``TrainSettings`` as a dict): every
    dataset folder in order (one dataset: a list of one), the mixture weights (None for one dataset), the
    normalisation of a mixture, and the feature keys renamed ({old: new}) and dropped."""
    return {
        "datasets": list(settings.get("datasets") or [settings["dataset"]]),
        "dataset_weights": settings.get("dataset_weights"),
        "normalization": settings.get("normalization") or "pooled",
        "rename": dict(settings.get("rename") or {}),
        "drop": list(settings.get("drop") or []),
    }


def run_data(run_dir: str | Path | None) -> dict[str, Any] | None:
    """The data a training run recorded (``data_fields``: a mixture's every dataset, with its weights and
    rename / drop), when the run has settings and every dataset folder still exists; else None."""
    if run_dir is None or not (Path(run_dir) / RUN_SETTINGS).is_file():
        return None
    values = read_run_settings(run_dir)
    if not isinstance(values.get("dataset"), str):
        return None
    data = data_fields(values)
    roots = data["datasets"]
    return data if all(isinstance(root, str) and Path(root).is_dir() for root in roots) else None


def open_run_data(run_dir: str | Path | None) -> Any:
    """What a training run trained on, opened as it was (``data.mixture.open_datasets``: one dataset, or
    the mixture with its weights, renames and drops), when the run recorded it and it still exists; else
    None."""
    from mode_policy.data.mixture import open_datasets

    data = run_data(run_dir)
    if data is None:
        return None
    return open_datasets(data["datasets"], data["dataset_weights"], data["rename"], data["drop"])
