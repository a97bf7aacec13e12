"""Constants of the LeRobotDataset v3 layout and conversions between its features and Arrow columns.

Paths, defaults and column types follow what LeRobot itself writes (lerobot/datasets/utils.py and
dataset_metadata.py, codebase v3.0): a feature of shape (1,) is a plain Arrow scalar column, a feature of
shape (n,) is a ``fixed_size_list<dtype>[n]`` column (HF ``datasets.Sequence(length=n)``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mode_policy.data.errors import DatasetError

CODEBASE_VERSION = "v3.0"

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
DATA_DIR = "data"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DEFAULT_EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_DATA_PATH = DATA_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"

DEFAULT_CHUNK_SIZE = 1000  # max files per chunk folder
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500

# Columns LeRobot adds to every dataset; the writer fills them, users never pass them.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
# Feature dtypes that live outside the numeric columns (decoded media, strings): listed, never loaded here.
NON_NUMERIC_DTYPES = frozenset({"image", "video", "string", "audio"})


# Reading parquet: the only place this package calls pyarrow's readers, so a damaged file is one line.
_DAMAGED = "the file is truncated or damaged: restore it, or rewrite the dataset"


def read_parquet(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The table in ``path`` (only ``columns`` if given); DatasetError naming the file if it is unreadable."""
    return _parquet(path, lambda: pq.read_table(path, columns=None if columns is None else list(columns)))


def read_parquet_schema(path: str | Path) -> pa.Schema:
    return _parquet(path, lambda: pq.read_schema(path))


def parquet_rows(path: str | Path) -> int:
    return _parquet(path, lambda: pq.read_metadata(path).num_rows)


def _parquet(path: str | Path, read: Any) -> Any:
    try:
        return read()
    except (pa.ArrowException, OSError, ValueError) as error:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            reason = "the file is empty"
        else:
            reason = str(error).strip().splitlines()[0][:160] or type(error).__name__
        raise DatasetError(f"{path}: not a readable parquet file ({reason}); {_DAMAGED}") from None


def is_numeric(feature: Mapping[str, Any]) -> bool:
    return feature.get("dtype") not in NON_NUMERIC_DTYPES


def feature_shape(feature: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in feature["shape"])


def arrow_type(name: str, feature: Mapping[str, Any]) -> pa.DataType:
    """The Arrow column type LeRobot writes for a numeric feature of shape (1,) or (n,)."""
    value_type = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    shape = feature_shape(feature)
    if shape == (1,):
        return value_type
    if len(shape) == 1:
        return pa.list_(value_type, shape[0])
    raise ValueError(f"feature {name!r}: only shapes (1,) and (n,) can be written, got {shape}")


def huggingface_metadata(features: Mapping[str, Mapping[str, Any]]) -> bytes:
    """The ``huggingface`` schema metadata HF ``datasets`` stores beside a table, so it reloads typed."""
    hf = {}
    for name, feature in features.items():
        value = {"dtype": feature["dtype"], "_type": "Value"}
        shape = feature_shape(feature)
        hf[name] = value if shape == (1,) else {"feature": value, "length": shape[0], "_type": "Sequence"}
    return json.dumps({"info": {"features": hf}}).encode()


def _kind_matches(arrow_value_type: pa.DataType, dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return pa.types.is_floating(arrow_value_type)
    if dtype.kind in "iu":
        return pa.types.is_integer(arrow_value_type)
    if dtype.kind == "b":
        return pa.types.is_boolean(arrow_value_type)
    return False


def column_to_numpy(
    column: pa.ChunkedArray | pa.Array, name: str, feature: Mapping[str, Any], where: str
) -> np.ndarray:
    """Convert one parquet column to ``(rows, *shape)`` (``(rows,)`` for shape (1,)) of the declared dtype.

    Accepts the list flavours different writers produce (fixed-size, variable, large). Raises DatasetError
    naming ``where`` (the file) and ``name`` (the field) for nulls, a dtype of another kind (float vs int vs
    bool), or rows whose length disagrees with the declared shape. Widths are cast (float64 -> float32).
    """
    dtype = np.dtype(feature["dtype"])
    shape = feature_shape(feature)
    size = int(np.prod(shape))
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(array)
    fix = "rewrite the dataset with a consistent schema (or fix meta/info.json 'features')"
    if array.null_count:
        raise DatasetError(f"{where}: column {name!r} has {array.null_count} null values; {fix}")
    values = array
    while (
        pa.types.is_list(values.type)
        or pa.types.is_large_list(values.type)
        or pa.types.is_fixed_size_list(values.type)
    ):
        if not pa.types.is_fixed_size_list(values.type):
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            if lengths.size and (lengths.min() != lengths.max()):
                raise DatasetError(
                    f"{where}: column {name!r} has rows of different lengths "
                    f"({lengths.min()}..{lengths.max()}), meta/info.json declares shape {list(shape)}; {fix}"
                )
        values = values.flatten()
        if values.null_count:
            raise DatasetError(f"{where}: column {name!r} has null entries inside its rows; {fix}")
    if not _kind_matches(values.type, dtype):
        raise DatasetError(
            f"{where}: column {name!r} has Arrow type {array.type}, but meta/info.json declares dtype "
            f"{dtype.name!r}; {fix}"
        )
    if len(values) != rows * size:
        per_row = len(values) / rows if rows else 0
        raise DatasetError(
            f"{where}: column {name!r} holds {per_row:g} values per row, but meta/info.json declares shape "
            f"{list(shape)} ({size} values); {fix}"
        )
    out = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return out.reshape(rows) if shape == (1,) else out.reshape(rows, *shape)


def numpy_to_arrow(name: str, values: np.ndarray, feature: Mapping[str, Any]) -> pa.Array:
    """Inverse of ``column_to_numpy`` for writing: ``(rows,)`` or ``(rows, n)`` -> LeRobot's column type."""
    type_ = arrow_type(name, feature)
    values = np.ascontiguousarray(values, dtype=np.dtype(feature["dtype"]))
    if pa.types.is_fixed_size_list(type_):
        flat = pa.array(values.reshape(-1), type=type_.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, type_.list_size)
    return pa.array(values.reshape(-1), type=type_)
