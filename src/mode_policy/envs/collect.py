"""Record Meta-World scripted-expert demonstrations into a LeRobotDataset v3.

Each episode draws its goal and object placement from ``episode_seed(task, attempt, "demo", seed)``, so demos
never share a seed with evaluation episodes. An episode is recorded from reset until ``frames_after_success``
frames past the first ``info["success"]`` (the experts hold still near the goal there, which teaches the
policy to stop), or until Meta-World's 500-step horizon. With ``cameras`` every step is also rendered
off-screen (``observation.images.<camera>``, uint8 frames stored as MP4 videos or PNG images).
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from mode_policy.data.writer import LeRobotDatasetWriter
from mode_policy.envs.metaworld import (
    ACTION_DIM,
    ACTION_NAMES,
    FPS,
    MAX_EPISODE_STEPS,
    ROBOT_TYPE,
    STATE_DIM,
    STATE_NAMES,
    CameraRenderer,
    configure_rendering,
    episode_seed,
    instruction,
    make_env,
    parse_cameras,
    reset_with_seed,
    scripted_policy,
    suite_tasks,
)
from mode_policy.keys import ACTION_KEY, STATE_KEY, image_key
from mode_policy.messages import warn
from mode_policy.nn.encoders.vision import feature_map_size, smallest_image_size

FEATURES: dict[str, dict[str, Any]] = {
    STATE_KEY: {"dtype": "float32", "shape": [STATE_DIM], "names": list(STATE_NAMES)},
    ACTION_KEY: {"dtype": "float32", "shape": [ACTION_DIM], "names": list(ACTION_NAMES)},
}


MIN_IMAGE_SIZE = 8  # what MoDEPolicyConfig.image_size accepts


@dataclass
class ExpertEpisode:
    """One recorded rollout: states (T, 39) and actions (T, 4), float32; action t was taken in state t."""

    task: str
    seed: int
    states: np.ndarray
    actions: np.ndarray
    success: bool
    steps_to_success: int | None  # env steps until info["success"] first became true
    env_steps: int
    images: dict[str, np.ndarray] | None = None  # camera -> (T, H, W, 3) uint8, frame t seen in state t


def camera_features(cameras: list[str], image_size: int, image_format: str = "video") -> dict[str, dict]:
    """Dataset features of the rendered cameras: ``observation.images.<camera>`` of shape [H, W, 3]."""
    if image_format not in ("video", "image"):
        raise ValueError(f"image_format must be 'video' (MP4) or 'image' (PNG), got {image_format!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image size (--image-size) must be an integer >= {MIN_IMAGE_SIZE} pixels, got {image_size!r}"
        )
    smallest = smallest_image_size("spatial_softmax")
    if image_size < smallest:
        cells = feature_map_size(image_size)
        warn(
            f"{image_size} px camera frames are too small for the default image encoder: ResNet's last "
            f"feature map would be {cells}x{cells}, where spatial-softmax keypoints cannot move; use "
            f"--image-size {smallest} or more (or train with --set vision_pool=avg)"
        )
    return {
        image_key(camera): {
            "dtype": image_format,
            "shape": [image_size, image_size, 3],
            "names": ["height", "width", "channels"],
        }
        for camera in cameras
    }


@dataclass
class TaskCollection:
    task: str
    episodes: list[ExpertEpisode]
    attempts: int
    successes: int
    env_steps: int
    seconds: float


def run_expert_episode(
    env: Any,
    policy: Any,
    task: str,
    seed: int,
    *,
    frames_after_success: int = 10,
    max_steps: int = MAX_EPISODE_STEPS,
    renderer: CameraRenderer | None = None,
) -> ExpertEpisode:
    """Roll out ``policy`` on ``env`` reset to ``seed``; stop ``frames_after_success`` steps after success.

    ``renderer``: also record its cameras at every step (the frame seen with each state)."""
    obs, _ = reset_with_seed(env, seed)
    states, actions = [], []
    frames: dict[str, list[np.ndarray]] = {c: [] for c in renderer.cameras} if renderer else {}
    success_step = None
    for step in range(max_steps):
        if renderer is not None:
            for camera, image in renderer.render(env).items():
                frames[camera].append(image)
        # The experts may overshoot [-1, 1]; the env clips, so record what it actually executed.
        action = np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)
        states.append(obs.astype(np.float32))
        actions.append(action)
        obs, _, _, truncated, info = env.step(action)
        if success_step is None and info["success"]:
            success_step = step + 1
        if success_step is not None and step + 1 >= success_step + frames_after_success:
            break
        if truncated:
            break
    return ExpertEpisode(
        task=task,
        seed=seed,
        states=np.stack(states),
        actions=np.stack(actions),
        success=success_step is not None,
        steps_to_success=success_step,
        env_steps=len(states),
        images={c: np.stack(f) for c, f in frames.items()} if renderer else None,
    )


def collect_task(
    task: str,
    episodes: int,
    seed: int = 0,
    *,
    keep_failed: bool = False,
    frames_after_success: int = 10,
    max_attempts: int | None = None,
    progress_bar: Any = None,
    cameras: list[str] | None = None,
    image_size: int = 96,
) -> TaskCollection:
    """``episodes`` expert episodes of one task (successful ones only unless ``keep_failed``).

    Failed attempts are retried with the next demo seed, up to ``max_attempts`` (default 2N + 10), after
    which RuntimeError reports the success count: the scripted experts succeed ~99% of the time, so hitting
    the cap means something is wrong with the environment install, not bad luck.
    """
    cap = max_attempts if max_attempts is not None else 2 * episodes + 10
    start = time.perf_counter()
    env = make_env(task, seed=episode_seed(task, 0, "demo", seed))
    policy = scripted_policy(task)
    renderer = CameraRenderer(parse_cameras(cameras), image_size) if cameras else None
    kept: list[ExpertEpisode] = []
    attempts = successes = env_steps = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
        while len(kept) < episodes:
            if attempts >= cap:
                raise RuntimeError(
                    f"{task}: only {successes} of {attempts} scripted-expert episodes succeeded (needed "
                    f"{episodes}); check the metaworld install, or pass keep_failed=True to keep failures"
                )
            ep = run_expert_episode(
                env,
                policy,
                task,
                episode_seed(task, attempts, "demo", seed),
                frames_after_success=frames_after_success,
                renderer=renderer,
            )
            attempts += 1
            successes += ep.success
            env_steps += ep.env_steps
            if ep.success or keep_failed:
                kept.append(ep)
                if progress_bar is not None:
                    progress_bar.update(1)
                    progress_bar.set_postfix(task=task, success=f"{successes}/{attempts}")
    if renderer is not None:
        renderer.close()
    env.close()
    return TaskCollection(task, kept, attempts, successes, env_steps, time.perf_counter() - start)


def _collect_task_job(args: tuple) -> TaskCollection:
    task, episodes, seed, keep_failed, frames_after_success, cameras, image_size = args
    if cameras:
        configure_rendering()
    return collect_task(
        task,
        episodes,
        seed,
        keep_failed=keep_failed,
        frames_after_success=frames_after_success,
        cameras=cameras,
        image_size=image_size,
    )


def collect_demonstrations(
    out: str | Path,
    suite: str = "mt10",
    tasks: str | list[str] | None = None,
    episodes_per_task: int = 50,
    seed: int = 0,
    keep_failed: bool = False,
    progress: bool = True,
    *,
    frames_after_success: int = 10,
    workers: int = 1,
    overwrite: bool = False,
    cameras: str | list[str] | None = None,
    image_size: int = 96,
    image_format: str = "video",
) -> Path:
    """Collect ``episodes_per_task`` scripted-expert demos per task into a LeRobotDataset v3 at ``out``.

    Features: ``observation.state`` (39,) float32, ``action`` (4,) float32, plus LeRobot's index columns;
    the task string is the natural-language instruction (``mode_policy.envs.instructions``); fps = 80 (the
    Meta-World control rate). ``workers > 1`` collects tasks in that many processes. The dataset appears at
    ``out`` only once complete (atomic rename). Returns ``out``.

    cameras: e.g. ``"corner,gripper"`` (``envs.metaworld.CAMERAS``; "gripper" is gripperPOV): each adds
    ``observation.images.<camera>`` of ``image_size`` x ``image_size`` RGB frames, stored as MP4
    (``image_format="video"``, needs PyAV) or PNG in the parquet (``"image"``). Rendering is off-screen
    (MUJOCO_GL: OSMesa on a CPU, EGL with a GPU; see ``configure_rendering``), ~11 frames/s per core on CPU.
    """
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    names = suite_tasks(suite, tasks)
    camera_names = parse_cameras(cameras)
    features = dict(FEATURES)
    if camera_names:
        features.update(camera_features(camera_names, image_size, image_format))
        configure_rendering()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(names) * episodes_per_task, desc="collecting demos", unit="ep", disable=not progress)
    with bar, LeRobotDatasetWriter(out, FPS, features, robot_type=ROBOT_TYPE, overwrite=overwrite) as writer:
        jobs = [
            (task, episodes_per_task, seed, keep_failed, frames_after_success, camera_names, image_size)
            for task in names
        ]
        # Cameras render in spawned processes: MUJOCO_GL only takes effect before MuJoCo's first import,
        # which this process may already have done (e.g. a notebook that imported metaworld).
        if (workers > 1 and len(names) > 1) or camera_names:
            with ProcessPoolExecutor(
                max_workers=max(1, min(workers, len(names))), mp_context=get_context("spawn")
            ) as pool:
                results = pool.map(_collect_task_job, jobs)
                for result in results:
                    _write_task(writer, result)
                    bar.update(len(result.episodes))
                    bar.set_postfix(task=result.task, success=f"{result.successes}/{result.attempts}")
        else:
            for job in jobs:
                result = collect_task(
                    *job[:3],
                    keep_failed=keep_failed,
                    frames_after_success=frames_after_success,
                    progress_bar=bar,
                    cameras=camera_names,
                    image_size=image_size,
                )
                _write_task(writer, result)
    return Path(out)


def _write_task(writer: LeRobotDatasetWriter, result: TaskCollection) -> None:
    task = instruction(result.task)
    for ep in result.episodes:
        for t, (state, action) in enumerate(zip(ep.states, ep.actions, strict=True)):
            frame = {STATE_KEY: state, ACTION_KEY: action}
            for camera, images in (ep.images or {}).items():
                frame[image_key(camera)] = images[t]
            writer.add_frame(frame)
        writer.save_episode(task=task)
