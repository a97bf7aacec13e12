"""Datasets: the LeRobotDataset v3 layout (reader, writer, stats) and training windows; no simulator."""

from mode_policy.data.errors import DatasetError
from mode_policy.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from mode_policy.data.stats import compute_stats
from mode_policy.data.windows import ActionChunkDataset

__all__ = ["ActionChunkDataset", "DatasetError", "LeRobotDataset", "LeRobotDatasetWriter", "compute_stats"]
