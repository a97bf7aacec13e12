"""Small LeRobot datasets for mixture tests, written by our writer from random numbers in well under a second.

Each dataset's values are offset by ``shift`` so that datasets have clearly different stats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mode_policy.data.writer import LeRobotDatasetWriter
from mode_policy.keys import ACTION_KEY, STATE_KEY, image_key


def write_small_dataset(
    root: Path,
    tasks: tuple[str, ...] = ("reach the goal", "close the drawer"),
    *,
    fps: int = 10,
    state_dim: int = 3,
    action_dim: int = 2,
    camera: str | None = None,
    image_size: int = 8,
    episodes_per_task: int = 2,
    length: int = 6,
    shift: float = 0.0,
    scale: float = 1.0,
    seed: int = 0,
) -> Path:
    """A dataset of ``len(tasks) * episodes_per_task`` episodes of ``length`` frames: states ~ N(shift,
    scale^2), actions ~ U(shift - scale, shift + scale), plus one camera (PNG frames) if asked."""
    rng = np.random.default_rng(seed)
    features = {
        STATE_KEY: {"dtype": "float32", "shape": [state_dim]},
        ACTION_KEY: {"dtype": "float32", "shape": [action_dim]},
    }
    if camera:
        features[image_key(camera)] = {"dtype": "image", "shape": [image_size, image_size, 3]}
    with LeRobotDatasetWriter(root, fps=fps, features=features) as writer:
        for task in tasks:
            for _ in range(episodes_per_task):
                for _ in range(length):
                    frame = {
                        STATE_KEY: shift + scale * rng.normal(size=state_dim),
                        ACTION_KEY: shift + scale * rng.uniform(-1, 1, size=action_dim),
                    }
                    if camera:
                        frame[image_key(camera)] = rng.integers(0, 256, (image_size, image_size, 3), np.uint8)
                    writer.add_frame(frame)
                writer.save_episode(task=task)
    return Path(root)
