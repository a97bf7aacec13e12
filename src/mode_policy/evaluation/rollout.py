"""``evaluate()``: seeded Meta-World rollouts of a policy, success rates with intervals, inference timing.

results = evaluate("runs/mt10", suite="mt10", episodes_per_task=10, seed=0)
results["mean_success"], results["per_task"]["reach-v3"]["ci95"]

Protocol: goal-observable Meta-World v3 envs; episode ``e`` of task ``t`` is placed by
``episode_seed(t, e, "eval", seed)``, which never equals a demonstration seed. An episode succeeds when
``info["success"]`` is true at any step within ``MAX_EPISODE_STEPS`` (it then ends early: later steps
cannot change the outcome). All episodes of a wave (``max_concurrent``) run in lockstep: every step,
worker processes step the envs while the main process runs the policy once over all active episodes.
The receding-horizon bookkeeping matches ``MoDEPolicy.select_action`` (history of ``n_obs_steps`` states,
the first state repeated after reset; a new chunk every ``n_action_steps`` steps), so a result does not
depend on the batch layout beyond the sampling noise drawn from one seeded generator.
"""

from __future__ import annotations

import collections
import ctypes.util
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mode_policy.evaluation.env_pool import EnvPool
from mode_policy.evaluation.loading import load_policy
from mode_policy.evaluation.report import RESULT_FILES, format_table, write_results
from mode_policy.evaluation.stats import summarize
from mode_policy.io import check_output_dir
from mode_policy.keys import STATE_KEY


def osmesa_available() -> bool:
    """Whether MuJoCo can render off-screen on this CPU machine (Debian/Ubuntu package libosmesa6)."""
    return ctypes.util.find_library("OSMesa") is not None


