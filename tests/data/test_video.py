"""Camera features in the LeRobot v3 layout: MP4 (PyAV) and PNG round trips, decode speed."""

import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from mode_policy.data import ActionChunkDataset, LeRobotDataset, LeRobotDatasetWriter

pytest.importorskip("av", reason="PyAV is needed for MP4 features: pip install 'mode-policy[vision]'")

# Mean absolute error (uint8 levels) allowed for MP4 (h264, yuv420p, crf 18) on smooth synthetic frames.
MP4_MAE = 4.0


def _frame(t: int, ep: int, h: int = 32, w: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 4 + t * 2, yy * 5 + ep * 30, 128 + 0 * xx], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(root, dtype):
    frames = []
    rng = np.random.default_rng(0)
    features = {
        "observation.state": {"dtype": "float32", "shape": [3]},
        "action": {"dtype": "float32", "shape": [2]},
        "observation.images.cam": {"dtype": dtype, "shape": [32, 48, 3]},
    }
    with LeRobotDatasetWriter(root, 10, features) as writer:
        for ep in range(3):
            for t in range(6 + 2 * ep):
                frames.append(_frame(t, ep))
                writer.add_frame(
                    {
                        "observation.state": rng.normal(size=3),
                        "action": rng.normal(size=2),
                        "observation.images.cam": frames[-1],
                    }
                )
            writer.save_episode(task=f"task {ep % 2}")
    return LeRobotDataset(root), np.stack(frames)


def test_png_round_trip_is_exact(tmp_path):
    dataset, frames = _write(tmp_path / "png", "image")
    assert dataset.camera_keys == ["observation.images.cam"]
    column = pq.read_table(dataset.root / "data/chunk-000/file-000.parquet").column("observation.images.cam")
    assert column.type.names == ["bytes", "path"]  # LeRobot's {bytes, path} image struct
    assert np.array_equal(dataset.images("observation.images.cam"), frames)
    assert dataset.stats["observation.images.cam"]["mean"].shape == (3, 1, 1)


def test_mp4_round_trip_within_error(tmp_path):
    dataset, frames = _write(tmp_path / "mp4", "video")
    feature = dataset.features["observation.images.cam"]
    assert feature["info"]["video.codec"] == "h264" and dataset.info["video_path"].startswith("videos/")
    assert (dataset.root / "videos/observation.images.cam/chunk-000/file-000.mp4").is_file()
    ep = dataset.episodes[1]
    assert ep["videos/observation.images.cam/from_timestamp"] == pytest.approx(0.6)
    assert ep["videos/observation.images.cam/to_timestamp"] == pytest.approx(1.4)
    decoded = dataset.images("observation.images.cam", cache_dir=tmp_path / "cache")
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(np.int16) - frames).mean() < MP4_MAE
    # The memory-mapped cache is reused by a fresh dataset object.
    again = LeRobotDataset(dataset.root).images("observation.images.cam", cache_dir=tmp_path / "cache")
    assert np.array_equal(again, decoded)


def test_windows_with_images_and_decode_speed(tmp_path):
    dataset, frames = _write(tmp_path / "mp4", "video")
    start = time.perf_counter()
    windows = ActionChunkDataset(
        dataset, n_obs_steps=2, chunk_size=4, image_keys=["observation.images.cam"], state_key=None
    )
    frames_per_s = len(frames) / (time.perf_counter() - start)
    item = windows[7]
    assert "observation.state" not in item
    assert item["observation.images.cam"].shape == (2, 3, 32, 48)
    assert item["observation.images.cam"].dtype.is_floating_point is False
    assert frames_per_s > 50  # decoding is never the bottleneck at these sizes (measured ~2000/s at 48 px)
