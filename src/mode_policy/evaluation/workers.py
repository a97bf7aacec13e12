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

With ``cameras`` (a policy with image keys) an observation is instead a dict ``{"observation.state": (39,),
"observation.images.<camera>": (H, W, 3) uint8}``, rendered off-screen exactly as ``collect`` renders demos.
"""

from __future__ import annotations

import os
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mode_policy.keys import STATE_KEY, image_key

Job = tuple[int, str, int, int, bool]


def worker_main(
    conn: Connection,
    video_dir: str | None,
    video_fps: int,
    cameras: list[str] | None = None,
    image_size: tuple[int, int] = (96, 96),
) -> None:
    """Entry point of a worker process (spawned: MuJoCo state is never shared by fork)."""
    if cameras:
        from mode_policy.envs.metaworld import configure_rendering

        configure_rendering()  # must precede the first mujoco import
    if video_dir is not None:
        os.environ.setdefault("MUJOCO_GL", "osmesa")  # must precede the first mujoco import
    import warnings

    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
    try:
        _serve(conn, video_dir, video_fps, cameras or [], image_size)
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _serve(
    conn: Connection, video_dir: str | None, video_fps: int, cameras: list[str], image_size: tuple[int, int]
) -> None:
    from mode_policy.envs.metaworld import CameraRenderer, make_env, reset_with_seed

    renderer = CameraRenderer(cameras, *image_size) if cameras else None

    def observe(env: Any, state: Any) -> Any:
        if renderer is None:
            return state
        images = renderer.render(env)
        return {STATE_KEY: state, **{image_key(c): images[c] for c in cameras}}

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
                replies[job] = observe(env, obs)
            conn.send(("ok", replies))
        elif command == "step":
            replies = {}
            for job, action in payload.items():
                _, _, env, record = running[job]
                obs, _, _, _, info = env.step(action)
                if record:
                    frames[job].append(env.render())
                replies[job] = (observe(env, obs), bool(info["success"]))
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
            if renderer is not None:
                renderer.close()
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
