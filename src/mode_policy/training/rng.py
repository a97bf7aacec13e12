"""Capture and restore every random-number generator a training step may draw from.

Lightning checkpoints do not hold RNG states; without them a resumed run draws different noise levels,
noise and routing samples than an uninterrupted one, and the two diverge after the first step.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when present) every CUDA device's generator state."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_torch(np.random.get_state()),  # noqa: NPY002 (the global RNG libraries use)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state_to_torch(state: tuple) -> tuple:
    # Keys as a tensor, not a NumPy array: checkpoints then load with torch.load(weights_only=True).
    name, keys, position, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached))


def _numpy_state_from_torch(state: tuple) -> tuple:
    name, keys, position, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(_numpy_state_from_torch(state["numpy"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
