"""A small dataset laid out byte-for-byte the way LeRobot (v3.0) itself writes one, built without our writer.

It mimics LeRobot's own choices independently: HF ``datasets`` column types and ``huggingface`` schema
metadata, a pandas-indexed tasks.parquet, episode metadata with video and per-episode stats columns, a
camera stored as video (listed in info.json, absent from the parquet), and data split over two files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STATE_DIM, ACTION_DIM = 6, 6
LENGTHS = (7, 4, 9)
TASKS = ("Pick up the cube.", "Open the drawer.")
EPISODE_TASK = (0, 1, 0)
FPS = 30


def _fixed(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), values.shape[1])


def _pandas_meta(index_name: str | None) -> bytes:
    field = index_name or "__index_level_0__"
    return json.dumps(
        {
            "index_columns": [field],
            "column_indexes": [
                {
                    "name": None,
                    "field_name": None,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": {"encoding": "UTF-8"},
                }
            ],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": index_name,
                    "field_name": field,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
            "creator": {"library": "pyarrow", "version": "21.0.0"},
            "pandas_version": "2.3.1",
        }
    ).encode()


def write_lerobot_style_dataset(root: Path, *, task_index_name: str | None = "task", seed: int = 0) -> dict:
    """Write the fixture at ``root``; returns the arrays it wrote (for comparisons)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    motors = [f"joint_{i}" for i in range(STATE_DIM - 1)] + ["gripper"]
    features = {
        "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": motors},
        "observation.state": {"dtype": "float32", "shape": [STATE_DIM], "names": motors},
        "observation.images.top": {
            "dtype": "video",
            "shape": [480, 640, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": 480,
                "video.width": 640,
                "video.codec": "av1",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": FPS,
                "video.channels": 3,
                "has_audio": False,
            },
        },
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    n = sum(LENGTHS)
    ep_of_row = np.repeat(np.arange(len(LENGTHS)), LENGTHS)
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
    frame_index = np.arange(n) - starts[ep_of_row]
    data = {
        "action": rng.normal(size=(n, ACTION_DIM)).astype(np.float32),
        "observation.state": rng.normal(size=(n, STATE_DIM)).astype(np.float32),
        "timestamp": (frame_index / FPS).astype(np.float32),
        "frame_index": frame_index.astype(np.int64),
        "episode_index": ep_of_row.astype(np.int64),
        "index": np.arange(n, dtype=np.int64),
        "task_index": np.asarray(EPISODE_TASK)[ep_of_row].astype(np.int64),
    }
    hf = {
        "action": {
            "feature": {"dtype": "float32", "_type": "Value"},
            "length": ACTION_DIM,
            "_type": "Sequence",
        },
        "observation.state": {
            "feature": {"dtype": "float32", "_type": "Value"},
            "length": STATE_DIM,
            "_type": "Sequence",
        },
        **{
            k: {"dtype": features[k]["dtype"], "_type": "Value"}
            for k in ("timestamp", "frame_index", "episode_index", "index", "task_index")
        },
    }
    # Episodes 0-1 in file-000, episode 2 in file-001 (as if the first file had hit its size limit).
    files = [(0, 0, slice(0, LENGTHS[0] + LENGTHS[1])), (0, 1, slice(LENGTHS[0] + LENGTHS[1], n))]
    for chunk, file, rows in files:
        arrays = {k: (_fixed(v[rows]) if v.ndim == 2 else pa.array(v[rows])) for k, v in data.items()}
        table = pa.table(arrays).replace_schema_metadata(
            {"huggingface": json.dumps({"info": {"features": hf}})}
        )
        path = root / f"data/chunk-{chunk:03d}/file-{file:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="snappy")

    field = task_index_name or "__index_level_0__"
    tasks = pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), field: list(TASKS)})
    (root / "meta").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        tasks.replace_schema_metadata({"pandas": _pandas_meta(task_index_name)}), root / "meta/tasks.parquet"
    )

    episodes: dict[str, list] = {
        k: []
        for k in (
            "episode_index",
            "tasks",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
            "videos/observation.images.top/chunk_index",
            "videos/observation.images.top/file_index",
            "videos/observation.images.top/from_timestamp",
            "videos/observation.images.top/to_timestamp",
        )
    }
    stats_cols: dict[str, list] = {}
    for ep, length in enumerate(LENGTHS):
        rows = slice(starts[ep], starts[ep] + length)
        file = 0 if ep < 2 else 1
        t0 = float(sum(LENGTHS[:ep]) / FPS)
        for key, value in (
            ("episode_index", ep),
            ("tasks", [TASKS[EPISODE_TASK[ep]]]),
            ("length", length),
            ("data/chunk_index", 0),
            ("data/file_index", file),
            ("dataset_from_index", int(starts[ep])),
            ("dataset_to_index", int(starts[ep] + length)),
            ("videos/observation.images.top/chunk_index", 0),
            ("videos/observation.images.top/file_index", 0),
            ("videos/observation.images.top/from_timestamp", t0),
            ("videos/observation.images.top/to_timestamp", t0 + length / FPS),
        ):
            episodes[key].append(value)
        for name, values in data.items():
            v = values[rows].astype(np.float64).reshape(length, -1)
            for stat, value in (
                ("min", v.min(0)),
                ("max", v.max(0)),
                ("mean", v.mean(0)),
                ("std", v.std(0)),
                ("count", np.array([length])),
            ):
                stats_cols.setdefault(f"stats/{name}/{stat}", []).append(value.tolist())
        for stat in ("min", "max", "mean", "std"):
            stats_cols.setdefault(f"stats/observation.images.top/{stat}", []).append(
                [[[0.5]], [[0.5]], [[0.5]]]
            )
        stats_cols.setdefault("stats/observation.images.top/count", []).append([100])
    episodes.update(stats_cols)
    episodes["meta/episodes/chunk_index"] = [0] * len(LENGTHS)
    episodes["meta/episodes/file_index"] = [0] * len(LENGTHS)
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(episodes), path)

    stats = {}
    for name, values in data.items():
        v = values.astype(np.float64).reshape(n, -1)
        stats[name] = {
            "min": v.min(0).tolist(),
            "max": v.max(0).tolist(),
            "mean": v.mean(0).tolist(),
            "std": v.std(0).tolist(),
            "count": [n],
        }
    stats["observation.images.top"] = {k: [[[0.5]], [[0.5]], [[0.5]]] for k in ("min", "max", "mean", "std")}
    stats["observation.images.top"]["count"] = [300]
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=4))

    info = {
        "codebase_version": "v3.0",
        "robot_type": "so100_follower",
        "total_episodes": len(LENGTHS),
        "total_frames": n,
        "total_tasks": len(TASKS),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": FPS,
        "splits": {"train": f"0:{len(LENGTHS)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features,
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return data
