"""Meta-World v3 tasks, seeded goal-observable environments and their scripted experts.

Observations are 39-d float64 vectors (hand xyz, gripper opening, two objects' xyz + quaternion, the same 18
values from the previous step, then the goal xyz); actions are 4-d in [-1, 1] (hand delta xyz, gripper).
Success is ``info["success"]`` (a float, 1.0 once the task is solved) returned by ``env.step``. Meta-World
never terminates an episode; it truncates at ``MAX_EPISODE_STEPS`` and raises on a step past it.

``metaworld`` is an optional dependency (``pip install 'mode-policy[metaworld]'``): the task lists and
seeds here import without it, environments and experts import it on first use.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import numpy as np

from mode_policy.envs.instructions import INSTRUCTIONS

# Copied in Meta-World's own order from metaworld.env_dict.MT10_V3 / ALL_V3_ENVIRONMENTS (== MT50_V3);
# tests/envs checks they still agree with the installed metaworld.
MT10_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
MT50_TASKS: tuple[str, ...] = (
    "assembly-v3",
    "basketball-v3",
    "bin-picking-v3",
    "box-close-v3",
    "button-press-topdown-v3",
    "button-press-topdown-wall-v3",
    "button-press-v3",
    "button-press-wall-v3",
    "coffee-button-v3",
    "coffee-pull-v3",
    "coffee-push-v3",
    "dial-turn-v3",
    "disassemble-v3",
    "door-close-v3",
    "door-lock-v3",
    "door-open-v3",
    "door-unlock-v3",
    "hand-insert-v3",
    "drawer-close-v3",
    "drawer-open-v3",
    "faucet-open-v3",
    "faucet-close-v3",
    "hammer-v3",
    "handle-press-side-v3",
    "handle-press-v3",
    "handle-pull-side-v3",
    "handle-pull-v3",
    "lever-pull-v3",
    "pick-place-wall-v3",
    "pick-out-of-hole-v3",
    "pick-place-v3",
    "plate-slide-v3",
    "plate-slide-side-v3",
    "plate-slide-back-v3",
    "plate-slide-back-side-v3",
    "peg-insert-side-v3",
    "peg-unplug-side-v3",
    "soccer-v3",
    "stick-push-v3",
    "stick-pull-v3",
    "push-v3",
    "push-wall-v3",
    "push-back-v3",
    "reach-v3",
    "reach-wall-v3",
    "shelf-place-v3",
    "sweep-into-v3",
    "sweep-v3",
    "window-open-v3",
    "window-close-v3",
)
SUITES: dict[str, tuple[str, ...]] = {"mt10": MT10_TASKS, "mt50": MT50_TASKS}

# Meta-World's own truncation horizon (SawyerXYZEnv.max_path_length).
MAX_EPISODE_STEPS = 500
STATE_DIM = 39
ACTION_DIM = 4
# MuJoCo timestep 2.5 ms x frame_skip 5 = 12.5 ms per env step, i.e. 80 Hz (also env.metadata["render_fps"]).
FPS = 80
ROBOT_TYPE = "sawyer"

_OBJECT_NAMES = ("hand_x", "hand_y", "hand_z", "gripper_opening")
_OBJECT_NAMES += tuple(f"obj{i}_{c}" for i in (1, 2) for c in ("x", "y", "z", "qw", "qx", "qy", "qz"))
# Names of the 39 state dimensions, written into the dataset's info.json like LeRobot's motor names.
STATE_NAMES: tuple[str, ...] = (
    _OBJECT_NAMES + tuple(f"prev_{n}" for n in _OBJECT_NAMES) + ("goal_x", "goal_y", "goal_z")
)
ACTION_NAMES: tuple[str, ...] = ("delta_x", "delta_y", "delta_z", "gripper")

Split = Literal["demo", "eval"]
_SPLIT_BIT = {"demo": 0, "eval": 1}


def suite_tasks(suite: str, tasks: str | list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The tasks of ``suite`` ("mt10" or "mt50"), or the requested subset of them, in the order given.

    ``tasks`` may be a list or a comma-separated string; names may omit the "-v3" suffix.
    Raises ValueError naming the valid choices for an unknown suite or task.
    """
    key = suite.lower()
    if key not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {sorted(SUITES)}")
    valid = SUITES[key]
    if tasks is None:
        return list(valid)
    if isinstance(tasks, str):
        tasks = [t for t in (part.strip() for part in tasks.split(",")) if t]
    chosen = []
    for task in tasks:
        name = task if task.endswith("-v3") else f"{task}-v3"
        if name not in valid:
            raise ValueError(f"unknown task {task!r} for suite {key}; valid tasks: {', '.join(valid)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError(f"no tasks given for suite {key}; valid tasks: {', '.join(valid)}")
    return chosen


def _check_task(task: str) -> None:
    if task not in MT50_TASKS:
        raise ValueError(f"unknown Meta-World task {task!r}; valid tasks: {', '.join(MT50_TASKS)}")


def instruction(task: str) -> str:
    """The natural-language instruction for ``task`` (e.g. "open the drawer")."""
    _check_task(task)
    return INSTRUCTIONS[task]


# Evaluation base seeds: recipes are chosen on VALIDATION_SEED (5000+), results reported on TEST_SEED (1000+).
TEST_SEED, VALIDATION_SEED = 1000, 5000


def episode_seed(task: str, episode: int, split: Split = "demo", seed: int = 0) -> int:
    """Seed of the random goal / object placement for ``episode`` of ``task``.

    Deterministic across processes and Python versions (no ``hash()``). The lowest bit encodes the split, so
    demonstration and evaluation seeds can never coincide whatever the task, episode or base ``seed``;
    different tasks and episodes get unrelated seeds from a SHA-256 digest.
    """
    _check_task(task)
    if split not in _SPLIT_BIT:
        raise ValueError(f"unknown split {split!r}; choose 'demo' or 'eval'")
    if episode < 0:
        raise ValueError(f"episode must be >= 0, got {episode}")
    digest = hashlib.sha256(f"{task}/{episode}/{seed}".encode()).digest()
    # 30 random bits, shifted left once: fits MuJoCo/NumPy's 32-bit seeds with the split in bit 0.
    return (int.from_bytes(digest[:4], "little") >> 2) * 2 + _SPLIT_BIT[split]


def make_env(task: str, seed: int, render_mode: str | None = None) -> Any:
    """A goal-observable Meta-World v3 env for ``task``, goal and object placement drawn from ``seed``.

    The placement stays fixed for the env's lifetime (Meta-World freezes it); ``reset_with_seed`` redraws
    it on the same env, much cheaper than building a new one (~0.25 s).
    """
    _check_task(task)
    import metaworld

    env_cls = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"]
    return env_cls(seed=int(seed), render_mode=render_mode)


def reset_with_seed(env: Any, seed: int) -> tuple[np.ndarray, dict]:
    """Redraw ``env``'s goal / object placement exactly as ``make_env(task, seed)`` would, then reset it.

    Mirrors the goal-observable constructor: the placement comes from NumPy's global RNG seeded with
    ``seed`` (restored afterwards), then the env's own RNG is seeded with it.
    """
    # Meta-World draws placements from NumPy's legacy global RNG, so that is the one to seed here.
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(int(seed))  # noqa: NPY002
        env._freeze_rand_vec = False
        env.reset()
        env._freeze_rand_vec = True
        env.seed(int(seed))
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return env.reset()


def scripted_policy(task: str) -> Any:
    """Meta-World's scripted expert for ``task`` (``metaworld.policies.Sawyer<Task>V3Policy``).

    Stateless: ``policy.get_action(obs)`` maps a 39-d observation to a 4-d action. Its actions can leave
    [-1, 1]; the env clips them, so callers that record actions should clip too.
    """
    _check_task(task)
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task]()


