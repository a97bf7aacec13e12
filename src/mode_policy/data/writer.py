"""Write a LeRobotDataset v3 atomically: nothing loadable exists at ``root`` until ``finalize()``.

Everything goes into a hidden sibling folder (``.<name>.partial-XXXX``) that is renamed onto ``root`` at the
end, so a crash or Ctrl-C mid-collection leaves at most that hidden folder behind, never a dataset that
loads as complete. The files match what LeRobot writes: one parquet row group per episode in
``data/chunk-000/file-000.parquet`` (rolling to the next file past ``data_files_size_in_mb``), episode
metadata with LeRobot's per-episode ``stats/<feature>/<stat>`` columns, tasks as a pandas-indexed parquet,
and ``stats.json`` over all frames (merged from the episodes' stats past ``EXACT_STATS_BYTES``).

Camera features (``dtype "image"`` or ``"video"``, shape ``[H, W, 3]``, uint8 frames) are stored as LeRobot
stores them: PNG bytes in a ``{bytes, path}`` struct column of the data parquet, or MP4 streams under
``videos/<key>/chunk-XXX/file-YYY.mp4`` (PyAV) with each episode's span in the episode metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mode_policy.data.format import (
    CODEBASE_VERSION,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_DATA_PATH,
    DEFAULT_EPISODES_PATH,
    DEFAULT_FEATURES,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    DEFAULT_VIDEO_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    feature_shape,
    huggingface_metadata,
    is_numeric,
    numpy_to_arrow,
)
from mode_policy.data.stats import feature_stats, merge_stats, stats_to_json
from mode_policy.data.video import image_stats
from mode_policy.io import atomic_write, atomic_write_text

# stats.json is computed over all frames while the numeric columns fit in this many bytes; past it, from the
# episodes' stats (min, max, mean, std exact; quantiles the count-weighted mean of the episodes', as LeRobot's
# aggregate_stats), so a recording of any length needs memory for one episode only.
EXACT_STATS_BYTES = 256 * 1024**2


class LeRobotDatasetWriter:
    """Record frames episode by episode, then ``finalize()`` to publish the dataset at ``root``.

    ``features`` maps user feature names to ``{"dtype", "shape", "names"}`` (numeric, shape (1,) or (n,), or
    a camera: dtype "image" / "video", shape [H, W, 3], frames given as uint8 (H, W, 3) arrays);
    the index columns (timestamp, frame_index, episode_index, index, task_index) are added and filled here.
    Usable as a context manager: an exception inside the block aborts (removes the partial folder), a
    clean exit finalizes.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: Mapping[str, Mapping[str, Any]],
        robot_type: str | None = None,
        *,
        overwrite: bool = False,
        data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
        video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        video_codec: str | None = None,
    ) -> None:
        self.root = Path(root)
        _check_replaceable(self.root, overwrite)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        user = {}
        for name, ft in features.items():
            if name in DEFAULT_FEATURES:
                raise ValueError(f"feature {name!r} is filled by the writer; do not declare it")
            if "/" in name:
                raise ValueError(f"feature names must not contain '/' (LeRobot rule), got {name!r}")
            if ft.get("dtype") in ("image", "video"):
                shape = feature_shape(ft)
                if len(shape) != 3 or shape[2] != 3:
                    raise ValueError(f"camera feature {name!r} must have shape [H, W, 3], got {list(shape)}")
                user[name] = {
                    "dtype": ft["dtype"],
                    "shape": list(shape),
                    "names": ft.get("names") or ["height", "width", "channels"],
                }
                continue
            if not is_numeric(ft) or len(feature_shape(ft)) != 1:
                raise ValueError(
                    f"feature {name!r}: only numeric features of shape (1,) or (n,), or camera features "
                    "(dtype image / video, shape [H, W, 3]), can be written"
                )
            user[name] = {
                "dtype": str(ft["dtype"]),
                "shape": list(feature_shape(ft)),
                "names": ft.get("names"),
            }
        self.fps = int(fps)
        self.robot_type = robot_type
        self.overwrite = overwrite
        self.user_features = user
        self.features = {**user, **{k: dict(v) for k, v in DEFAULT_FEATURES.items()}}
        self.video_keys = [n for n, ft in user.items() if ft["dtype"] == "video"]
        self.image_keys = [n for n, ft in user.items() if ft["dtype"] == "image"]
        # Columns of the data parquet: everything but the videos (which live in their MP4 files).
        self._stored = {n: ft for n, ft in self.features.items() if ft["dtype"] != "video"}
        numeric = {n: ft for n, ft in self._stored.items() if is_numeric(ft)}
        hf = json.loads(huggingface_metadata(numeric))
        for name in self.image_keys:
            hf["info"]["features"][name] = {"_type": "Image"}
        self._schema = pa.schema(
            [
                pa.field(name, _IMAGE_TYPE)
                if ft["dtype"] == "image"
                else pa.field(name, numpy_to_arrow(name, np.zeros((0, *_row_shape(ft))), ft).type)
                for name, ft in self._stored.items()
            ],
            metadata={b"huggingface": json.dumps(hf).encode()},
        )
        self._max_video_bytes = video_files_size_in_mb * 1024**2
        self._video_codec = video_codec
        self._videos: dict[str, Any] = {}  # key -> open VideoStreamWriter
        self._video_file: dict[str, tuple[int, int]] = {key: (0, 0) for key in self.video_keys}
        self._video_info: dict[str, dict[str, Any]] = {}
        self._image_samples: dict[str, list[np.ndarray]] = {
            n: [] for n in (*self.video_keys, *self.image_keys)
        }
        self._max_file_bytes = data_files_size_in_mb * 1024**2
        self.root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(self.root)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.root.name}{PARTIAL_INFIX}", dir=self.root.parent))
        # Who writes this folder: a later writer into the same parent removes it once that process is gone.
        (self._tmp / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        self._frames: dict[str, list[np.ndarray]] = {name: [] for name in user}
        self._frame_tasks: list[str] = []
        # Numeric columns kept for exact stats.json quantiles, until they pass EXACT_STATS_BYTES.
        self._columns: dict[str, list[np.ndarray]] | None = {
            name: [] for name, ft in self.features.items() if is_numeric(ft)
        }
        self._column_bytes = 0
        self._episode_stats: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in self._columns}
        self._episodes: list[dict[str, Any]] = []
        self._tasks: dict[str, int] = {}
        self._num_frames = 0
        self._file = (0, 0)  # (chunk_index, file_index)
        self._file_bytes = 0
        self._pq_writer: pq.ParquetWriter | None = None
        self._closed = False

    # ------------------------------------------------------------------ recording
    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def add_frame(self, frame: Mapping[str, Any]) -> None:
        """One time step: a value for every declared feature (an optional ``"task"`` string is allowed)."""
        self._check_open()
        keys = set(frame) - {"task"}
        if keys != set(self.user_features):
            missing, extra = set(self.user_features) - keys, keys - set(self.user_features)
            raise ValueError(
                f"frame features mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        for name, ft in self.user_features.items():
            if not is_numeric(ft):
                image = np.asarray(frame[name])
                if image.shape != tuple(ft["shape"]) or image.dtype != np.uint8:
                    raise ValueError(
                        f"frame[{name!r}] must be a uint8 image of shape {tuple(ft['shape'])}, got "
                        f"{image.dtype} {image.shape}"
                    )
                self._frames[name].append(image)
                continue
            value = np.asarray(frame[name], dtype=ft["dtype"]).reshape(-1)
            if value.shape != tuple(ft["shape"]):
                raise ValueError(f"frame[{name!r}] has {value.size} values, feature shape is {ft['shape']}")
            self._frames[name].append(value)
        if "task" in frame:
            self._frame_tasks.append(str(frame["task"]))

    def save_episode(self, task: str | None = None) -> int:
        """Close the current episode under the instruction ``task``; returns its episode_index."""
        self._check_open()
        length = len(next(iter(self._frames.values()))) if self._frames else 0
        if length == 0:
            raise ValueError("add_frame() at least one frame before save_episode()")
        if task is None:
            if len(set(self._frame_tasks)) != 1:
                raise ValueError("pass save_episode(task=...) or give every frame the same 'task'")
            task = self._frame_tasks[0]
        return self._save({name: np.stack(values) for name, values in self._frames.items()}, task)

    def add_episode(self, frames: Mapping[str, Any], task: str) -> int:
        """A whole episode at once: ``frames`` maps every declared feature to its (length, *shape) array
        (cameras: uint8 (length, H, W, 3)); the same files as ``add_frame`` per step, without the per-frame
        Python work. Returns its episode_index."""
        self._check_open()
        if any(self._frames.values()):
            raise ValueError(
                "add_episode() while frames of an episode are pending; save_episode() them first"
            )
        if set(frames) != set(self.user_features):
            missing, extra = set(self.user_features) - set(frames), set(frames) - set(self.user_features)
            raise ValueError(
                f"episode features mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        data, lengths = {}, set()
        for name, ft in self.user_features.items():
            camera = not is_numeric(ft)
            values = np.asarray(frames[name]) if camera else np.asarray(frames[name], dtype=ft["dtype"])
            if camera and (
                values.dtype != np.uint8 or values.ndim != 4 or values.shape[1:] != tuple(ft["shape"])
            ):
                raise ValueError(
                    f"frames[{name!r}] must be (length, *{tuple(ft['shape'])}) uint8, got "
                    f"{values.dtype} {values.shape}"
                )
            values = values if camera else values.reshape(len(values), -1)
            if not camera and values.shape[1:] != tuple(ft["shape"]):
                raise ValueError(
                    f"frames[{name!r}] has {values.shape[1]} values per frame, feature shape is {ft['shape']}"
                )
            data[name] = values
            lengths.add(len(values))
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                f"every feature of an episode needs the same number (> 0) of frames, got {sorted(lengths)}"
            )
        return self._save(data, str(task))

    def _save(self, data: dict[str, np.ndarray], task: str) -> int:
        """Write one episode of user features ``data`` (name -> (length, ...) array) under ``task``."""
        length = len(next(iter(data.values())))
        task_index = self._tasks.setdefault(task, len(self._tasks))
        episode_index = len(self._episodes)
        start = self._num_frames
        frame_index = np.arange(length, dtype=np.int64)
        data = dict(data)
        data["timestamp"] = (frame_index / self.fps).astype(np.float32)
        data["frame_index"] = frame_index
        data["episode_index"] = np.full(length, episode_index, dtype=np.int64)
        data["index"] = start + frame_index
        data["task_index"] = np.full(length, task_index, dtype=np.int64)
        for name, ft in self.user_features.items():
            if is_numeric(ft) and np.dtype(ft["dtype"]).kind == "f" and not np.isfinite(data[name]).all():
                raise ValueError(f"episode {episode_index}: feature {name!r} has NaN/inf values; not saved")
        data = {name: data[name] for name in self.features}  # column order as in info.json
        video_meta = self._write_videos(data, length)

        table = pa.Table.from_arrays(
            [
                _png_column(data[name]) if ft["dtype"] == "image" else numpy_to_arrow(name, data[name], ft)
                for name, ft in self._stored.items()
            ],
            schema=self._schema,
        )
        # Roll to the next file the way LeRobot does: when this episode would push the file past the limit.
        if self._pq_writer is not None and self._file_bytes + table.nbytes > self._max_file_bytes:
            self._close_data_file()
            chunk, file = self._file
            self._file = (chunk + 1, 0) if file == DEFAULT_CHUNK_SIZE - 1 else (chunk, file + 1)
        if self._pq_writer is None:
            path = self._tmp / DEFAULT_DATA_PATH.format(chunk_index=self._file[0], file_index=self._file[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._pq_writer = pq.ParquetWriter(
                path, schema=self._schema, compression="snappy", use_dictionary=True
            )
            self._file_bytes = 0
        self._pq_writer.write_table(table)  # one row group per episode
        self._file_bytes += table.nbytes

        episode = {
            "episode_index": episode_index,
            "tasks": [task],
            "length": length,
            "data/chunk_index": self._file[0],
            "data/file_index": self._file[1],
            "dataset_from_index": start,
            "dataset_to_index": start + length,
            **video_meta,
        }
        for name, values in data.items():
            if name in self._image_samples:
                # Per-episode image stats on a few frames (LeRobot samples too); kept for stats.json.
                sample = values[np.linspace(0, length - 1, min(length, 20)).astype(np.int64)]
                self._image_samples[name].append(sample)
                stats = image_stats(sample)
            else:
                stats = feature_stats(values)
                self._episode_stats[name].append(stats)
            for stat, value in stats.items():
                episode[f"stats/{name}/{stat}"] = value.tolist()
        episode["meta/episodes/chunk_index"] = 0
        episode["meta/episodes/file_index"] = 0
        self._episodes.append(episode)
        if self._columns is not None:
            for name in self._columns:
                self._columns[name].append(data[name])
            self._column_bytes += sum(data[name].nbytes for name in self._columns)
            if self._column_bytes > EXACT_STATS_BYTES:  # from here on, stats.json merges the episodes' stats
                self._columns = None
        self._num_frames += length
        self.clear_episode()
        return episode_index

    def clear_episode(self) -> None:
        """Drop the frames added since the last ``save_episode`` (e.g. a failed demonstration)."""
        self._frames = {name: [] for name in self.user_features}
        self._frame_tasks = []

    # ------------------------------------------------------------------ publishing
    def finalize(self) -> Path:
        """Write the metadata and move the finished dataset to ``root`` in one rename; returns ``root``."""
        self._check_open()
        if any(self._frames.values()) and len(next(iter(self._frames.values()))):
            raise ValueError(
                "frames were added after the last save_episode(); save or clear_episode() them first"
            )
        if not self._episodes:
            raise ValueError("no episodes were saved; a dataset needs at least one episode")
        self._close_data_file()
        self._close_videos()
        tmp = self._tmp
        self._write_tasks(tmp / TASKS_PATH)
        self._write_episodes(tmp / DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0))
        if self._columns is not None:
            stats = {name: feature_stats(np.concatenate(parts)) for name, parts in self._columns.items()}
        else:
            stats = {name: merge_stats(parts) for name, parts in self._episode_stats.items()}
        for name, samples in self._image_samples.items():
            stats[name] = image_stats(np.concatenate(samples))
        atomic_write_text(tmp / STATS_PATH, json.dumps(stats_to_json(stats), indent=4))
        # info.json last: a folder without it never loads, whatever else is there.
        atomic_write_text(tmp / INFO_PATH, json.dumps(self._info(), indent=4, ensure_ascii=False))
        self._publish()
        self._closed = True
        return self.root

    def abort(self) -> None:
        """Discard everything recorded; ``root`` is left untouched."""
        if self._pq_writer is not None:
            self._pq_writer.close()
            self._pq_writer = None
        try:
            self._close_videos()
        except Exception:  # aborting anyway; the partial files are removed below
            self._videos.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this writer was already finalized or aborted")

    def _close_data_file(self) -> None:
        if self._pq_writer is not None:
            path = Path(self._pq_writer.where)
            self._pq_writer.close()
            self._pq_writer = None
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())

    def _write_videos(self, data: dict[str, np.ndarray], length: int) -> dict[str, Any]:
        """Append the episode's frames of every video key; its episode-metadata columns."""
        from mode_policy.data.video import DEFAULT_VIDEO_CODEC, VideoStreamWriter

        meta: dict[str, Any] = {}
        for key in self.video_keys:
            stream = self._videos.get(key)
            if stream is not None and stream.bytes_hint > self._max_video_bytes:
                stream.close()
                del self._videos[key]
                chunk, file = self._video_file[key]
                self._video_file[key] = (
                    (chunk + 1, 0) if file == DEFAULT_CHUNK_SIZE - 1 else (chunk, file + 1)
                )
                stream = None
            chunk, file = self._video_file[key]
            if stream is None:
                height, width, _ = self.features[key]["shape"]
                path = self._tmp / DEFAULT_VIDEO_PATH.format(
                    video_key=key, chunk_index=chunk, file_index=file
                )
                stream = VideoStreamWriter(
                    path, self.fps, width, height, codec=self._video_codec or DEFAULT_VIDEO_CODEC
                )
                self._videos[key] = stream
                self._video_info[key] = stream.info()
            begin = stream.frames / self.fps
            stream.write(data[key])
            meta[f"videos/{key}/chunk_index"] = chunk
            meta[f"videos/{key}/file_index"] = file
            meta[f"videos/{key}/from_timestamp"] = begin
            meta[f"videos/{key}/to_timestamp"] = begin + length / self.fps
        return meta

    def _close_videos(self) -> None:
        videos, self._videos = self._videos, {}
        for stream in videos.values():
            stream.close()

    def _info(self) -> dict[str, Any]:
        total = len(self._episodes)
        # LeRobot's v3 converter also records fps on every non-video feature; videos carry their "info".
        features = {}
        for name, ft in self.features.items():
            features[name] = {"dtype": ft["dtype"], "shape": list(ft["shape"]), "names": ft["names"]}
            if ft["dtype"] == "video":
                features[name]["info"] = self._video_info.get(name, {})
            else:
                features[name]["fps"] = self.fps
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": total,
            "total_frames": self._num_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": DEFAULT_CHUNK_SIZE,
            "data_files_size_in_mb": DEFAULT_DATA_FILE_SIZE_IN_MB,
            "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{total}"},
            "data_path": DEFAULT_DATA_PATH,
            "video_path": DEFAULT_VIDEO_PATH if self.video_keys else None,
            "features": features,
        }

    def _write_tasks(self, path: Path) -> None:
        tasks = sorted(self._tasks, key=self._tasks.__getitem__)
        table = pa.table(
            {
                "task_index": pa.array([self._tasks[t] for t in tasks], pa.int64()),
                "task": pa.array(tasks, pa.string()),
            }
        )
        # LeRobot writes a pandas DataFrame indexed by the task string (index name "task"); this metadata
        # makes pandas.read_parquet rebuild exactly that, without needing pandas here.
        table = table.replace_schema_metadata({b"pandas": json.dumps(_pandas_metadata()).encode()})
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    def _write_episodes(self, path: Path) -> None:
        columns = {key: [ep[key] for ep in self._episodes] for key in self._episodes[0]}
        table = pa.Table.from_pydict(columns)  # the same inference LeRobot's metadata flush uses
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    def _publish(self) -> None:
        # Checked again: the folder may have changed while we recorded; refusing now keeps the recording.
        try:
            _check_replaceable(self.root, self.overwrite)
        except FileExistsError as error:
            raise FileExistsError(f"{error} (this recording is kept in {self._tmp})") from None
        (self._tmp / OWNER_FILE).unlink(missing_ok=True)
        _apply_umask_permissions(self._tmp)
        trash = None
        if self.root.exists():
            if self.root.is_dir() and not any(self.root.iterdir()):
                self.root.rmdir()
            else:  # overwrite=True: swap the old dataset out first, delete it once the new one is in place
                trash = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.old-", dir=self.root.parent))
                os.replace(self.root, trash / "dataset")
        os.replace(self._tmp, self.root)
        _fsync_dir(self.root.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


PARTIAL_INFIX = ".partial-"
OWNER_FILE = ".writer-owner.json"
# What a LeRobot dataset folder holds (the last two when it came from the Hugging Face hub).
DATASET_ENTRIES = frozenset({"meta", "data", "videos", "images", "README.md", ".gitattributes"})


def _check_replaceable(root: Path, overwrite: bool) -> None:
    """``root`` may be written: absent, an empty folder, or (with ``overwrite``) a LeRobot dataset folder.

    Anything else is refused, whatever ``overwrite`` says: it is not ours to delete.
    """
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} is an existing file, not a dataset folder; choose a new path")
    entries = {entry.name for entry in root.iterdir()}
    if not entries:
        return
    foreign = sorted(entries - DATASET_ENTRIES)
    if foreign or not (root / INFO_PATH).is_file():
        what = (
            f"files that are not part of a dataset ({', '.join(foreign[:3])})"
            if foreign
            else ("no meta/info.json")
        )
        raise FileExistsError(
            f"{root} already exists and holds {what}, so it is not a LeRobot dataset that could be replaced; "
            "choose a new path (nothing was deleted)"
        )
    if not overwrite:
        raise FileExistsError(
            f"{root} already holds a dataset; choose a new path, or replace it with --overwrite "
            "(overwrite=True in Python)"
        )


