"""Small, valid inputs to damage: a state dataset, camera datasets, a saved policy, a training run.

Everything is written by our own writer from random numbers (no simulator): the files only have to be
what the commands read, not good demonstrations. Damage helpers edit one file of a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mode_policy.data.writer import LeRobotDatasetWriter
from mode_policy.keys import ACTION_KEY, STATE_KEY, image_key

# Meta-World's layout and instructions, so that the same policy trains here and evaluates in the simulator.
TASKS = ("reach-v3", "drawer-close-v3")
INSTRUCTIONS = ("reach the goal position", "close the drawer")
STATE_DIM, ACTION_DIM = 39, 4
# A policy whose training step takes milliseconds.
TINY_POLICY = [
    "--set", "language_encoder=onehot", "--set", "denoiser.width=16", "--set", "denoiser.depth=1",
    "--set", "denoiser.heads=2", "--set", "num_inference_steps=2",
]  # fmt: skip

DATA_FILE = "data/chunk-000/file-000.parquet"
EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"


def write_dataset(
    root: Path,
    *,
    episodes_per_task: int = 2,
    length: int = 12,
    camera: str | None = None,
    image_format: str = "image",
    image_size: int = 40,
    with_action: bool = True,
    seed: int = 0,
) -> Path:
    """A LeRobot v3 dataset of random 39-d states and 4-d actions in [-1, 1] (plus one camera if asked)."""
    rng = np.random.default_rng(seed)
    features = {STATE_KEY: {"dtype": "float32", "shape": [STATE_DIM]}}
    if with_action:
        features[ACTION_KEY] = {"dtype": "float32", "shape": [ACTION_DIM]}
    if camera:
        features[image_key(camera)] = {"dtype": image_format, "shape": [image_size, image_size, 3]}
    with LeRobotDatasetWriter(root, fps=80, features=features, robot_type="sawyer") as writer:
        for instruction in INSTRUCTIONS:
            for _ in range(episodes_per_task):
                for _ in range(length):
                    frame = {STATE_KEY: rng.normal(size=STATE_DIM)}
                    if with_action:
                        frame[ACTION_KEY] = rng.uniform(-1, 1, size=ACTION_DIM)
                    if camera:
                        frame[image_key(camera)] = rng.integers(0, 256, (image_size, image_size, 3), np.uint8)
                    writer.add_frame(frame)
                writer.save_episode(task=instruction)
    return root


def write_policy(root: Path, *, num_experts: int = 4) -> Path:
    """An untrained tiny MoDE policy for the Meta-World tasks above, saved with save_pretrained."""
    import torch

    from mode_policy.policies import MoDEPolicy, MoDEPolicyConfig

    torch.manual_seed(0)
    config = MoDEPolicyConfig.from_dict({
        "language_encoder": "onehot",
        "tasks": list(INSTRUCTIONS),
        "num_inference_steps": 2,
        "denoiser": {"width": 16, "depth": 1, "heads": 2, "num_experts": num_experts,
                     "top_k": min(2, num_experts)},
    })  # fmt: skip
    ones = np.ones(STATE_DIM)
    stats = {
        STATE_KEY: {"mean": 0 * ones, "std": ones, "min": -ones, "max": ones},
        ACTION_KEY: {"mean": np.zeros(4), "std": np.ones(4), "min": -np.ones(4), "max": np.ones(4)},
    }
    return MoDEPolicy(config, stats).save_pretrained(root)


def copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def edit_json(path: Path, edit) -> None:
    values = json.loads(path.read_text())
    edit(values)
    path.write_text(json.dumps(values))


def edit_parquet(path: Path, column: str, edit) -> None:
    """Rewrite one column of a parquet file: ``edit(numpy values) -> numpy values`` (same shape)."""
    table = pq.read_table(path)
    array = table.column(column).combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        values = array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), -1).copy()
        flat = pa.array(edit(values).reshape(-1), type=array.type.value_type)
        new = pa.FixedSizeListArray.from_arrays(flat, array.type.list_size)
    else:
        new = pa.array(edit(array.to_numpy(zero_copy_only=False).copy()), type=array.type)
    table = table.set_column(table.schema.get_field_index(column), column, new)
    pq.write_table(table, path)