# Meta-World v3's cameras (sawyer_xyz_base.xml); "gripperPOV" looks from the gripper.
CAMERAS: tuple[str, ...] = (
    "corner",
    "corner2",
    "corner3",
    "corner4",
    "topview",
    "behindGripper",
    "gripperPOV",
)


def configure_rendering() -> str:
    """Pick MuJoCo's off-screen backend before MuJoCo is imported: MUJOCO_GL if set, else EGL where an
    NVIDIA GPU is visible, else OSMesa (CPU; Debian/Ubuntu package libosmesa6). Returns the choice."""
    import os

    if "MUJOCO_GL" not in os.environ:
        gpu = os.path.exists("/dev/nvidia0") or bool(os.environ.get("CUDA_VISIBLE_DEVICES"))
        os.environ["MUJOCO_GL"] = "egl" if gpu else "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    return os.environ["MUJOCO_GL"]


def parse_cameras(cameras: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"corner,gripper"`` -> ``["corner", "gripperPOV"]``: checked names ("gripper" is gripperPOV)."""
    if cameras is None:
        return []
    if isinstance(cameras, str):
        cameras = [c.strip() for c in cameras.split(",") if c.strip()]
    names = []
    for camera in cameras:
        name = "gripperPOV" if camera == "gripper" else camera
        if name not in CAMERAS:
            raise ValueError(
                f"unknown Meta-World camera {camera!r}; choose from {', '.join(CAMERAS)} (or gripper)"
            )
        if name not in names:
            names.append(name)
    return names


class CameraRenderer:
    """Renders ``cameras`` of a Meta-World env off-screen: ``render(env) -> {camera: (H, W, 3) uint8}``.

    One ``mujoco.Renderer`` (one GL context) per env model and size, reused for every camera and step, as
    MuJoCo's image origin (the same orientation ``env.render()`` returns). Call ``configure_rendering()``
    before MuJoCo is first imported. About 11 frames/s with OSMesa on one CPU core, whatever the size.
    """

    def __init__(self, cameras: list[str], height: int, width: int | None = None) -> None:
        self.cameras = parse_cameras(cameras)
        self.height, self.width = int(height), int(width or height)
        self._renderer: Any = None
        self._model: Any = None

    def render(self, env: Any) -> dict[str, np.ndarray]:
        import mujoco

        model = env.unwrapped.model if hasattr(env, "unwrapped") else env.model
        if self._renderer is None or self._model is not model:
            self.close()
            try:
                self._renderer = mujoco.Renderer(model, self.height, self.width)
            except Exception as error:
                raise RuntimeError(
                    "MuJoCo could not render off-screen with MUJOCO_GL="
                    f"{__import__('os').environ.get('MUJOCO_GL')} ({error}); on a CPU machine install OSMesa "
                    "(`apt-get install -y libosmesa6`) and set "
                    "MUJOCO_GL=osmesa, on a GPU machine use MUJOCO_GL=egl; MUJOCO_GL must be set before "
                    "MuJoCo is first imported in the process"
                ) from error
            self._model = model
        data = env.unwrapped.data if hasattr(env, "unwrapped") else env.data
        frames = {}
        for camera in self.cameras:
            self._renderer.update_scene(data, camera=camera)
            frames[camera] = self._renderer.render().copy()
        return frames

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
            self._model = None