def _remove_stale_partials(root: Path) -> None:
    """Delete the hidden partial folders that earlier writers of ``root`` left when they were killed.

    A folder is removed only when its owner file names a process of this host that no longer runs;
    any other leftover is reported with its path.
    """
    from mode_policy.messages import warn

    host = socket.gethostname()
    removed, unknown = [], []
    for folder in root.parent.glob(f".{root.name}{PARTIAL_INFIX}*"):
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
            pid, owner_host = int(owner["pid"]), owner["host"]
        except (OSError, ValueError, KeyError, TypeError):
            unknown.append(folder)
            continue
        if owner_host == host and not _process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        warn(f"removed {len(removed)} partial folder(s) left by interrupted writes of {root}: "
             f"{', '.join(str(f) for f in removed)}")  # fmt: skip
    if unknown:
        warn(f"{len(unknown)} hidden partial folder(s) of {root} from an earlier interrupted write remain "
             f"({', '.join(str(f) for f in unknown)}); delete them once no writer runs")  # fmt: skip


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _png_column(frames: np.ndarray) -> pa.Array:
    """(T, H, W, 3) uint8 -> LeRobot's image column: struct {bytes: PNG, path: null} per row."""
    from mode_policy.data.video import encode_png

    return pa.array([{"bytes": encode_png(frame), "path": None} for frame in frames], type=_IMAGE_TYPE)


def _row_shape(feature: Mapping[str, Any]) -> tuple[int, ...]:
    shape = feature_shape(feature)
    return () if shape == (1,) else shape


def _pandas_metadata() -> dict[str, Any]:
    return {
        "index_columns": ["task"],
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
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }


def _apply_umask_permissions(root: Path) -> None:
    """mkdtemp / mkstemp create owner-only (0700 / 0600) entries; a published dataset gets the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
