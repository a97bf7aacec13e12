"""Find and load the policy to evaluate: a policy object, a run, a saved policy, or a shipped name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
POLICY_CONFIG = "config.json"


def shipped_pretrained() -> list[str]:
    """Names of the checkpoints shipped in ``mode_policy/pretrained/<name>/``."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / POLICY_CONFIG).is_file())


def resolve_policy_dir(policy_or_dir: str | Path) -> tuple[Path, Path | None]:
    """(directory written by ``save_pretrained``, the training run it belongs to or None).

    Accepts a training run directory (uses ``RUN/policy``), a ``save_pretrained`` directory, or the name
    of a shipped pretrained checkpoint.
    """
    path = Path(policy_or_dir).expanduser()
    if path.is_dir():
        if (path / "policy" / POLICY_CONFIG).is_file():
            return path / "policy", path
        if (path / POLICY_CONFIG).is_file():
            return path, None
        if (path / "checkpoints" / "last.ckpt").is_file():
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


def load_policy(policy_or_dir: Any, device: str | None = None) -> tuple[Any, Path | None, Path | None]:
    """(policy in eval mode, its save_pretrained dir or None, its run dir or None)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if hasattr(policy_or_dir, "predict_action_chunk"):
        return policy_or_dir.eval(), None, None
    policy_dir, run_dir = resolve_policy_dir(policy_or_dir)
    return policy_class(policy_dir).from_pretrained(policy_dir, device=device), policy_dir, run_dir


def policy_class(policy_dir: str | Path) -> type:
    """The class that loads a ``save_pretrained`` directory, from config.json's ``policy_type``.

    MoDE policies carry no ``policy_type`` (the default); distilled VDD students carry ``"vdd"``.
    """
    from mode_policy.policies.modeling_mode import MoDEPolicy

    path = Path(policy_dir) / POLICY_CONFIG
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return MoDEPolicy  # its from_pretrained reports a missing or malformed config.json precisely
    kind = values.get("policy_type") if isinstance(values, dict) else None
    if kind is None or kind == "mode":
        return MoDEPolicy
    if kind == "vdd":
        from mode_policy.distill.modeling_vdd import VDDPolicy

        return VDDPolicy
    raise ValueError(
        f"{path} has policy_type {kind!r}, which this version cannot load; known: 'mode' (or none), 'vdd'"
    )
