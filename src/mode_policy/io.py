"""Atomic file writes: a crash mid-write leaves the old file or none, never a truncated one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes owner-only files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def state_dict_mismatch(expected: Mapping[str, Any], loaded: Mapping[str, Any], show: int = 4) -> str:
    """'' when ``loaded`` has exactly ``expected``'s tensor names and shapes; else which names are missing,
    unexpected or resized (the first ``show`` of each, and their count), for an error message."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    resized = sorted(k for k in set(expected) & set(loaded) if expected[k].shape != loaded[k].shape)
    return "; ".join(
        f"{label} {keys[:show]}{' ...' if len(keys) > show else ''} ({len(keys)})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("resized", resized))
        if keys
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
