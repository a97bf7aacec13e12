"""Checks of what a policy is given, shared by every policy type: states, camera images and instructions.

Each function returns a tensor of a known shape or raises ValueError (KeyError for a missing key) with
one line naming the key, what was expected and what came. Nothing downstream (normaliser, ResNet,
sampler) then sees a wrong shape, a NaN or an image of another size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mode_policy.keys import STATE_KEY, TASK_KEY


def finite(tensor: torch.Tensor, key: str) -> torch.Tensor:
    """``tensor`` as floating point; a clear error naming ``key`` if it holds NaN or inf."""
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{key!r} contains NaN or inf values (shape {tuple(tensor.shape)})")
    return tensor


def _value(obs: Mapping[str, Any], key: str, what: str) -> torch.Tensor:
    if not isinstance(obs, Mapping):
        raise ValueError(f"the {what} must be a dict of named arrays, got {type(obs).__name__}")
    if key not in obs:
        raise KeyError(f"{what} has no {key!r}; got keys {sorted(obs)}")
    try:
        return torch.as_tensor(obs[key])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{key!r} is not a numeric array ({error})") from None


def state_input(obs: Mapping[str, Any], n_obs_steps: int, state_dim: int, *, history: bool) -> torch.Tensor:
    """obs['observation.state'], finite float.

    history=True (``predict_action_chunk``): (B, n_obs_steps, state_dim), or (B, state_dim) when
    n_obs_steps == 1. history=False (``select_action``, one env step): (B, state_dim).
    """
    state = _value(obs, STATE_KEY, "observation")
    if history:
        if n_obs_steps == 1 and state.dim() == 2:
            state = state.unsqueeze(1)
        if state.dim() != 3 or tuple(state.shape[1:]) != (n_obs_steps, state_dim):
            accepted = f"(B, {n_obs_steps}, {state_dim})"
            if n_obs_steps == 1:
                accepted += f" or (B, {state_dim})"
            raise ValueError(
                f"{STATE_KEY!r} must have shape {accepted} (n_obs_steps, state_dim), got "
                f"{tuple(torch.as_tensor(obs[STATE_KEY]).shape)}"
            )
    elif state.dim() != 2 or state.shape[1] != state_dim:
        raise ValueError(
            f"select_action takes {STATE_KEY!r} of the current step with shape (B, state_dim={state_dim}), "
            f"got {tuple(state.shape)} (the policy keeps the history)"
        )
    if state.dtype == torch.bool or state.is_complex():
        raise ValueError(f"{STATE_KEY!r} must hold real numbers, got dtype {state.dtype}")
    return finite(state, STATE_KEY)


def image_input(
    obs: Mapping[str, Any], key: str, n_obs_steps: int, image_hw: tuple[int, int], *, history: bool
) -> torch.Tensor:
    """obs[key]: camera frames channels-first, uint8 in [0, 255] or float in [0, 1].

    history=True: (B, n_obs_steps, 3, H, W), or (B, 3, H, W) when n_obs_steps == 1; history=False:
    (B, 3, H, W). Channels-last frames (..., H, W, 3), as renderers give them, are accepted. (H, W) must
    be the size the policy was trained on: a policy never resizes silently.
    """
    images = _value(obs, key, "observation")
    steps = n_obs_steps if history else None
    if history and n_obs_steps == 1 and images.dim() == 4:
        images = images.unsqueeze(1)
    expected_dims = 5 if history else 4
    layout = "(B, n_obs_steps, 3, H, W)" if history else "(B, 3, H, W) of the current step"
    if images.dim() != expected_dims or (steps is not None and images.shape[1] != steps):
        raise ValueError(
            f"{key!r} must have shape {layout} with n_obs_steps={n_obs_steps}, got {tuple(images.shape)}"
        )
    if images.shape[-1] == 3 and images.shape[-3] != 3:
        images = images.movedim(-1, -3)  # channels last -> first
    channels, height, width = images.shape[-3:]
    if channels != 3:
        raise ValueError(
            f"{key!r} must have 3 colour channels (RGB), got {channels} (shape {tuple(images.shape)})"
        )
    if (height, width) != tuple(image_hw):
        raise ValueError(
            f"{key!r} frames are {height}x{width}, but the policy was trained on "
            f"{image_hw[0]}x{image_hw[1]}; render or resize frames to that size"
        )
    if images.dtype == torch.uint8:
        return images
    if images.dtype == torch.bool or images.is_complex():
        raise ValueError(f"{key!r} must be uint8 in [0, 255] or float in [0, 1], got dtype {images.dtype}")
    if not images.is_floating_point():  # other integer types: the uint8 range, stored wider
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise ValueError(f"{key!r} integer pixels must lie in [0, 255], got {low}..{high}")
        return images.to(torch.uint8)
    images = finite(images, key)
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{key!r} float pixels must lie in [0, 1], got {low:.3g}..{high:.3g}; pass uint8 frames, or "
            "divide by 255"
        )
    return images


def instructions(batch: Mapping[str, Any], batch_size: int) -> list[str]:
    """batch['task'] as a list of B strings (a single string is repeated)."""
    tasks = batch.get(TASK_KEY)
    if tasks is None:
        raise KeyError(f"batch has no {TASK_KEY!r}: a list of {batch_size} instruction strings")
    if isinstance(tasks, str):
        return [tasks] * batch_size
    if not isinstance(tasks, Sequence) or len(tasks) != batch_size:
        got = len(tasks) if isinstance(tasks, Sequence) else type(tasks).__name__
        raise ValueError(f"{TASK_KEY!r} must be a list of {batch_size} instruction strings, got {got}")
    bad = [t for t in tasks if not isinstance(t, str)]
    if bad:
        kind = type(bad[0]).__name__
        raise ValueError(f"{TASK_KEY!r} must hold instruction strings, got {kind}: {bad[0]!r}")
    return list(tasks)
