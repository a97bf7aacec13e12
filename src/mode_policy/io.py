"""Files in and out, in one place per kind: atomic writes, and readers that turn a library's error about a
damaged file (JSON, safetensors, torch checkpoints) into one line naming the file, what is wrong and what to
do. Output folders are checked here before any work starts.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


class CorruptFileError(ValueError):
    """A file exists but cannot be read: empty, truncated, or not in the format its name promises."""


class OutputExistsError(FileExistsError):
    """An output path is taken by something this command must not overwrite."""


# Writing ----------------------------------------------------------------------------------------------
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


def check_output_dir(
    path: str | Path, *, option: str, owned: Iterable[str] | None = (), what: str = "output folder"
) -> Path:
    """Refuse, before any work starts, an output folder this command could not use without harm.

    ``path`` may be missing, an empty folder, or a folder holding one of the ``owned`` names (a previous
    output of the same command, which the command then updates); ``owned=None`` accepts any folder (for
    outputs with names of their own, such as videos). A file, or a folder of other things, is refused:
    nothing a user owns is overwritten or mixed with our outputs. ``option`` names the command-line flag
    in the message (e.g. ``--out``).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(
            f"{option} {path} is an existing file, not a folder; pass a new folder path for the {what}"
        )
    if path.is_dir() and owned is not None:
        entries = {entry.name for entry in path.iterdir()}
        if entries and not entries & set(owned):
            shown = ", ".join(sorted(entries)[:3]) + (" ..." if len(entries) > 3 else "")
            raise OutputExistsError(
                f"{option} {path} already holds other files ({shown}) and is not a {what} of ours; "
                "choose a new or empty folder"
            )
    return path


# Reading ----------------------------------------------------------------------------------------------
def read_json(path: str | Path, *, fix: str) -> Any:
    """The JSON value in ``path``; a missing, undecodable or malformed file raises one line with ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise CorruptFileError(f"{path} is not UTF-8 text (byte {error.start} is damaged); {fix}") from None
    except json.JSONDecodeError as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}); {fix}") from None


def load_safetensors(path: str | Path, *, fix: str, device: str = "cpu") -> dict[str, Any]:
    """Every tensor of a safetensors file; a damaged file, or NaN/inf in a float tensor, is refused."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {fix}")
    try:
        tensors = load_file(str(path), device=device)
    except Exception as error:  # SafetensorError, OSError, struct/JSON errors of a damaged header
        raise CorruptFileError(
            f"{path} is not a readable safetensors file ({_reason(error, path)}); {fix}"
        ) from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CorruptFileError(f"{path}: tensor {name!r} holds NaN or inf values (a damaged file); {fix}")
    return tensors


def load_checkpoint(path: str | Path, *, fix: str) -> dict[str, Any]:
    """A torch checkpoint, loaded with ``weights_only=True`` (never unpickling code); damage is one line.

    torch's own messages for such files suggest ``weights_only=False``, which would run whatever code the
    file holds: that advice is never passed on.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {fix}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip reader, EOF, unpickling errors of a truncated or foreign file
        raise CorruptFileError(f"{path} is corrupt ({_reason(error, path)}); {fix}") from None
    if not isinstance(checkpoint, dict):
        kind = type(checkpoint).__name__
        raise CorruptFileError(f"{path} is corrupt (it holds a {kind}, not a checkpoint); {fix}")
    return checkpoint


def _reason(error: Exception, path: Path) -> str:
    """A short, safe description of why a library could not read ``path``."""
    if path.stat().st_size == 0:
        return "the file is empty"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "weights_only" in text or "pickle" in text.lower() or len(text) > 160:
        return "truncated or not this kind of file"
    return text


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
