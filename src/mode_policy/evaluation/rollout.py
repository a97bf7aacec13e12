"""``evaluate()``: seeded Meta-World rollouts of a policy, success rates with intervals, inference timing.

results = evaluate("runs/mt10", suite="mt10", episodes_per_task=10, seed=0)
results["mean_success"], results["per_task"]["reach-v3"]["ci95"]

Protocol: goal-observable Meta-World v3 envs; episode ``e`` of task ``t`` is placed by
``episode_seed(t, e, "eval", seed)``, which never equals a demonstration seed. An episode succeeds when
``info["success"]`` is true at any step within ``MAX_EPISODE_STEPS`` (it then ends early: later steps
cannot change the outcome). All episodes of a wave (``max_concurrent``) run in lockstep: every step,
worker processes step the envs while the main process runs the policy once over all active episodes.
The receding horizon is the policy's own (``mode_policy.policies.queue.RecedingHorizon``, as in
``select_action``), kept for the whole wave, so a result does not depend on the batch layout beyond the
sampling noise drawn from one seeded generator.
"""

from __future__ import annotations

import ctypes.util
import inspect
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mode_policy.evaluation.env_pool import EnvPool
from mode_policy.evaluation.report import RESULT_FILES, format_table, write_results
from mode_policy.evaluation.stats import summarize
from mode_policy.io import check_output_dir
from mode_policy.keys import STATE_KEY, TASK_KEY
from mode_policy.policies.queue import RecedingHorizon
from mode_policy.policies.registry import load_policy_and_run

