"""Environment worker processes: each owns a share of the episodes' Meta-World envs and steps them on request.

The policy stays in the main process and runs once per step over every active episode (one batched call
beats many small ones on a CPU); workers only step MuJoCo. Envs are pooled per task and reset to each
episode's seed with ``reset_with_seed`` (building one costs ~0.25 s, resetting ~1 ms).

Protocol (``multiprocessing`` pipe, main -> worker):
  ("start", [(job, task, episode, seed, record_video)])  -> {job: obs (39,) float64}
  ("step", {job: action (4,)})                 -> {job: (obs, success: bool)}
  ("finish", [job])                            -> None   (returns envs to the pool, writes videos)
  ("close", None)                              -> None
A worker that fails sends ("error", traceback text) instead of a reply.
"""

from __future__ import annotations

import os
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

Job = tuple[int, str, int, int, bool]


def worker_main(conn: Connection, video_dir: str | None, video_fps: int) -> None:
    """Entry point of a worker process (spawned: MuJoCo state is never shared by fork)."""
    if video_dir is not None:
        os.environ.setdefault("MUJOCO_GL", "osmesa")  # must precede the first mujoco import
    import warnings

    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
    try:
        _serve(conn, video_dir, video_fps)
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _serve(conn: Connection, video_dir: str | None, video_fps: int) -> None:
    from mode_policy.envs.metaworld import make_env, reset_with_seed

    pool: dict[str, list[Any]] = {}  # task -> idle envs without rendering
    running: dict[int, tuple[str, int, Any, bool]] = {}  # job -> (task, episode, env, recording)
    frames: dict[int, list[Any]] = {}
    while True:
        command, payload = conn.recv()
        if command == "start":
            replies = {}
            for job, task, episode, seed, record in payload:
                if record:
                    env = make_env(task, seed, render_mode="rgb_array")
                else:
                    env = pool.get(task, []).pop() if pool.get(task) else make_env(task, seed)
                obs, _ = reset_with_seed(env, seed)
                running[job] = (task, episode, env, record)
                if record:
                    frames[job] = [env.render()]
                replies[job] = obs
            conn.send(("ok", replies))
        elif command == "step":
            replies = {}
            for job, action in payload.items():
                _, _, env, record = running[job]
                obs, _, _, _, info = env.step(action)
                if record:
                    frames[job].append(env.render())
                replies[job] = (obs, bool(info["success"]))
            conn.send(("ok", replies))
        elif command == "finish":
            for job in payload:
                task, episode, env, record = running.pop(job)
                if record:
                    _write_video(Path(video_dir) / f"{task}-ep{episode:03d}.mp4", frames.pop(job), video_fps)
                    env.close()
                else:
                    pool.setdefault(task, []).append(env)
            conn.send(("ok", None))
        elif command == "close":
            for envs in pool.values():
                for env in envs:
                    env.close()
            conn.send(("ok", None))
            return
        else:
            raise ValueError(f"unknown worker command {command!r}")


def _write_video(path: Path, frames: list[Any], fps: int) -> None:
    """frames: (H, W, 3) uint8 arrays -> an MP4 at ``path`` (written beside it, then renamed)."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    imageio.mimwrite(tmp, frames, fps=fps, macro_block_size=1)
    os.replace(tmp, path)
