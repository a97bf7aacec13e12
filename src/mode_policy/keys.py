"""The feature and batch names every layer shares (LeRobot's names), spelled once."""

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_KEY_PREFIX = "observation.images."
TASK_KEY = "task"
TASK_INDEX_KEY = "task_index"
ACTION_IS_PAD_KEY = "action_is_pad"
OBSERVATION_IS_PAD_KEY = "observation_is_pad"
DATASET_INDEX_KEY = "dataset_index"  # which dataset of a training mixture a sample came from


def image_key(camera: str) -> str:
    """``"corner"`` -> ``"observation.images.corner"``."""
    return IMAGE_KEY_PREFIX + camera
