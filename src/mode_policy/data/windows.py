"""Training windows: an observation history and the action chunk that follows, one item per frame."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mode_policy.data.lerobot import LeRobotDataset
from mode_policy.keys import ACTION_IS_PAD_KEY, ACTION_KEY, OBSERVATION_IS_PAD_KEY, STATE_KEY


class ActionChunkDataset(Dataset):
    """Every frame ``t`` of ``dataset`` as one training item (LeRobot batch names, raw values).

    Item fields (unbatched; the default collate stacks tensors and turns ``task`` into a list[str]):
      observation.state   (n_obs_steps, state_dim) float32  frames t-n_obs_steps+1 .. t (unless
                                                            state_key=None)
      <image key>         (n_obs_steps, 3, H, W) uint8      per camera in ``image_keys`` (same frames);
                                                            decoded once up front (LeRobotDataset.images)
      observation_is_pad  (n_obs_steps,) bool               True where the history reaches before the
                                                            episode start; those rows repeat the first frame
      action              (chunk_size, action_dim) float32  actions t .. t+chunk_size-1
      action_is_pad       (chunk_size,) bool                True past the episode end; those rows repeat
                                                            the last action
      task                str                               the instruction of frame t
      task_index, episode_index, frame_index                int64 scalars

    An item is a few contiguous row reads (from RAM, or from the column cache of a dataset stored on
    disk); nothing is kept per frame, so the index of a dataset of any size costs O(episodes) memory.
    """

    def __init__(
        self,
        dataset: LeRobotDataset,
        n_obs_steps: int = 1,
        chunk_size: int = 10,
        *,
        state_key: str | None = STATE_KEY,
        action_key: str = ACTION_KEY,
        image_keys: tuple[str, ...] | list[str] = (),
        image_cache_dir: str | None = None,
    ) -> None:
        if n_obs_steps < 1 or chunk_size < 1:
            raise ValueError(f"n_obs_steps and chunk_size must be >= 1, got {n_obs_steps} and {chunk_size}")
        self.dataset = dataset
        self.n_obs_steps = n_obs_steps
        self.chunk_size = chunk_size
        self.state_key = state_key
        # (frames, dim) arrays, or DiskColumns read per item; rows of shape (1,) features get their dim back.
        self.action = _as_rows(dataset.column(action_key))
        self.state = _as_rows(dataset.column(state_key)) if state_key is not None else None
        # (frames, H, W, 3) uint8 per camera; an item transposes its few rows to (T, 3, H, W).
        self.images = {key: dataset.images(key, cache_dir=image_cache_dir) for key in image_keys}
        self.task_index = dataset.column("task_index")
        # Per episode (in row order): its first row and episode_index; a frame's episode is a binary search.
        self.episode_first = np.array([ep["dataset_from_index"] for ep in dataset.episodes], dtype=np.int64)
        self.episode_after = np.array([ep["dataset_to_index"] for ep in dataset.episodes], dtype=np.int64)
        self.episode_ids = np.array([ep["episode_index"] for ep in dataset.episodes], dtype=np.int64)
        self._obs_offsets = np.arange(-n_obs_steps + 1, 1, dtype=np.int64)
        self._action_offsets = np.arange(chunk_size, dtype=np.int64)
        self.tasks = list(dataset.tasks)

    @property
    def state_dim(self) -> int:
        if self.state is None:
            raise AttributeError("this ActionChunkDataset has no state (state_key=None)")
        return int(np.prod(self.state.shape[1:]))

    @property
    def action_dim(self) -> int:
        return int(np.prod(self.action.shape[1:]))

    def __len__(self) -> int:
        return len(self.action)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        episode = int(np.searchsorted(self.episode_first, index, side="right")) - 1
        first, last = int(self.episode_first[episode]), int(self.episode_after[episode]) - 1
        obs_rows = index + self._obs_offsets
        obs_pad = obs_rows < first
        obs_rows = np.maximum(obs_rows, first)
        action_rows = index + self._action_offsets
        action_pad = action_rows > last
        action_rows = np.minimum(action_rows, last)
        task_index = int(self.task_index[index])
        item: dict[str, Any] = {}
        if self.state is not None:
            item[self.state_key] = torch.from_numpy(_float_rows(self.state[obs_rows]))
        for key, frames in self.images.items():
            item[key] = torch.from_numpy(np.ascontiguousarray(frames[obs_rows].transpose(0, 3, 1, 2)))
        return {
            **item,
            OBSERVATION_IS_PAD_KEY: torch.from_numpy(obs_pad),
            ACTION_KEY: torch.from_numpy(_float_rows(self.action[action_rows])),
            ACTION_IS_PAD_KEY: torch.from_numpy(action_pad),
            "task": self.tasks[task_index],
            "task_index": torch.tensor(task_index, dtype=torch.int64),
            "episode_index": torch.tensor(int(self.episode_ids[episode]), dtype=torch.int64),
            "frame_index": torch.tensor(index - first, dtype=torch.int64),
        }


def _as_rows(values: Any) -> Any:
    """(frames, dim) float32 of an in-RAM column; a DiskColumn stays on disk (its rows convert per item)."""
    if not isinstance(values, np.ndarray):
        return values
    return _float_rows(values)


def _float_rows(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    return np.ascontiguousarray(values.reshape(len(values), -1))
