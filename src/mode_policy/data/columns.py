"""Numeric columns too large for RAM: an on-disk cache of raw ``.npy`` files, read a few rows at a time.

A dataset whose numeric columns exceed ``LeRobotDataset``'s memory limit is decoded once, one parquet file
at a time, into ``<cache>/<column>.npy`` (C order, the feature's dtype, all files concatenated in row order).
A :class:`DiskColumn` then serves rows with ``os.pread``: a training window costs one or two small reads
from the page cache, and only the rows asked for are ever in the process's memory. (A memory map would
serve them too, but every page it touches stays in the process's resident set until the map is closed, so
a long run's RSS would grow to the whole file.)

The cache folder is written to a hidden sibling and renamed into place, and it records the data files it
was built from (name, size, modification time) with the per-column summaries the loader's checks need; a
changed data file makes the loader rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
CACHE_VERSION = 1
CACHE_ENV = "MODE_POLICY_CACHE"


def default_cache_dir(root: Path) -> Path:
    """``$MODE_POLICY_CACHE`` (or ``~/.cache/mode_policy``) ``/columns/<name>-<digest of the root path>``."""
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mode_policy")
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return base / "columns" / f"{root.name}-{digest}"


def file_signature(files: list[Path], root: Path) -> list[list[Any]]:
    """[relative path, size, mtime_ns] of each data file: what the cache was built from."""
    return [[str(path.relative_to(root)), path.stat().st_size, path.stat().st_mtime_ns] for path in files]


def read_manifest(directory: Path, signature: list[list[Any]]) -> dict[str, Any] | None:
    """The cache's manifest if it is complete and built from exactly ``signature``'s files; else None."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_VERSION:
        return None
    if manifest.get("files") != signature:
        return None
    for name in manifest.get("columns", {}):
        if not (directory / f"{name}.npy").is_file():
            return None
    return manifest


class ColumnCacheWriter:
    """Writes the cache of ``layout`` = {column: (dtype, (rows, *shape))}, block by block, then publishes it.

    append(block) takes {column: array of the next rows}; finish(manifest) writes the manifest and renames
    the folder onto ``directory`` (replacing an out-of-date cache); abort() removes the partial folder.
    """

    def __init__(self, directory: Path, layout: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        self.directory = Path(directory)
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.directory.name}.partial-", dir=self.directory.parent)
        )
        self.layout = {name: (np.dtype(dtype), tuple(shape)) for name, (dtype, shape) in layout.items()}
        self._files, self._header_bytes = {}, {}
        for name, (dtype, shape) in self.layout.items():
            handle = open(self._tmp / f"{name}.npy", "wb")  # noqa: SIM115 - closed in finish/abort
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(handle, header)
            self._files[name], self._header_bytes[name] = handle, handle.tell()

    def append(self, block: Mapping[str, np.ndarray]) -> None:
        for name, handle in self._files.items():
            dtype, _ = self.layout[name]
            handle.write(memoryview(np.ascontiguousarray(block[name], dtype=dtype)).cast("B"))

    def finish(self, manifest: dict[str, Any]) -> None:
        for name, handle in self._files.items():
            dtype, shape = self.layout[name]
            expected = int(np.prod(shape)) * dtype.itemsize
            written = handle.tell() - self._header_bytes[name]
            handle.close()
            if written != expected:
                self.abort()
                raise RuntimeError(f"column cache {name}: wrote {written} bytes, expected {expected}")
        (self._tmp / MANIFEST).write_text(json.dumps({**manifest, "version": CACHE_VERSION}))
        if self.directory.exists():  # an out-of-date cache of ours: moved aside first, so the swap is quick
            stale = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.stale-", dir=self.directory.parent))
            os.replace(self.directory, stale / "cache")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(self._tmp, self.directory)

    def abort(self) -> None:
        for handle in self._files.values():
            handle.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


class DiskColumn:
    """One cached column, ``(rows, *shape)`` of ``dtype``, indexed like a NumPy array but read on demand.

    Supports ``column[i]``, ``column[a:b]`` and ``column[rows]`` for an integer array (one read of the span
    ``min(rows) .. max(rows)``, so keep such index arrays local, as a training window is), ``len``,
    ``shape``, ``dtype`` and ``np.asarray(column)`` (reads everything). Picklable for DataLoader workers:
    each process opens the file on its first read.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            np.lib.format.read_magic(handle)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            self._offset = handle.tell()
        if fortran:
            raise ValueError(f"{self.path}: a column cache file must be in C order")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._row_shape = self.shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop - 1`` as a new array."""
        start, stop = max(0, start), min(len(self), stop)
        out = np.empty((max(0, stop - start), *self._row_shape), dtype=self.dtype)
        if out.size:
            wanted = out.nbytes
            got = os.preadv(
                self._handle(), [memoryview(out).cast("B")], self._offset + start * self._row_bytes
            )
            if got != wanted:
                raise OSError(f"{self.path}: read {got} of {wanted} bytes; the cache is truncated, delete it")
        return out

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self.read(index, index + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self.read(start, stop)[::step] if step > 0 else np.asarray(self)[key]
        rows = np.asarray(key)
        if rows.dtype.kind not in "iu":
            raise TypeError(f"DiskColumn rows must be integers, got {rows.dtype}")
        if rows.size == 0:
            return np.empty((*rows.shape, *self._row_shape), dtype=self.dtype)
        low, high = int(rows.min()), int(rows.max())
        if low < 0 or high >= len(self):
            raise IndexError(f"rows {low}..{high} out of range for {len(self)} rows")
        return self.read(low, high + 1)[rows - low]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self.read(0, len(self))
        return values if dtype is None else values.astype(dtype, copy=False)

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def __repr__(self) -> str:
        return f"DiskColumn({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"
