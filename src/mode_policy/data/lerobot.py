"""Read a LeRobotDataset v3 from a local folder, validating it on load.

Layout (as LeRobot writes it)::

    meta/info.json                                   codebase_version "v3.0", fps, features, totals, paths
    meta/stats.json                                  per-feature min/max/mean/std/count (+ quantiles)
    meta/tasks.parquet                               task string (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet         episode_index, tasks, length, dataset_from_index, ...
    data/chunk-000/file-000.parquet                  one row per frame: features + the index columns
    videos/<key>/chunk-000/file-000.mp4              camera streams (decoded on request by ``images()``)

Only numeric columns are loaded (state, action, indices), one data file at a time, each file's rows checked
against the episode metadata as it is decoded. Up to ``MEMORY_LIMIT_BYTES`` they are kept in RAM as NumPy
arrays; a larger dataset (``storage="disk"``, or "auto" past the limit) is decoded once into an on-disk
column cache that ``column()`` reads a few rows at a time (``mode_policy.data.columns``), so memory stays
bounded whatever the dataset's size. ``column()`` refuses image / video features, which ``images(key)``
decodes (all frames once, see ``mode_policy.data.video``). No pandas.
"""

from __future__ import annotations

import json
import os
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
from mode_policy.data.stats import (
    Stats,
    check_stats,
    column_summary,
    compute_stats,
    feature_stats,
    merge_stats,
    stats_from_json,
    stats_to_json,
)
from mode_policy.data.writer import LeRobotDatasetWriter
from mode_policy.io import CorruptFileError, read_json

__all__ = ["LeRobotDataset", "LeRobotDatasetWriter"]

_COLLECT_HINT = "collect one with `mode-policy collect --suite mt10 --out DIR`"
# storage="auto" keeps the numeric columns in RAM up to this size (``$MODE_POLICY_MEMORY_LIMIT_MB``, default
# 1024), else reads them from an on-disk cache.
MEMORY_LIMIT_BYTES = int(float(os.environ.get("MODE_POLICY_MEMORY_LIMIT_MB", "1024")) * 1024**2)
STORAGE_MODES = ("auto", "memory", "disk")
# Data files decoded at once when a dataset is opened (each holds one file's columns in memory).
SCAN_THREADS = min(4, os.cpu_count() or 1)


