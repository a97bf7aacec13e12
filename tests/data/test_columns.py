"""Datasets read from the on-disk column cache: the same rows, windows and stats as in RAM, bounded memory."""

import json
import os
import pickle

import numpy as np
import pytest

from mode_policy.data import writer as writer_module
from mode_policy.data.columns import DiskColumn
from mode_policy.data.errors import DatasetError
from mode_policy.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from mode_policy.data.stats import feature_stats
from mode_policy.data.windows import ActionChunkDataset
from tests.data.lerobot_fixture import write_lerobot_style_dataset
from tests.data.test_lerobot import FEATURES


def write_episodes(root, lengths=(5, 9, 3, 7), data_files_size_in_mb=100.0):
    """Episodes written with add_episode; returns what was written, in row order."""
    rng = np.random.default_rng(1)
    written = {"observation.state": [], "action": []}
    with LeRobotDatasetWriter(
        root, fps=10, features=FEATURES, data_files_size_in_mb=data_files_size_in_mb
    ) as writer:
        for number, length in enumerate(lengths):
            episode = {
                "observation.state": rng.normal(size=(length, 3)),
                "action": rng.normal(size=(length, 2)),
            }
            writer.add_episode(episode, task=f"task {number % 2}")
            for key, values in episode.items():
                written[key].append(values.astype(np.float32))
    return {key: np.concatenate(parts) for key, parts in written.items()}


@pytest.fixture
def two_files(tmp_path):
    """A dataset whose data parquet rolls over to several files (tiny file size limit)."""
    written = write_episodes(tmp_path / "ds", data_files_size_in_mb=1e-4)
    assert len(list((tmp_path / "ds" / "data").glob("*/*.parquet"))) > 1
    return tmp_path / "ds", written


def test_disk_storage_serves_the_same_rows_windows_and_stats_as_memory(two_files, tmp_path):
    root, written = two_files
    memory = LeRobotDataset(root, storage="memory")
    disk = LeRobotDataset(root, storage="disk", cache_dir=tmp_path / "cache")
    assert memory.storage == "memory" and disk.storage == "disk"
    state = disk.column("observation.state")
    assert isinstance(state, DiskColumn) and state.shape == (24, 3)
    np.testing.assert_array_equal(np.asarray(state), written["observation.state"])
    np.testing.assert_array_equal(np.asarray(disk.column("episode_index")), memory.column("episode_index"))
    np.testing.assert_array_equal(state[3:11], written["observation.state"][3:11])
    np.testing.assert_array_equal(state[np.array([7, 5, 5, 9])], written["observation.state"][[7, 5, 5, 9]])
    assert disk.episodes == memory.episodes
    for key in ("min", "max", "mean", "std", "count"):
        np.testing.assert_allclose(disk.stats["action"][key], memory.stats["action"][key], rtol=1e-6)
    in_ram = ActionChunkDataset(memory, n_obs_steps=2, chunk_size=4)
    on_disk = ActionChunkDataset(disk, n_obs_steps=2, chunk_size=4)
    assert len(on_disk) == len(in_ram) == 24 and on_disk.state_dim == 3 and on_disk.action_dim == 2
    for index in range(len(in_ram)):
        a, b = in_ram[index], on_disk[index]
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert value == b[key] if isinstance(value, str) else bool((value == b[key]).all()), (index, key)


def test_the_cache_is_reused_and_rebuilt_when_a_data_file_changes(two_files, tmp_path):
    root, _ = two_files
    cache = tmp_path / "cache"
    LeRobotDataset(root, storage="disk", cache_dir=cache)
    built = (cache / "action.npy").stat().st_mtime_ns
    LeRobotDataset(root, storage="disk", cache_dir=cache)
    assert (cache / "action.npy").stat().st_mtime_ns == built  # reused, not rewritten
    # The same dataset written again with other values: the cache follows the files, not the folder name.
    changed = write_episodes(tmp_path / "other", lengths=(5, 9, 3, 7))
    for path in (root / "data").glob("*/*.parquet"):
        path.unlink()
    for path in (tmp_path / "other").rglob("*"):
        if path.is_file():
            target = root / path.relative_to(tmp_path / "other")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    reopened = LeRobotDataset(root, storage="disk", cache_dir=cache)
    np.testing.assert_array_equal(np.asarray(reopened.column("action")), changed["action"])
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".stale-" in p.name]


