"""Camera frames in the LeRobotDataset v3 layout: MP4 streams (PyAV) and PNG images inside parquet.

Two storage kinds, as LeRobot writes them:

- ``dtype "video"``: ``videos/<key>/chunk-XXX/file-YYY.mp4`` holds many episodes back to back; the episode
  metadata gives each episode's file (``videos/<key>/chunk_index``, ``videos/<key>/file_index``) and its
  span in seconds (``videos/<key>/from_timestamp``, ``videos/<key>/to_timestamp``); ``info.json`` describes
  the stream under ``features[key]["info"]`` (``video.height``, ``video.codec``, ``video.pix_fmt`` ...).
- ``dtype "image"``: each data row holds the encoded image as an Arrow struct ``{bytes: binary, path:
  string}`` (Hugging Face ``datasets.Image``); we write PNG (lossless).

For training, every frame of a key is decoded once into one ``(num_frames, H, W, 3)`` uint8 array (in memory,
or a memory-mapped ``.npy`` in ``cache_dir`` that later runs reuse), so a training item is a fancy-index
lookup and decoding never starves the optimiser. PyAV is an optional dependency (``mode-policy[vision]``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mode_policy.data.errors import DatasetError

DEFAULT_VIDEO_CODEC = "libx264"
DEFAULT_PIX_FMT = "yuv420p"
DEFAULT_CRF = 18
IMAGE_DTYPES = frozenset({"image", "video"})


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise ImportError(
            "video features need PyAV: pip install 'mode-policy[vision]' (or pip install av)"
        ) from None
    return av


# ---------------------------------------------------------------------------------------------------- MP4
class VideoStreamWriter:
    """Append uint8 (H, W, 3) frames to one MP4 file; ``close()`` flushes it. Timestamps are frame / fps."""

    def __init__(
        self,
        path: str | Path,
        fps: int,
        width: int,
        height: int,
        *,
        codec: str = DEFAULT_VIDEO_CODEC,
        pix_fmt: str = DEFAULT_PIX_FMT,
        crf: int = DEFAULT_CRF,
    ) -> None:
        av = _import_av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.codec, self.pix_fmt = int(fps), codec, pix_fmt
        self.width, self.height = int(width), int(height)
        self._container = av.open(str(self.path), mode="w")
        stream = self._container.add_stream(codec, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, pix_fmt
        stream.time_base = Fraction(1, self.fps)
        # Every other frame a keyframe (LeRobot's g=2) keeps random access cheap; crf sets the quality.
        stream.options = (
            {"crf": str(crf), "g": "2"} if codec in ("libx264", "h264", "libx265", "hevc") else {}
        )
        self._stream = stream
        self.frames = 0
        self.bytes_hint = 0

    def write(self, frames: Iterable[np.ndarray]) -> None:
        av = _import_av()
        for frame in frames:
            array = np.ascontiguousarray(frame, dtype=np.uint8)
            if array.shape != (self.height, self.width, 3):
                raise ValueError(
                    f"{self.path}: frame of shape {array.shape}, stream is ({self.height}, {self.width}, 3)"
                )
            video_frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            video_frame.pts = self.frames
            for packet in self._stream.encode(video_frame):
                self.bytes_hint += packet.size
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def info(self) -> dict[str, Any]:
        """LeRobot's ``features[key]["info"]`` for this stream."""
        return {
            "video.height": self.height,
            "video.width": self.width,
            "video.codec": {"libx264": "h264", "libx265": "hevc", "libsvtav1": "av1"}.get(
                self.codec, self.codec
            ),
            "video.pix_fmt": self.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": self.fps,
            "video.channels": 3,
            "has_audio": False,
        }


def decode_video(
    path: str | Path, from_timestamp: float = 0.0, to_timestamp: float | None = None, fps: float | None = None
) -> np.ndarray:
    """Frames of ``path`` whose timestamps lie in [from_timestamp, to_timestamp): (T, H, W, 3) uint8.

    Seeks to the keyframe before ``from_timestamp`` and decodes forward (multi-threaded); a frame belongs to
    the span when its presentation time rounds into it at ``fps`` (the stream's rate by default).
    """
    av = _import_av()
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: video file missing; the dataset is incomplete, re-download or rewrite it"
        )
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: holds no video stream; the dataset's video file is damaged")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(fps or stream.average_rate or stream.guessed_rate)
            first = round(from_timestamp * rate)
            last = None if to_timestamp is None else round(to_timestamp * rate)
            if from_timestamp > 0 and stream.time_base:
                container.seek(
                    int(from_timestamp / stream.time_base), stream=stream, backward=True, any_frame=False
                )
            for frame in container.decode(stream):
                index = round(float(frame.pts * frame.time_base) * rate) if frame.pts is not None else None
                if index is None or index < first:
                    continue
                if last is not None and index >= last:
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, OSError, ValueError, TypeError, ZeroDivisionError) as error:
        if isinstance(error, DatasetError):
            raise
        reason = "the file is empty" if path.stat().st_size == 0 else str(error).splitlines()[0][:160]
        raise DatasetError(
            f"{path}: not a readable video ({reason}); the file is truncated or damaged: restore it, or "
            "rewrite the dataset"
        ) from None
    if not frames:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------------- PNG
