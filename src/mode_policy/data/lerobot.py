"""Read a LeRobotDataset v3 from a local folder, validating it on load.

Layout (as LeRobot writes it)::

    meta/info.json                                   codebase_version "v3.0", fps, features, totals, paths
    meta/stats.json                                  per-feature min/max/mean/std/count (+ quantiles)
    meta/tasks.parquet                               task string (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet         episode_index, tasks, length, dataset_from_index, ...
    data/chunk-000/file-000.parquet                  one row per frame: features + the index columns
    videos/<key>/chunk-000/file-000.mp4              camera streams (decoded on request by ``images()``)

Only numeric columns are loaded (state, action, indices), once, into NumPy; ``column()`` refuses image /
video features, which ``images(key)`` decodes (all frames once, see ``mode_policy.data.video``). No pandas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mode_policy.data.errors import DatasetError
from mode_policy.data.format import (
    DATA_DIR,
    EPISODES_DIR,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    column_to_numpy,
    feature_shape,
    is_numeric,
    parquet_rows,
    read_parquet,
    read_parquet_schema,
)
from mode_policy.data.stats import Stats, check_stats, compute_stats, stats_from_json
from mode_policy.data.writer import LeRobotDatasetWriter
from mode_policy.io import CorruptFileError, read_json

__all__ = ["LeRobotDataset", "LeRobotDatasetWriter"]

_COLLECT_HINT = "collect one with `mode-policy collect --suite mt10 --out DIR`"


class LeRobotDataset:
    """A local LeRobotDataset v3, fully validated at construction.

    Attributes: ``root``, ``info`` (meta/info.json), ``fps``, ``features`` (name -> dtype/shape/names),
    ``tasks`` (list[str], position = task_index), ``episodes`` (list of dicts with episode_index, length,
    tasks, dataset_from_index, dataset_to_index, sorted by episode_index), ``stats`` (feature -> stat ->
    array; from meta/stats.json, computed if absent), ``num_frames``, ``num_episodes``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.info = self._load_info()
        self.fps = self.info["fps"]
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        self._columns, self._data_files = self._load_data()
        self.num_frames = len(self._columns["index"]) if "index" in self._columns else self._num_rows
        self.num_episodes = len(self.episodes)
        self._validate_consistency()
        self.stats = self._load_stats()

    # ------------------------------------------------------------------ public
    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    def column(self, name: str) -> np.ndarray:
        """All frames of a numeric feature: ``(num_frames, *shape)``, or ``(num_frames,)`` for shape (1,)."""
        if name not in self.features:
            raise KeyError(
                f"no feature {name!r} in {self.root / INFO_PATH}; features: {sorted(self.features)}"
            )
        if name not in self._columns:
            raise DatasetError(
                f"{self.root / INFO_PATH}: feature {name!r} has dtype {self.features[name]['dtype']!r}; "
                "only numeric features are loaded (images and videos are not decoded by this reader)"
            )
        return self._columns[name]

    @property
    def camera_keys(self) -> list[str]:
        """Features holding camera frames (dtype "image" or "video"), e.g. ``observation.images.corner``."""
        return [name for name, ft in self.features.items() if ft.get("dtype") in ("image", "video")]

    def images(self, key: str, *, cache_dir: str | Path | None = None) -> np.ndarray:
        """Every frame of camera ``key``, in row order: (num_frames, H, W, 3) uint8, decoded once.

        Decoded arrays are kept on the dataset (a second call is free); ``cache_dir`` memory-maps them from
        ``<cache_dir>/<key>.npy`` so later processes skip decoding. Videos need PyAV
        (``mode-policy[vision]``).
        """
        cache = self.__dict__.setdefault("_images", {})
        if key not in cache:
            from mode_policy.data.video import decode_key

            cache[key] = decode_key(self, key, cache_dir=cache_dir)
        return cache[key]

    def episode_slice(self, episode: int) -> slice:
        """Rows of the ``episode``-th entry of ``episodes`` (position, not episode_index)."""
        ep = self.episodes[episode]
        return slice(ep["dataset_from_index"], ep["dataset_to_index"])

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset(root={str(self.root)!r}, episodes={self.num_episodes}, "
            f"frames={self.num_frames}, tasks={len(self.tasks)}, fps={self.fps})"
        )

    # ------------------------------------------------------------------ loading
    def _load_info(self) -> dict[str, Any]:
        path = self.root / INFO_PATH
        if not self.root.is_dir():
            raise DatasetError(
                f"{self.root}: no such dataset folder; pass the dataset root or {_COLLECT_HINT}"
            )
        if not path.is_file():
            raise DatasetError(
                f"{path}: missing, so {self.root} is not a (finished) LeRobotDataset; pass the folder that "
                f"holds meta/ and data/, or {_COLLECT_HINT}"
            )
        try:
            info = read_json(path, fix="restore the file or rewrite the dataset")
        except CorruptFileError as err:
            raise DatasetError(str(err)) from None
        if not isinstance(info, dict):
            raise DatasetError(f"{path}: must hold a JSON object (LeRobot v3.0 info.json)")
        for key in ("codebase_version", "fps", "features"):
            if key not in info:
                raise DatasetError(f"{path}: field {key!r} is missing; add it (LeRobot v3.0 info.json)")
        fps = info["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < float("inf"):
            raise DatasetError(
                f"{path}: field 'fps' must be a positive number of frames per second, got {fps!r}"
            )
        version = str(info["codebase_version"])
        if not version.startswith("v3"):
            raise DatasetError(
                f"{path}: field 'codebase_version' is {version!r}, this reader supports v3.x; "
                "convert it with LeRobot "
                "(`python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=...`)"
            )
        if not isinstance(info["features"], dict) or not info["features"]:
            raise DatasetError(
                f"{path}: field 'features' must be a non-empty mapping of feature name -> spec"
            )
        for name, ft in info["features"].items():
            if not isinstance(ft, dict) or "dtype" not in ft or "shape" not in ft:
                raise DatasetError(f"{path}: features[{name!r}] needs 'dtype' and 'shape'; add them")
            shape = ft["shape"]
            if (
                not isinstance(shape, list)
                or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
            ):
                raise DatasetError(
                    f"{path}: features[{name!r}].shape must be a list of positive integers, got {shape!r}"
                )
            if not isinstance(ft["dtype"], str):
                raise DatasetError(f"{path}: features[{name!r}].dtype must be a string, got {ft['dtype']!r}")
            if is_numeric(ft):
                try:
                    np.dtype(ft["dtype"])
                except TypeError as err:
                    raise DatasetError(
                        f"{path}: features[{name!r}].dtype {ft['dtype']!r} is not a known dtype; "
                        "use a NumPy dtype name such as 'float32' or 'int64'"
                    ) from err
        for name in ("episode_index", "frame_index"):
            if name not in info["features"]:
                raise DatasetError(f"{path}: features has no {name!r}; every LeRobot dataset declares it")
        return info

    def _load_tasks(self) -> list[str]:
        path = self.root / TASKS_PATH
        if not path.is_file():
            raise DatasetError(
                f"{path}: missing; it maps each task string to its task_index; rewrite the dataset"
            )
        table = read_parquet(path)
        if "task_index" not in table.column_names:
            raise DatasetError(f"{path}: column 'task_index' is missing; columns are {table.column_names}")
        task_column = _task_string_column(table)
        if task_column is None:
            raise DatasetError(
                f"{path}: no task string column (expected the pandas index 'task' or '__index_level_0__'); "
                f"columns are {table.column_names}"
            )
        indices = table.column("task_index").to_pylist()
        strings = table.column(task_column).to_pylist()
        if not all(isinstance(t, str) for t in strings):
            raise DatasetError(f"{path}: column {task_column!r} must hold one task string per row")
        if not all(isinstance(i, int) for i in indices) or sorted(indices) != list(range(len(indices))):
            raise DatasetError(
                f"{path}: field 'task_index' must number tasks 0..{len(indices) - 1} once each, "
                f"got {sorted(indices)}"
            )
        tasks = [""] * len(indices)
        for index, task in zip(indices, strings, strict=True):
            tasks[index] = task
        return tasks

    def _load_episodes(self) -> list[dict[str, Any]]:
        files = sorted((self.root / EPISODES_DIR).glob("*/*.parquet"))
        if not files:
            raise DatasetError(
                f"{self.root / EPISODES_DIR}: no episode metadata files (chunk-XXX/file-YYY.parquet); the "
                f"dataset has no episodes or was not finalized; {_COLLECT_HINT}"
            )
        required = ("episode_index", "length", "dataset_from_index", "dataset_to_index")
        episodes: list[dict[str, Any]] = []
        for path in files:
            schema = read_parquet_schema(path)
            for name in required:
                if name not in schema.names:
                    raise DatasetError(f"{path}: column {name!r} is missing; rewrite the episode metadata")
            # Per-episode stats columns ("stats/...") are large and unused here: skip them like LeRobot.
            keep = [n for n in schema.names if not n.startswith("stats/") and n != "__index_level_0__"]
            rows = read_parquet(path, columns=keep).to_pylist()
            for row in rows:
                bad = [n for n in required if not isinstance(row[n], int) or isinstance(row[n], bool)]
                if bad:
                    raise DatasetError(
                        f"{path}: column {bad[0]!r} must hold integers, got {row[bad[0]]!r}; rewrite the "
                        "episode metadata"
                    )
                row["_file"] = path
            episodes.extend(rows)
        if not episodes:
            raise DatasetError(
                f"{self.root / EPISODES_DIR}: episode metadata holds no episodes; {_COLLECT_HINT}"
            )
        episodes.sort(key=lambda ep: ep["episode_index"])
        for ep in episodes:
            ep["tasks"] = list(ep.get("tasks") or [])
        return episodes

    def _load_data(self) -> tuple[dict[str, np.ndarray], list[Path]]:
        files = sorted((self.root / DATA_DIR).glob("*/*.parquet"))
        if not files:
            raise DatasetError(
                f"{self.root / DATA_DIR}: no data files (chunk-XXX/file-YYY.parquet, see info.json "
                "'data_path'); the dataset is incomplete; rewrite or re-download it"
            )
        numeric = [name for name, ft in self.features.items() if is_numeric(ft)]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in numeric}
        self._num_rows = 0
        for path in files:
            where = str(path)
            names = read_parquet_schema(path).names
            for name in numeric:
                if name not in names:
                    raise DatasetError(
                        f"{where}: column {name!r} is listed in meta/info.json features but missing from the "
                        "parquet file; remove it from info.json or rewrite the data"
                    )
            table = read_parquet(path, columns=numeric)
            self._num_rows += table.num_rows
            for name in numeric:
                parts[name].append(column_to_numpy(table.column(name), name, self.features[name], where))
        columns = {
            name: np.concatenate(chunks) if len(chunks) > 1 else chunks[0] for name, chunks in parts.items()
        }
        for name, values in columns.items():
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                row = int(np.argwhere(~np.isfinite(values.reshape(len(values), -1)))[0, 0])
                episode = int(columns["episode_index"][row]) if "episode_index" in columns else "?"
                raise DatasetError(
                    f"{self._file_of_row(files, row)}: column {name!r} has NaN/inf values "
                    f"(first at row {row}, episode {episode}); drop or re-record that episode"
                )
        return columns, files

    def _file_of_row(self, files: list[Path], row: int) -> str:
        start = 0
        for path in files:
            rows = parquet_rows(path)
            if row < start + rows:
                return str(path)
            start += rows
        return str(self.root / DATA_DIR)

    def _validate_consistency(self) -> None:
        info_path = self.root / INFO_PATH
        ep_path = self.root / EPISODES_DIR
        n = self.num_frames
        frm = np.array([ep["dataset_from_index"] for ep in self.episodes], dtype=np.int64)
        to = np.array([ep["dataset_to_index"] for ep in self.episodes], dtype=np.int64)
        lengths = np.array([ep["length"] for ep in self.episodes], dtype=np.int64)
        ids = np.array([ep["episode_index"] for ep in self.episodes], dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise DatasetError(
                f"{ep_path}: field 'episode_index' repeats an episode; rewrite the episode metadata"
            )
        bad = np.flatnonzero((to - frm != lengths) | (lengths <= 0))
        if bad.size:
            ep = self.episodes[bad[0]]
            raise DatasetError(
                f"{ep['_file']}: episode {ep['episode_index']} has "
                f"dataset_from_index={ep['dataset_from_index']}, dataset_to_index={ep['dataset_to_index']} "
                f"but length={ep['length']}; fix the episode metadata"
            )
        # Episodes must tile the data rows in order: [0, l0), [l0, l0 + l1), ... exactly as LeRobot writes.
        expected_from = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        bad = np.flatnonzero(frm != expected_from)
        if bad.size or to[-1] != n:
            ep = self.episodes[bad[0] if bad.size else -1]
            raise DatasetError(
                f"{ep['_file']}: episode {ep['episode_index']} covers rows [{ep['dataset_from_index']}, "
                f"{ep['dataset_to_index']}) but the episodes must tile the {n} data rows in order; "
                "the data or episode metadata is truncated or stale; rewrite the dataset"
            )
        episode_index = self._columns["episode_index"]
        row_bad = np.flatnonzero(episode_index != np.repeat(ids, lengths))
        if row_bad.size:
            row = int(row_bad[0])
            raise DatasetError(
                f"{self._file_of_row(self._data_files, row)}: column 'episode_index' is "
                f"{episode_index[row]} at row {row}, but {EPISODES_DIR} places that row in episode "
                f"{np.repeat(ids, lengths)[row]}; the episode index ranges are inconsistent with the data; "
                "rewrite the episode metadata"
            )
        frame_index = self._columns["frame_index"]
        expected_frames = np.arange(n) - np.repeat(frm, lengths)
        row_bad = np.flatnonzero(frame_index != expected_frames)
        if row_bad.size:
            row = int(row_bad[0])
            raise DatasetError(
                f"{self._file_of_row(self._data_files, row)}: column 'frame_index' is "
                f"{frame_index[row]} at row {row}, expected {expected_frames[row]} (frames of an episode "
                "must be stored in order); rewrite the data"
            )
        if "task_index" in self._columns and n:
            task_index = self._columns["task_index"]
            if task_index.min() < 0 or task_index.max() >= len(self.tasks):
                raise DatasetError(
                    f"{self._data_files[0]}: column 'task_index' ranges "
                    f"{task_index.min()}..{task_index.max()} but {TASKS_PATH} defines "
                    f"{len(self.tasks)} tasks; rewrite meta/tasks.parquet"
                )
        for key, actual in (("total_frames", n), ("total_episodes", len(self.episodes))):
            declared = self.info.get(key)
            if declared is not None and declared != actual:
                raise DatasetError(
                    f"{info_path}: field {key!r} is {declared} but the dataset holds {actual}; "
                    "the dataset is incomplete or info.json is stale; rewrite it"
                )
        for ep in self.episodes:
            if not ep["tasks"] and "task_index" in self._columns:
                first = int(self._columns["task_index"][ep["dataset_from_index"]])
                ep["tasks"] = [self.tasks[first]]
            del ep["_file"]

    def _load_stats(self) -> Stats:
        """meta/stats.json, checked against the data for every float feature; missing features computed."""
        path = self.root / STATS_PATH
        stats: Stats = {}
        fix = "delete meta/stats.json to recompute it from the data"
        if path.is_file():
            try:
                raw = read_json(path, fix=fix)
            except CorruptFileError as err:
                raise DatasetError(str(err)) from None
            if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
                raise DatasetError(f"{path}: must map each feature to its stats (min, max, ...); {fix}")
            try:
                stats = stats_from_json(raw)
            except (TypeError, ValueError) as err:
                raise DatasetError(f"{path}: not a valid stats file ({err}); {fix}") from None
            for name, values in stats.items():
                ft = self.features.get(name)
                if ft is None or not is_numeric(ft) or "mean" not in values:
                    continue
                if values["mean"].shape != feature_shape(ft):
                    raise DatasetError(
                        f"{path}: stats[{name!r}].mean has shape {list(values['mean'].shape)}, "
                        f"but meta/info.json declares {list(feature_shape(ft))}; {fix}"
                    )
            for name, column in self._columns.items():
                if name in stats and column.dtype.kind == "f":
                    problem = check_stats(stats[name], column)
                    if problem:
                        raise DatasetError(
                            f"{path}: stats[{name!r}] does not describe the data: {problem}; {fix}"
                        )
        missing = {n: ft for n, ft in self.features.items() if is_numeric(ft) and n not in stats}
        if missing:
            stats.update(compute_stats(self, missing))
        return stats


def _task_string_column(table: pa.Table) -> str | None:
    """Where tasks.parquet keeps the task strings: LeRobot writes them as the pandas index ('task' in recent
    versions, unnamed '__index_level_0__' in earlier v3 ones); fall back to any string column."""
    meta = table.schema.metadata or {}
    if b"pandas" in meta:
        try:
            index_columns = json.loads(meta[b"pandas"]).get("index_columns", [])
        except (ValueError, AttributeError, TypeError):  # damaged pandas metadata: look at the columns
            index_columns = []
        for col in index_columns:
            if isinstance(col, str) and col in table.column_names:
                return col
    for name in ("task", "__index_level_0__"):
        if name in table.column_names:
            return name
    for field in table.schema:
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            return field.name
    return None