class LeRobotDataset:
    """A local LeRobotDataset v3, fully validated at construction.

    Attributes: ``root``, ``info`` (meta/info.json), ``fps``, ``features`` (name -> dtype/shape/names),
    ``tasks`` (list[str], position = task_index), ``episodes`` (list of dicts with episode_index, length,
    tasks, dataset_from_index, dataset_to_index, sorted by episode_index), ``stats`` (feature -> stat ->
    array; from meta/stats.json, computed if absent), ``num_frames``, ``num_episodes``, ``storage``
    ("memory" or "disk").

    storage: "memory" (numeric columns in RAM), "disk" (read from the column cache in ``cache_dir``, default
    ``$MODE_POLICY_CACHE`` or ``~/.cache/mode_policy``; built on first use, rebuilt when a data file
    changes) or "auto" (disk past ``MEMORY_LIMIT_BYTES`` of numeric data).
    """

    def __init__(
        self, root: str | Path, *, storage: str = "auto", cache_dir: str | Path | None = None
    ) -> None:
        self.root = Path(root)
        self.info = self._load_info()
        self.fps = self.info["fps"]
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        self.num_episodes = len(self.episodes)
        files, file_rows = self._find_data_files()
        self._data_files = files
        self.num_frames = int(file_rows.sum())
        self._episode_from, _, _, self._episode_ids = self._check_episodes(self.num_frames)
        self.storage = self._choose_storage(storage, self.num_frames)
        self._load_columns(files, file_rows, cache_dir)
        for ep in self.episodes:
            del ep["_file"]
            if not ep["tasks"] and "task_index" in self._columns:
                ep["tasks"] = [self.tasks[int(self._columns["task_index"][ep["dataset_from_index"]])]]
        self.stats = self._load_stats()

    # ------------------------------------------------------------------ public
    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    def column(self, name: str) -> np.ndarray:
        """All frames of a numeric feature: ``(num_frames, *shape)``, or ``(num_frames,)`` for shape (1,).

        A NumPy array, or with ``storage == "disk"`` a :class:`~mode_policy.data.columns.DiskColumn` that
        indexes like one and reads only the rows asked for (``np.asarray`` reads them all)."""
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

    def _find_data_files(self) -> tuple[list[Path], np.ndarray]:
        """The data parquet files in row order and their row counts (from the footers, nothing decoded)."""
        files = sorted((self.root / DATA_DIR).glob("*/*.parquet"))
        if not files:
            raise DatasetError(
                f"{self.root / DATA_DIR}: no data files (chunk-XXX/file-YYY.parquet, see info.json "
                "'data_path'); the dataset is incomplete; rewrite or re-download it"
            )
        return files, np.array([parquet_rows(path) for path in files], dtype=np.int64)

    def _choose_storage(self, storage: str, rows: int) -> str:
        if storage not in STORAGE_MODES:
            raise ValueError(f"storage must be one of {list(STORAGE_MODES)}, got {storage!r}")
        if storage != "auto":
            return storage
        row_bytes = sum(
            int(np.prod(feature_shape(ft))) * np.dtype(ft["dtype"]).itemsize
            for ft in self.features.values()
            if is_numeric(ft)
        )
        return "disk" if rows * row_bytes > MEMORY_LIMIT_BYTES else "memory"

    def _load_columns(self, files: list[Path], file_rows: np.ndarray, cache_dir: Any) -> None:
        """``_columns`` (name -> array in RAM, or DiskColumn) and ``_summaries`` (name -> column_summary)."""
        numeric = {name: ft for name, ft in self.features.items() if is_numeric(ft)}
        if self.storage == "memory":
            parts: dict[str, list[np.ndarray]] = {name: [] for name in numeric}
            self._summaries = self._scan(files, file_rows, numeric, lambda block: _append(parts, block))
            self._columns = {name: _concat(chunks) for name, chunks in parts.items()}
        else:
            self._columns, self._summaries = self._cached_columns(files, file_rows, numeric, cache_dir)

    def _cached_columns(self, files: list[Path], file_rows: np.ndarray, numeric: dict, cache_dir: Any):
        """The numeric columns as DiskColumns of the column cache (built first if missing or out of date)
        and their summaries (kept in the cache's manifest: a cached open decodes nothing)."""
        from mode_policy.data import columns as cache

        directory = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir(self.root)
        signature = cache.file_signature(files, self.root)
        manifest = cache.read_manifest(directory, signature)
        if manifest is None:
            cannot = (
                f"{directory}: cannot write the column cache of {self.root} ({{}}); pass cache_dir= (or set "
                f"${cache.CACHE_ENV}) to a writable folder with room for it (~the numeric data's size)"
            )
            layout = {
                name: (np.dtype(ft["dtype"]), (self.num_frames, *_row_shape(ft)))
                for name, ft in numeric.items()
            }
            try:
                writer = cache.ColumnCacheWriter(directory, layout)
            except OSError as err:
                raise DatasetError(cannot.format(err.strerror or err)) from None
            try:
                summaries = self._scan(files, file_rows, numeric, writer.append)
                manifest = {
                    "files": signature,
                    "columns": list(numeric),
                    "summaries": stats_to_json(summaries),
                }
                writer.finish(manifest)
            except OSError as err:  # reading is DatasetError already: this is the cache's disk
                writer.abort()
                raise DatasetError(cannot.format(err.strerror or err)) from None
            except BaseException:
                writer.abort()
                raise
        columns = {name: cache.DiskColumn(directory / f"{name}.npy") for name in numeric}
        return columns, stats_from_json(manifest["summaries"])

    def _scan(self, files: list[Path], file_rows: np.ndarray, numeric: dict, sink: Any) -> Stats:
        """Decode each data file, check its rows, hand them to ``sink`` in row order; returns the per-column
        summaries over all rows. Files are decoded and summarised on ``SCAN_THREADS`` threads (Arrow and
        NumPy release the GIL), at most that many ahead of ``sink``, so memory holds a few files at once."""
        first_rows = np.concatenate([[0], np.cumsum(file_rows)[:-1]]).astype(np.int64)

        def decode(position: int) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
            path, where = files[position], str(files[position])
            names = read_parquet_schema(path).names
            for name in numeric:
                if name not in names:
                    raise DatasetError(
                        f"{where}: column {name!r} is listed in meta/info.json features but missing from the "
                        "parquet file; remove it from info.json or rewrite the data"
                    )
            table = read_parquet(path, columns=list(numeric))
            block = {
                name: column_to_numpy(table.column(name), name, ft, where) for name, ft in numeric.items()
            }
            del table
            self._check_rows(block, int(first_rows[position]), where)
            return block, {name: column_summary(values) for name, values in block.items() if len(values)}

        block_summaries: dict[str, list] = {name: [] for name in numeric}
        for block, summaries in ordered_map(decode, range(len(files)), SCAN_THREADS):
            for name, summary in summaries.items():
                block_summaries[name].append(summary)
            sink(block)
        return {name: merge_stats(parts) for name, parts in block_summaries.items() if parts}

    def _check_episodes(self, num_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The episode metadata alone: unique ids, lengths, and episodes tiling the ``num_rows`` rows;
        returns ``_episode_arrays()``."""
        info_path = self.root / INFO_PATH
        ep_path = self.root / EPISODES_DIR
        frm, to, lengths, ids = self._episode_arrays()
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
        if bad.size or to[-1] != num_rows:
            ep = self.episodes[bad[0] if bad.size else -1]
            raise DatasetError(
                f"{ep['_file']}: episode {ep['episode_index']} covers rows [{ep['dataset_from_index']}, "
                f"{ep['dataset_to_index']}) but the episodes must tile the {num_rows} data rows in order; "
                "the data or episode metadata is truncated or stale; rewrite the dataset"
            )
        for key, actual in (("total_frames", num_rows), ("total_episodes", len(self.episodes))):
            declared = self.info.get(key)
            if declared is not None and declared != actual:
                raise DatasetError(
                    f"{info_path}: field {key!r} is {declared} but the dataset holds {actual}; "
                    "the dataset is incomplete or info.json is stale; rewrite it"
                )
        return frm, to, lengths, ids

    def _episode_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(from, to, length, episode_index) of every episode, int64, in row order."""
        return tuple(
            np.array([ep[key] for ep in self.episodes], dtype=np.int64)
            for key in ("dataset_from_index", "dataset_to_index", "length", "episode_index")
        )

    def _check_rows(self, block: dict[str, np.ndarray], first_row: int, where: str) -> None:
        """Rows ``first_row ..`` of one data file against the episode metadata: finite floats, the episode
        and frame index of every row, task indices that exist."""
        rows = len(next(iter(block.values()))) if block else 0
        if rows == 0:
            return
        frm, ids = self._episode_from, self._episode_ids
        row_numbers = np.arange(first_row, first_row + rows)
        position = np.searchsorted(frm, row_numbers, side="right") - 1
        for name, values in block.items():
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                local = int(np.argwhere(~np.isfinite(values.reshape(len(values), -1)))[0, 0])
                episode = int(block["episode_index"][local]) if "episode_index" in block else "?"
                raise DatasetError(
                    f"{where}: column {name!r} has NaN/inf values (first at row {first_row + local}, "
                    f"episode {episode}); drop or re-record that episode"
                )
        expected_episode = ids[position]
        bad = np.flatnonzero(block["episode_index"] != expected_episode)
        if bad.size:
            local = int(bad[0])
            raise DatasetError(
                f"{where}: column 'episode_index' is {block['episode_index'][local]} at row "
                f"{first_row + local}, but {EPISODES_DIR} places that row in episode "
                f"{expected_episode[local]}; the episode index ranges are inconsistent with the data; "
                "rewrite the episode metadata"
            )
        expected_frames = row_numbers - frm[position]
        bad = np.flatnonzero(block["frame_index"] != expected_frames)
        if bad.size:
            local = int(bad[0])
            raise DatasetError(
                f"{where}: column 'frame_index' is {block['frame_index'][local]} at row {first_row + local}, "
                f"expected {expected_frames[local]} (frames of an episode must be stored in order); rewrite "
                "the data"
            )
        task_index = block.get("task_index")
        if task_index is not None and (task_index.min() < 0 or task_index.max() >= len(self.tasks)):
            raise DatasetError(
                f"{where}: column 'task_index' ranges {task_index.min()}..{task_index.max()} but "
                f"{TASKS_PATH} defines {len(self.tasks)} tasks; rewrite meta/tasks.parquet"
            )

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
                if name in stats and column.dtype.kind == "f" and name in self._summaries:
                    problem = check_stats(stats[name], self._summaries[name])
                    if problem:
                        raise DatasetError(
                            f"{path}: stats[{name!r}] does not describe the data: {problem}; {fix}"
                        )
        missing = {n: ft for n, ft in self.features.items() if is_numeric(ft) and n not in stats}
        if missing and self.storage == "memory":
            stats.update(compute_stats(self, missing))
        for name in missing if self.storage == "disk" else ():
            stats[name] = self._sampled_stats(name)
        return stats

    def _sampled_stats(
        self, name: str, blocks: int = 100, rows_per_block: int = 1000
    ) -> dict[str, np.ndarray]:
        """Stats of a cached column without reading it whole: min/max/mean/std exact (the scan's summary),
        quantiles from ``blocks`` evenly spaced runs of rows."""
        column = self._columns[name]
        starts = np.linspace(0, max(0, len(column) - rows_per_block), blocks).astype(np.int64)
        sample = np.concatenate(
            [column.read(int(start), int(start) + rows_per_block) for start in np.unique(starts)]
        )
        return {**feature_stats(sample), **self._summaries[name]}


def ordered_map(function: Any, items: Any, threads: int) -> Any:
    """``map(function, items)`` on ``threads`` threads, results in order, at most ``threads`` computed ahead
    of the consumer (``Executor.map`` would run them all and hold every result). An exception is raised
    where its item's result is due; the items not yet started are then cancelled."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _append(parts: dict[str, list[np.ndarray]], block: dict[str, np.ndarray]) -> None:
    for name, values in block.items():
        parts[name].append(values)


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]


def _row_shape(feature: dict[str, Any]) -> tuple[int, ...]:
    """What one row of a feature's column looks like: () for shape (1,), as ``column_to_numpy`` returns."""
    shape = feature_shape(feature)
    return () if shape == (1,) else shape


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