def evaluate(
    policy_or_dir: Any,
    suite: str = "mt10",
    tasks: str | list[str] | None = None,
    episodes_per_task: int = 10,
    seed: int = 0,
    num_workers: int = 2,
    video_dir: str | Path | None = None,
    use_expert_cache: bool | None = None,
    *,
    out_dir: str | Path | None = None,
    max_concurrent: int = 100,
    max_episode_steps: int | None = None,
    record_actions: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a policy on a Meta-World suite; returns the results dict (also written as JSON + Markdown).

    policy_or_dir: a policy object, a training run directory (its ``policy/``), a ``save_pretrained``
    directory, or a shipped pretrained name. use_expert_cache: None keeps the policy's setting.
    out_dir: where results.json / results.md go; default ``RUN/eval/<suite>-seed<seed>`` for a run,
    nothing written for a policy object. video_dir: MP4 of each task's first episode (needs libosmesa).
    max_concurrent: episodes stepped in lockstep per wave. max_episode_steps: shorter horizon than
    Meta-World's 500 (for tests; results are then not comparable). record_actions: also return
    ``results["actions"]`` = {(task, episode): (steps, action_dim) array} (not written to disk).
    """
    from mode_policy.envs.metaworld import MAX_EPISODE_STEPS, episode_seed, instruction, suite_tasks

    for name, value in (
        ("episodes_per_task", episodes_per_task),
        ("num_workers", num_workers),
        ("max_concurrent", max_concurrent),
        ("max_episode_steps", max_episode_steps or 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")  # fmt: skip
    horizon = MAX_EPISODE_STEPS if max_episode_steps is None else min(max_episode_steps, MAX_EPISODE_STEPS)
    names = suite_tasks(suite, tasks)
    if out_dir is not None:
        check_output_dir(out_dir, option="--out", owned=RESULT_FILES, what="results folder")
    if video_dir is not None:
        check_output_dir(video_dir, option="--video-dir", owned=None, what="video folder")
    policy, policy_dir, run_dir = load_policy(policy_or_dir, device)
    if out_dir is None and run_dir is not None:
        out_dir = check_output_dir(
            run_dir / "eval" / f"{suite.lower()}-seed{seed}", option="--out", owned=RESULT_FILES,
            what="results folder",
        )  # fmt: skip
    if video_dir is not None and not osmesa_available():
        print(
            "videos skipped: MuJoCo needs OSMesa to render without a display, and libOSMesa was not found "
            "(Debian/Ubuntu: `apt-get install libosmesa6`); evaluating without videos"
        )
        video_dir = None
    config = policy.config
    previous_cache = config.use_expert_cache
    if use_expert_cache is not None:
        config.use_expert_cache = bool(use_expert_cache)
    # Job j: episode j // T of task j % T, so waves cover all tasks evenly.
    jobs = [
        (episode * len(names) + t, task, episode, episode_seed(task, episode, "eval", seed))
        for episode in range(episodes_per_task)
        for t, task in enumerate(names)
    ]
    recorded = {task: False for task in names}
    outcomes: dict[int, tuple[bool, int]] = {}
    first_obs: dict[int, np.ndarray] = {}
    actions: dict[int, list[np.ndarray]] | None = {} if record_actions else None
    timer = _Timer()
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    start = time.perf_counter()
    workers = max(1, min(num_workers, len(jobs)))
    bar = _progress_bar(len(jobs), progress)
    try:
        cameras = list(getattr(config, "cameras", []) or [])
        if cameras and not osmesa_available() and not _has_gpu_rendering():
            raise RuntimeError(
                f"this policy observes cameras {cameras}, which MuJoCo must render off-screen, but libOSMesa "
                "was not found (Debian/Ubuntu: `apt-get install -y libosmesa6`; with a GPU set MUJOCO_GL=egl)"
            )
        pool_options = {"cameras": cameras, "image_size": config.image_hw} if cameras else {}
        with EnvPool(
            workers, video_dir=None if video_dir is None else str(video_dir), **pool_options
        ) as pool:
            for first in range(0, len(jobs), max(1, max_concurrent)):
                wave = []
                for job, task, episode, episode_seed_ in jobs[first : first + max_concurrent]:
                    record = video_dir is not None and not recorded[task]
                    recorded[task] = recorded[task] or record
                    wave.append((job, task, episode, episode_seed_, record))
                task_of = {job[0]: instruction(job[1]) for job in wave}
                outcomes.update(
                    _run_wave(pool, policy, wave, task_of, horizon, generator, timer, bar, first_obs, actions)
                )
        latency_ms = _batch1_latency_ms(policy, first_obs[jobs[0][0]], instruction(jobs[0][1]), generator)
    finally:
        config.use_expert_cache = previous_cache
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start

    per_task: dict[str, list[bool]] = {task: [] for task in names}
    episodes = []
    for job, task, episode, episode_seed_ in jobs:
        success, steps = outcomes[job]
        per_task[task].append(success)
        episodes.append({"task": task, "episode": episode, "seed": episode_seed_, "success": success,
                         "steps": steps})  # fmt: skip
    results = summarize(per_task)
    for task in names:
        steps = [e["steps"] for e in episodes if e["task"] == task and e["success"]]
        results["per_task"][task]["mean_steps_to_success"] = statistics.fmean(steps) if steps else None
    results.update(
        suite=suite.lower(),
        tasks=names,
        episodes_per_task=episodes_per_task,
        seed=seed,
        policy=str(policy_dir) if policy_dir else type(policy).__name__,
        use_expert_cache=bool(use_expert_cache if use_expert_cache is not None else previous_cache),
        eval_seconds=round(seconds, 2),
        num_workers=workers,
        inference={
            "ms_per_chunk_batched_mean": timer.mean_ms(),
            "mean_batch_size": timer.mean_batch(),
            "policy_calls": timer.calls,
            "ms_per_chunk_batch1_median": latency_ms,
            "device": str(policy.device),
            "torch_threads": torch.get_num_threads(),
        },
        episodes=episodes,
        max_episode_steps=horizon,
    )
    if out_dir is not None:
        results["results_dir"] = str(write_results(results, out_dir))
    if progress:
        print(format_table(results))
    if actions is not None:
        results["actions"] = {(job[1], job[2]): np.stack(actions[job[0]]) for job in jobs}
    return results


class _Timer:
    """Wall time of the batched policy calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.rows = 0

    def mean_ms(self) -> float | None:
        return round(1000 * self.seconds / self.calls, 3) if self.calls else None

    def mean_batch(self) -> float | None:
        return round(self.rows / self.calls, 2) if self.calls else None


def _run_wave(
    pool: EnvPool,
    policy: Any,
    wave: list[tuple[int, str, int, int, bool]],
    task_of: dict[int, str],
    max_steps: int,
    generator: torch.Generator,
    timer: _Timer,
    bar: Any,
    first_obs: dict[int, np.ndarray],
    actions: dict[int, list[np.ndarray]] | None,
) -> dict[int, tuple[bool, int]]:
    """Run the wave's episodes in lockstep; {job: (success, steps taken)}; first_obs gets the resets."""
    config = policy.config
    first = pool.start(wave)
    first_obs.update(first)
    history = {
        job: collections.deque([obs] * config.n_obs_steps, maxlen=config.n_obs_steps)
        for job, obs in first.items()
    }
    queues: dict[int, collections.deque] = {job: collections.deque() for job in first}
    active = sorted(first)
    outcomes: dict[int, tuple[bool, int]] = {}
    for step in range(max_steps):
        replan = [job for job in active if not queues[job]]
        if replan:
            obs = {**_stack_history([history[job] for job in replan]), "task": [task_of[j] for j in replan]}
            began = time.perf_counter()
            chunk = policy.predict_action_chunk(obs, generator=generator)  # (B, chunk, action_dim)
            timer.seconds += time.perf_counter() - began
            timer.calls += 1
            timer.rows += len(replan)
            chunk = chunk[:, : config.n_action_steps].cpu().numpy().astype(np.float64)
            for job, planned in zip(replan, chunk, strict=True):
                queues[job].extend(planned)
        step_actions = {job: queues[job].popleft() for job in active}
        if actions is not None:
            for job, action in step_actions.items():
                actions.setdefault(job, []).append(action)
        replies = pool.step(step_actions)
        done = []
        for job in active:
            obs, success = replies[job]
            history[job].append(obs)
            if success or step + 1 == max_steps:
                outcomes[job] = (success, step + 1)
                done.append(job)
        if done:
            pool.finish(done)
            active = [job for job in active if job not in outcomes]
            if bar is not None:
                bar.update(len(done))
                bar.set_postfix(success=f"{sum(s for s, _ in outcomes.values())}/{len(outcomes)}")
        if not active:
            break
    return outcomes


@torch.no_grad()
def _batch1_latency_ms(
    policy: Any, obs: np.ndarray, task: str, generator: torch.Generator, repeats: int = 10
) -> float:
    """Median wall ms of one chunk for a single observation (the latency a robot would see)."""
    inputs = {**_stack_history([[obs] * policy.config.n_obs_steps]), "task": [task]}
    policy.predict_action_chunk(inputs, generator=generator)  # warm-up (expert cache build, allocator)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        policy.predict_action_chunk(inputs, generator=generator)
        times.append(time.perf_counter() - began)
    return round(1000 * statistics.median(times), 3)


def _stack_history(histories: list[Any]) -> dict[str, torch.Tensor]:
    """Per-episode histories of n_obs_steps observations -> the policy's batch.

    A state observation is a (39,) array: ``observation.state`` (B, n_obs_steps, 39) float32. A camera
    observation is a dict of the state and (H, W, 3) uint8 frames: images become (B, n_obs_steps, 3, H, W)
    uint8 (the policy scales them).
    """
    first = histories[0][0]
    if not isinstance(first, dict):
        states = np.stack([np.stack(list(h)) for h in histories])  # (B, n_obs_steps, state_dim)
        return {STATE_KEY: torch.from_numpy(states).float()}
    batch = {}
    for key in first:
        values = np.stack([np.stack([o[key] for o in h]) for h in histories])
        if key == STATE_KEY:
            batch[key] = torch.from_numpy(values).float()
        else:
            batch[key] = torch.from_numpy(np.ascontiguousarray(values.transpose(0, 1, 4, 2, 3)))
    return batch


def _has_gpu_rendering() -> bool:
    import os

    return os.environ.get("MUJOCO_GL") == "egl" or os.path.exists("/dev/nvidia0")


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluating", unit="ep")