CACHE_OPTION = "use_expert_cache"  # the inference option of policies that have an expert cache


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
    compile: bool = False,
    inference_dataset: str | None = None,
    replan_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a policy on a Meta-World suite; returns the results dict (also written as JSON + Markdown).

    policy_or_dir: a policy object, a training run directory (its ``policy/``), a ``save_pretrained``
    directory, or a shipped pretrained name. use_expert_cache: run the cached experts or route at every
    step, for policies that have an expert cache (None keeps the policy's setting).
    out_dir: where results.json / results.md go; default ``RUN/eval/<suite>-seed<seed>`` for a run,
    nothing written for a policy object. video_dir: MP4 of each task's first episode (needs libosmesa).
    max_concurrent: episodes stepped in lockstep per wave. max_episode_steps: shorter horizon than
    Meta-World's 500 (for tests; results are then not comparable). record_actions: also return
    ``results["actions"]`` = {(task, episode): (steps, action_dim) array} (not written to disk).
    compile: run the policy's chunk under torch.compile (``policy.compile()``; compile time reported).
    inference_dataset: for a policy trained on a mixture with per-dataset stats, the training dataset whose
    stats it normalises with (default: the one it was saved with, the mixture's first).
    replan_steps: actions executed from each chunk before the next is predicted (default the policy's
    ``n_action_steps``; at most its ``chunk_size``): the receding horizon is an inference-time choice, so
    one trained policy can be evaluated at several. The default results folder then ends in ``-replan<N>``.
    """
    from mode_policy.envs.metaworld import MAX_EPISODE_STEPS, episode_seed, suite_tasks

    for name, value in (
        ("episodes_per_task", episodes_per_task),
        ("num_workers", num_workers),
        ("max_concurrent", max_concurrent),
        ("max_episode_steps", 1 if max_episode_steps is None else max_episode_steps),
        ("replan_steps", 1 if replan_steps is None else replan_steps),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")  # fmt: skip
    names = suite_tasks(suite, tasks)
    horizon = min(max_episode_steps or MAX_EPISODE_STEPS, MAX_EPISODE_STEPS)
    out_dir, video_dir = _check_outputs(out_dir, video_dir)
    policy, policy_dir, run_dir = load_policy_and_run(policy_or_dir, device, inference_dataset)
    replan_steps = _replan_steps(policy, replan_steps)
    if out_dir is None and run_dir is not None:
        suffix = "" if replan_steps == policy.config.n_action_steps else f"-replan{replan_steps}"
        out_dir, _ = _check_outputs(run_dir / "eval" / f"{suite.lower()}-seed{seed}{suffix}", None)
    options = _inference_options(policy, use_expert_cache)
    compile_seconds = _compile(policy, progress) if compile else None
    jobs = [  # job j: episode j // T of task j % T, so waves cover all tasks evenly
        (episode * len(names) + t, task, episode, episode_seed(task, episode, "eval", seed))
        for episode in range(episodes_per_task)
        for t, task in enumerate(names)
    ]
    start = time.perf_counter()
    run = _Rollouts(policy, options, seed, horizon, replan_steps, record_actions, progress)
    run.play(jobs, video_dir, workers=max(1, min(num_workers, len(jobs))), max_concurrent=max_concurrent)
    results = _results(run, jobs, names, time.perf_counter() - start)
    results.update(
        suite=suite.lower(), tasks=names, episodes_per_task=episodes_per_task, seed=seed,
        policy=str(policy_dir) if policy_dir else type(policy).__name__,
        use_expert_cache=options.get(CACHE_OPTION, _default_option(policy, CACHE_OPTION)),
        num_workers=max(1, min(num_workers, len(jobs))), max_episode_steps=horizon, replan_steps=replan_steps,
    )  # fmt: skip
    if compile_seconds is not None:
        results["compile_seconds"] = compile_seconds
    if out_dir is not None:
        results["results_dir"] = str(write_results(results, out_dir))
    if progress:
        print(format_table(results))
    if record_actions:
        results["actions"] = {(job[1], job[2]): np.stack(run.actions[job[0]]) for job in jobs}
    return results


# Steps of evaluate() ---------------------------------------------------------------------------------
def _check_outputs(out_dir: Any, video_dir: Any) -> tuple[Path | None, Path | None]:
    """Both output folders checked before any rollout (a results folder of ours may be reused)."""
    if out_dir is not None:
        out_dir = check_output_dir(out_dir, option="--out", owned=RESULT_FILES, what="results folder")
    if video_dir is not None:
        video_dir = check_output_dir(video_dir, option="--video-dir", owned=None, what="video folder")
        if not osmesa_available():
            print(
                "videos skipped: MuJoCo needs OSMesa to render without a display, and libOSMesa was not "
                "found (Debian/Ubuntu: `apt-get install libosmesa6`); evaluating without videos"
            )
            video_dir = None
    return out_dir, video_dir


def _replan_steps(policy: Any, replan_steps: int | None) -> int:
    """The actions executed per chunk: the policy's ``n_action_steps`` unless asked, never past its chunk."""
    config = policy.config
    if replan_steps is None:
        return config.n_action_steps
    if replan_steps > config.chunk_size:
        raise ValueError(
            f"replan_steps ({replan_steps}) cannot exceed the policy's chunk_size ({config.chunk_size}): it "
            f"executes at most one chunk before predicting the next; pass 1 to {config.chunk_size}"
        )
    return replan_steps


def _inference_options(policy: Any, use_expert_cache: bool | None) -> dict[str, Any]:
    """``use_expert_cache`` as an argument for the policy's ``predict_action_chunk``, when asked for: a
    policy without an expert cache is told so instead of having it silently ignored."""
    if use_expert_cache is None:
        return {}
    if _default_option(policy, CACHE_OPTION) is None:
        raise ValueError(
            f"{type(policy).__name__} has no expert cache to turn on or off (--no-expert-cache applies to "
            "diffusion policies with expert routing)"
        )
    return {CACHE_OPTION: bool(use_expert_cache)}


def _compile(policy: Any, progress: bool) -> float:
    """``policy.compile()``, timed; a policy type without it is told so."""
    if getattr(type(policy), "compile", None) in (None, torch.nn.Module.compile):  # torch's is not ours
        raise ValueError(
            f"{type(policy).__name__} has no compiled path (--compile applies to diffusion policies; an "
            "exported .onnx policy is compiled by ONNX Runtime already)"
        )
    start = time.perf_counter()
    policy.compile()
    seconds = time.perf_counter() - start
    if progress:
        print(f"compiled the policy's chunk in {seconds:.0f} s")
    return seconds


def _default_option(policy: Any, option: str) -> Any:
    """The value a policy uses for an inference option it accepts (its config's), or None without it."""
    if option not in inspect.signature(policy.predict_action_chunk).parameters:
        return None
    return getattr(policy.config, option, None)


class _Rollouts:
    """Runs the episodes and keeps what evaluate reports: outcomes, timing, first observations, actions."""

    def __init__(self, policy, options, seed, horizon, replan_steps, record_actions, progress) -> None:
        self.policy, self.options, self.horizon, self.replan_steps = policy, options, horizon, replan_steps
        self.generator = torch.Generator(device=policy.device).manual_seed(seed)
        self.outcomes: dict[int, tuple[bool, int]] = {}
        self.first_obs: dict[int, Any] = {}
        self.actions: dict[int, list[np.ndarray]] = {}
        self.record_actions = record_actions
        self.progress = progress
        self.calls = self.rows = 0
        self.seconds = 0.0
        self.latency_ms: float | None = None

    def play(self, jobs: list[tuple[int, str, int, int]], video_dir: Path | None, *, workers: int,
             max_concurrent: int) -> None:  # fmt: skip
        from mode_policy.envs.metaworld import instruction

        config = self.policy.config
        cameras = config.cameras
        if cameras and not osmesa_available() and not _has_gpu_rendering():
            raise RuntimeError(
                f"this policy observes cameras {cameras}, which MuJoCo must render off-screen, but libOSMesa "
                "was not found (Debian/Ubuntu: `apt-get install -y libosmesa6`; with a GPU set MUJOCO_GL=egl)"
            )
        pool_options = {"cameras": cameras, "image_size": config.image_hw} if cameras else {}
        recorded: set[str] = set()
        bar = _progress_bar(len(jobs), self.progress)
        try:
            with EnvPool(
                workers, video_dir=None if video_dir is None else str(video_dir), **pool_options
            ) as pool:
                for first in range(0, len(jobs), max_concurrent):
                    wave = []
                    for job, task, episode, episode_seed in jobs[first : first + max_concurrent]:
                        record = video_dir is not None and task not in recorded
                        recorded.update([task] if record else [])
                        wave.append((job, task, episode, episode_seed, record))
                    self._wave(pool, wave, {job[0]: instruction(job[1]) for job in wave}, bar)
            self.latency_ms = self._batch1_latency_ms(self.first_obs[jobs[0][0]], instruction(jobs[0][1]))
        finally:
            if bar is not None:
                bar.close()

    def _wave(self, pool: EnvPool, wave: list, task_of: dict[int, str], bar: Any) -> None:
        """The wave's episodes in lockstep, one policy call over all active episodes per replanning step."""
        config = self.policy.config
        current = pool.start(wave)  # {job: first observation}
        self.first_obs.update(current)
        active = sorted(current)
        horizon = RecedingHorizon(config.n_obs_steps, self.replan_steps)
        for step in range(self.horizon):
            horizon.observe(_batch([current[job] for job in active]))
            if horizon.needs_chunk:
                obs = {**horizon.history(), TASK_KEY: [task_of[job] for job in active]}
                began = time.perf_counter()
                horizon.queue(self.policy.predict_action_chunk(obs, generator=self.generator, **self.options))
                self.seconds += time.perf_counter() - began
                self.calls += 1
                self.rows += len(active)
            step_actions = dict(zip(active, horizon.pop().cpu().numpy().astype(np.float64), strict=True))
            if self.record_actions:
                for job, action in step_actions.items():
                    self.actions.setdefault(job, []).append(action)
            replies = pool.step(step_actions)
            done = []
            for job in active:
                current[job], success = replies[job]
                if success or step + 1 == self.horizon:
                    self.outcomes[job] = (success, step + 1)
                    done.append(job)
            if done:
                pool.finish(done)
                horizon.keep([row for row, job in enumerate(active) if job not in self.outcomes])
                active = [job for job in active if job not in self.outcomes]
                if bar is not None:
                    bar.update(len(done))
                    bar.set_postfix(
                        success=f"{sum(s for s, _ in self.outcomes.values())}/{len(self.outcomes)}"
                    )
            if not active:
                break

    @torch.no_grad()
    def _batch1_latency_ms(self, obs: Any, task: str, repeats: int = 10) -> float:
        """Median wall ms of one chunk for a single observation (the latency a robot would see)."""
        config = self.policy.config
        horizon = RecedingHorizon(config.n_obs_steps, config.n_action_steps)
        horizon.observe(_batch([obs]))
        inputs = {**horizon.history(), TASK_KEY: [task]}
        predict = self.policy.predict_action_chunk
        predict(inputs, generator=self.generator, **self.options)  # warm-up (expert cache build, allocator)
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            predict(inputs, generator=self.generator, **self.options)
            times.append(time.perf_counter() - began)
        return round(1000 * statistics.median(times), 3)


def _results(run: _Rollouts, jobs: list, names: list[str], seconds: float) -> dict[str, Any]:
    per_task: dict[str, list[bool]] = {task: [] for task in names}
    episodes = []
    for job, task, episode, episode_seed in jobs:
        success, steps = run.outcomes[job]
        per_task[task].append(success)
        episodes.append({"task": task, "episode": episode, "seed": episode_seed, "success": success,
                         "steps": steps})  # fmt: skip
    results = summarize(per_task)
    for task in names:
        steps = [e["steps"] for e in episodes if e["task"] == task and e["success"]]
        results["per_task"][task]["mean_steps_to_success"] = statistics.fmean(steps) if steps else None
    results["eval_seconds"] = round(seconds, 2)
    results["inference"] = {
        "ms_per_chunk_batched_mean": round(1000 * run.seconds / run.calls, 3) if run.calls else None,
        "mean_batch_size": round(run.rows / run.calls, 2) if run.calls else None,
        "policy_calls": run.calls,
        "ms_per_chunk_batch1_median": run.latency_ms,
        "device": str(run.policy.device),
        "torch_threads": torch.get_num_threads(),
        # A mixture policy with per-dataset stats: whose stats normalised its observations and actions.
        "inference_dataset": getattr(run.policy, "inference_dataset", None),
    }
    results["episodes"] = episodes
    return results


def _batch(observations: list[Any]) -> dict[str, torch.Tensor]:
    """One step of each episode -> the policy's batch. A state observation is a (39,) array:
    ``observation.state`` (B, 39) float32. A camera observation is a dict of the state and (H, W, 3) uint8
    frames: images become (B, 3, H, W) uint8 (the policy scales them)."""
    first = observations[0]
    if not isinstance(first, dict):
        return {STATE_KEY: torch.from_numpy(np.stack(observations)).float()}
    batch = {}
    for key in first:
        values = np.stack([obs[key] for obs in observations])
        if key == STATE_KEY:
            batch[key] = torch.from_numpy(values).float()
        else:
            batch[key] = torch.from_numpy(np.ascontiguousarray(values.transpose(0, 3, 1, 2)))
    return batch


def _has_gpu_rendering() -> bool:
    return os.environ.get("MUJOCO_GL") == "egl" or os.path.exists("/dev/nvidia0")


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluating", unit="ep")
