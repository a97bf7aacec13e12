import numpy as np
import torch
from torch.utils.data import DataLoader

from mode_policy.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from mode_policy.data.windows import ActionChunkDataset

FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [2], "names": None},
    "action": {"dtype": "float32", "shape": [1], "names": None},
}


def make_dataset(root, lengths=(3, 5)):
    """State = (row, episode), action = row, so every value names the frame it came from."""
    row = 0
    with LeRobotDatasetWriter(root, fps=10, features=FEATURES) as writer:
        for ep, length in enumerate(lengths):
            for _ in range(length):
                writer.add_frame({"observation.state": [row, ep], "action": [row]})
                row += 1
            writer.save_episode(task=f"task {ep}")
    return LeRobotDataset(root)


def test_windows_pad_at_episode_start_and_end(tmp_path):
    windows = ActionChunkDataset(make_dataset(tmp_path / "ds"), n_obs_steps=3, chunk_size=4)
    assert len(windows) == 8 and windows.state_dim == 2 and windows.action_dim == 1

    first = windows[0]  # episode 0, frame 0: history entirely before the start except itself
    assert first["observation.state"][:, 0].tolist() == [0, 0, 0]
    assert first["observation_is_pad"].tolist() == [True, True, False]
    assert first["action"][:, 0].tolist() == [0, 1, 2, 2]  # episode 0 ends at row 2: repeat its last action
    assert first["action_is_pad"].tolist() == [False, False, False, True]
    assert first["task"] == "task 0" and first["frame_index"].item() == 0

    item = windows[4]  # episode 1 (rows 3..7), frame 1
    assert item["observation.state"][:, 0].tolist() == [3, 3, 4]  # never reaches into episode 0
    assert item["observation_is_pad"].tolist() == [True, False, False]
    assert item["action"][:, 0].tolist() == [4, 5, 6, 7]
    assert not item["action_is_pad"].any()
    assert item["episode_index"].item() == 1 and item["task_index"].item() == 1 and item["task"] == "task 1"

    last = windows[-1]
    assert last["observation.state"][:, 0].tolist() == [5, 6, 7]
    assert not last["observation_is_pad"].any()
    assert last["action"][:, 0].tolist() == [7, 7, 7, 7]
    assert last["action_is_pad"].tolist() == [False, True, True, True]


def test_windows_collate_to_the_contract_batch(tmp_path):
    windows = ActionChunkDataset(make_dataset(tmp_path / "ds"), n_obs_steps=2, chunk_size=5)
    batch = next(iter(DataLoader(windows, batch_size=8, shuffle=False)))
    assert batch["observation.state"].shape == (8, 2, 2) and batch["observation.state"].dtype == torch.float32
    assert batch["observation_is_pad"].shape == (8, 2) and batch["observation_is_pad"].dtype == torch.bool
    assert batch["action"].shape == (8, 5, 1) and batch["action_is_pad"].dtype == torch.bool
    assert batch["task"] == ["task 0"] * 3 + ["task 1"] * 5
    for key in ("task_index", "episode_index", "frame_index"):
        assert batch[key].shape == (8,) and batch[key].dtype == torch.int64
    # Padded entries repeat real values, so they are finite and inside the data range.
    assert np.isfinite(batch["action"].numpy()).all()