def test_rows_are_checked_when_the_cache_is_built(tmp_path):
    import pyarrow.parquet as pq

    root = tmp_path / "ds"
    write_episodes(root)
    path = next((root / "data").glob("*/*.parquet"))
    table = pq.read_table(path)
    frames = table.column("frame_index").to_numpy().copy()
    frames[6] = 0
    table = table.set_column(table.schema.get_field_index("frame_index"), "frame_index", [frames])
    pq.write_table(table, path)
    with pytest.raises(DatasetError, match=r"column 'frame_index' is 0 at row 6, expected 1"):
        LeRobotDataset(root, storage="disk", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # a failed build leaves no cache that later opens could trust


def test_auto_storage_goes_to_disk_past_the_memory_limit(two_files, tmp_path, monkeypatch):
    import mode_policy.data.lerobot as lerobot

    root, _ = two_files
    assert LeRobotDataset(root).storage == "memory"
    monkeypatch.setattr(lerobot, "MEMORY_LIMIT_BYTES", 100)
    monkeypatch.setenv("MODE_POLICY_CACHE", str(tmp_path / "cache-home"))
    dataset = LeRobotDataset(root)
    assert dataset.storage == "disk"
    assert str(dataset.column("action").path).startswith(str(tmp_path / "cache-home"))
    with pytest.raises(ValueError, match="storage must be one of"):
        LeRobotDataset(root, storage="ssd")


def test_missing_stats_are_computed_from_the_cache(tmp_path):
    root = tmp_path / "lerobot"
    write_lerobot_style_dataset(root)
    (root / "meta" / "stats.json").unlink()
    memory = LeRobotDataset(root, storage="memory")
    disk = LeRobotDataset(root, storage="disk", cache_dir=tmp_path / "cache")
    for key in ("min", "max", "mean", "std", "q50"):
        np.testing.assert_allclose(disk.stats["action"][key], memory.stats["action"][key], rtol=1e-5)


def test_disk_column_reads_only_what_is_asked_and_survives_pickling(two_files, tmp_path):
    root, written = two_files
    column = LeRobotDataset(root, storage="disk", cache_dir=tmp_path / "cache").column("action")
    clone = pickle.loads(pickle.dumps(column))
    np.testing.assert_array_equal(clone[-1], written["action"][-1])
    np.testing.assert_array_equal(clone[2:20:3], written["action"][2:20:3])
    with pytest.raises(IndexError):
        clone[24]
    with pytest.raises(IndexError):
        clone[np.array([0, 24])]
    with pytest.raises(TypeError):
        clone[np.array([0.5])]
    if hasattr(os, "fork"):  # a forked DataLoader worker opens its own descriptor
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, json.dumps(clone[5].tolist()).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        np.testing.assert_allclose(json.loads(os.read(read, 4096)), written["action"][5])


def test_add_episode_writes_what_add_frame_writes(tmp_path):
    from tests.data.test_lerobot import write_small

    per_frame = write_small(tmp_path / "frames", lengths=(4, 6), tasks=("push it", "pull it"))
    with LeRobotDatasetWriter(tmp_path / "bulk", fps=10, features=FEATURES, robot_type="toy") as writer:
        writer.add_episode({k: v[:4] for k, v in per_frame.items()}, task="push it")
        writer.add_episode({k: v[4:] for k, v in per_frame.items()}, task="pull it")
        with pytest.raises(ValueError, match="missing \\['action'\\]"):
            writer.add_episode({"observation.state": per_frame["observation.state"]}, task="x")
        with pytest.raises(ValueError, match="same number"):
            writer.add_episode({"observation.state": np.zeros((3, 3)), "action": np.zeros((2, 2))}, task="x")
    a, b = LeRobotDataset(tmp_path / "frames"), LeRobotDataset(tmp_path / "bulk")
    for name in ("observation.state", "action", "index", "task_index", "frame_index"):
        np.testing.assert_array_equal(a.column(name), b.column(name))
    assert a.stats["action"]["q01"].tolist() == b.stats["action"]["q01"].tolist()


def test_a_long_recording_merges_the_episodes_stats(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "EXACT_STATS_BYTES", 200)  # past it after the first episodes
    written = write_episodes(tmp_path / "ds", lengths=(5, 9, 3, 7, 8))
    dataset = LeRobotDataset(tmp_path / "ds")  # loads: the merged stats describe the data
    exact = feature_stats(written["action"])
    for key in ("min", "max", "mean", "std", "count"):
        np.testing.assert_allclose(dataset.stats["action"][key], exact[key], rtol=1e-6, atol=1e-9)
    assert not np.allclose(dataset.stats["action"]["q10"], exact["q10"])  # quantiles: episode averages


def test_files_decoded_on_threads_arrive_in_order_and_the_first_bad_file_is_named(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from mode_policy.data import lerobot

    root = tmp_path / "ds"
    written = write_episodes(root, lengths=(4, 6, 5, 8, 3, 7, 2, 9), data_files_size_in_mb=1e-4)
    files = sorted((root / "data").glob("*/*.parquet"))
    assert len(files) >= 4
    monkeypatch.setattr(lerobot, "SCAN_THREADS", 3)
    for storage in ("memory", "disk"):  # rows in row order whatever thread decoded them
        dataset = LeRobotDataset(root, storage=storage, cache_dir=tmp_path / f"cache-{storage}")
        np.testing.assert_array_equal(
            np.asarray(dataset.column("observation.state")), written["observation.state"]
        )
    for path in (files[1], files[3]):  # both damaged: the earlier one is reported
        table = pq.read_table(path)
        state = np.asarray(table.column("observation.state").to_pylist(), dtype=np.float32)
        state[0, 0] = np.nan
        column = table.schema.get_field_index("observation.state")
        pq.write_table(table.set_column(column, "observation.state", [list(state)]), path)
    with pytest.raises(DatasetError, match="NaN") as error:
        LeRobotDataset(root, storage="disk", cache_dir=tmp_path / "cache-bad")
    assert str(files[1]) in str(error.value)


def test_ordered_map_keeps_order_bounds_look_ahead_and_raises_where_due():
    import threading
    import time

    from mode_policy.data.lerobot import ordered_map

    running, most = [0], [0]
    lock = threading.Lock()

    def work(item):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01 * (5 - item % 5))  # later items finish first
        with lock:
            running[0] -= 1
        if item == 7:
            raise ValueError("item 7")
        return item * item

    results = ordered_map(work, range(12), 3)
    assert [next(results) for _ in range(7)] == [i * i for i in range(7)]
    assert most[0] <= 3
    with pytest.raises(ValueError, match="item 7"):
        next(results)


def test_the_blockwise_column_summary_equals_the_direct_one():
    from mode_policy.data.stats import column_summary

    values = np.random.default_rng(0).normal(3.0, 2.0, size=(10_001, 2, 3)).astype(np.float32)
    summary = column_summary(values, block_rows=1000)
    flat = values.reshape(len(values), -1).astype(np.float64)
    for name, expected in (
        ("min", flat.min(0)),
        ("max", flat.max(0)),
        ("mean", flat.mean(0)),
        ("std", flat.std(0)),
    ):
        np.testing.assert_allclose(summary[name], expected, rtol=1e-12, atol=1e-12)
    assert summary["count"].tolist() == [10_001]