def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """PNG / JPEG bytes -> (H, W, 3) uint8 (grey and RGBA are converted to RGB); ValueError if undecodable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:  # PIL raises SyntaxError for bad PNGs
        raise ValueError(f"undecodable image bytes ({error})") from None


# ---------------------------------------------------------------------------------------------------- cache
def decode_key(dataset: Any, key: str, *, cache_dir: str | Path | None = None) -> np.ndarray:
    """All frames of camera ``key`` of a ``LeRobotDataset`` in row order: (num_frames, H, W, 3) uint8.

    ``cache_dir``: keep the decoded frames in ``<cache_dir>/<key>.npy`` (memory-mapped, reused while the
    dataset's frame count and shape agree), else an in-memory array.
    """
    feature = dataset.features.get(key)
    if feature is None or feature.get("dtype") not in IMAGE_DTYPES:
        found = [k for k, ft in dataset.features.items() if ft.get("dtype") in IMAGE_DTYPES]
        raise KeyError(f"{dataset.root}: no image or video feature {key!r}; camera features: {found}")
    shape = tuple(int(d) for d in feature["shape"])
    if len(shape) != 3:
        raise DatasetError(f"{dataset.root}: feature {key!r} must have shape [H, W, C], got {list(shape)}")
    height, width = (shape[0], shape[1]) if shape[2] in (1, 3, 4) else (shape[1], shape[2])
    target = (dataset.num_frames, height, width, 3)
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{key}.npy"
        meta_path = cache_path.with_suffix(".json")
        signature = {"root": str(Path(dataset.root).resolve()), "shape": list(target)}
        if cache_path.is_file() and _cached_signature(meta_path) == signature:
            try:
                return np.load(cache_path, mmap_mode="r")
            except (OSError, ValueError):  # a damaged cache is rebuilt, like a stale one
                pass
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(cache_path, mode="w+", dtype=np.uint8, shape=target)
    else:
        out = np.empty(target, dtype=np.uint8)
    if feature["dtype"] == "video":
        _decode_video_key(dataset, key, out)
    else:
        _decode_image_key(dataset, key, out)
    if cache_path is not None:
        out.flush()
        cache_path.with_suffix(".json").write_text(json.dumps(signature))
        return np.load(cache_path, mmap_mode="r")
    return out


def _cached_signature(meta_path: Path) -> Any:
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None


def _decode_video_key(dataset: Any, key: str, out: np.ndarray) -> None:
    template = (
        dataset.info.get("video_path")
        or "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    )
    columns = [f"videos/{key}/{name}" for name in ("chunk_index", "file_index", "from_timestamp")]
    by_file: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for ep in dataset.episodes:
        missing = [c for c in columns if c not in ep]
        if missing:
            raise DatasetError(
                f"{dataset.root}/meta/episodes: episode {ep['episode_index']} lacks {missing}, needed to "
                f"find its frames of video feature {key!r}; rewrite the episode metadata"
            )
        by_file.setdefault((int(ep[columns[0]]), int(ep[columns[1]])), []).append(ep)
    for (chunk, file), episodes in by_file.items():
        path = Path(dataset.root) / template.format(video_key=key, chunk_index=chunk, file_index=file)
        episodes.sort(key=lambda ep: ep[columns[2]])
        start = float(episodes[0][columns[2]])
        end = max(float(ep.get(f"videos/{key}/to_timestamp") or 0.0) for ep in episodes) or None
        frames = decode_video(path, start, end, dataset.fps)  # one pass over the file's span
        for ep in episodes:
            offset = round((float(ep[columns[2]]) - start) * dataset.fps)
            length = int(ep["length"])
            rows = slice(ep["dataset_from_index"], ep["dataset_to_index"])
            if offset + length > len(frames):
                raise DatasetError(
                    f"{path}: episode {ep['episode_index']} needs frames {offset}..{offset + length - 1} "
                    f"from {start:.3f}s but the file has {len(frames)} there; the video is truncated"
                )
            chunk_frames = frames[offset : offset + length]
            if chunk_frames.shape[1:] != out.shape[1:]:
                raise DatasetError(
                    f"{path}: frames are {chunk_frames.shape[1:]}, meta/info.json declares {out.shape[1:]}"
                )
            out[rows] = chunk_frames


def _decode_image_key(dataset: Any, key: str, out: np.ndarray) -> None:
    from mode_policy.data.format import read_parquet

    row = 0
    for path in dataset._data_files:
        column = read_parquet(path, columns=[key]).column(key)
        for value in column.to_pylist():
            data = value.get("bytes") if isinstance(value, dict) else value
            if data is None and isinstance(value, dict) and value.get("path"):
                data = (Path(dataset.root) / value["path"]).read_bytes()
            if data is None:
                raise DatasetError(f"{path}: row {row} of image feature {key!r} holds no bytes and no path")
            try:
                image = decode_image(data)
            except ValueError as error:
                raise DatasetError(f"{path}: row {row} of image {key!r}: {error}; rewrite it") from None
            if image.shape != out.shape[1:]:
                raise DatasetError(
                    f"{path}: image {row} of {key!r} is {image.shape}, meta/info.json declares "
                    f"{out.shape[1:]}"
                )
            out[row] = image
            row += 1


def image_stats(frames: np.ndarray, max_frames: int = 2000) -> dict[str, np.ndarray]:
    """LeRobot-style per-channel stats of (N, H, W, 3) uint8 frames in [0, 1], shape (3, 1, 1)."""
    if len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).astype(np.int64)]
    data = frames.astype(np.float64) / 255.0
    axes = (0, 1, 2)
    stats = {
        "min": data.min(axis=axes),
        "max": data.max(axis=axes),
        "mean": data.mean(axis=axes),
        "std": data.std(axis=axes),
    }
    out = {k: v.reshape(3, 1, 1) for k, v in stats.items()}
    out["count"] = np.array([len(frames)], dtype=np.int64)
    return out
