"""``inspect_policy``: per-layer expert usage heatmaps (sampler step x expert) of any trained run.

inspect_policy("runs/mt10")            # -> runs/mt10/inspect/expert_usage.png, expert_usage.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mode_policy.io import atomic_write_text, check_output_dir
from mode_policy.keys import STATE_KEY
from mode_policy.nn.usage import expert_usage, plot_expert_usage, routed_layers
from mode_policy.policies.folders import run_dataset
from mode_policy.policies.registry import load_policy_and_run

USAGE_FILES = ("expert_usage.json", "expert_usage.png")


def inspect_policy(
    policy_or_run: Any,
    out: str | Path | None = None,
    *,
    dataset: str | Path | None = None,
    frames_per_task: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure and plot which experts each layer uses at each sampler step.

    Observations come from ``dataset`` (default: the run's training dataset when it still exists): up to
    ``frames_per_task`` random frames per task. Without a dataset, each task of the policy's config is
    paired with the mean state (enough for sigma, stage and task routing, whose experts ignore the state).
    Writes ``expert_usage.png`` (averaged over tasks), one ``expert_usage_task<i>.png`` per task when
    routing depends on the goal, and ``expert_usage.json``; returns the JSON content.
    """
    policy, policy_dir, run_dir = load_policy_and_run(policy_or_run, device="cpu")
    denoiser = getattr(policy, "denoiser", None)  # diffusion policies have one; a VDD student does not
    if denoiser is None or not routed_layers(denoiser):
        raise ValueError(
            f"this {type(policy).__name__} has no routed experts (a dense transformer, the CNN baseline or a "
            "one-step student): there is no expert usage to plot"
        )
    out = check_output_dir(
        Path(out) if out else (run_dir or policy_dir.parent) / "inspect", option="--out", owned=USAGE_FILES,
        what="expert-usage folder",
    )  # fmt: skip
    tasks, states = _observations(policy, run_dir, dataset, frames_per_task, seed)
    sigmas = policy.config.sampling_sigmas(dtype=policy.dtype, device=policy.device)
    per_task = {}
    for task, state in zip(tasks, states, strict=True):
        obs = policy.normalizer.normalize(STATE_KEY, state)  # (frames, n_obs_steps, state_dim)
        goal = policy._goal([task] * state.shape[0])
        per_task[task] = expert_usage(denoiser, obs, goal, sigmas, method=policy.config.sampler, seed=seed)
    usage = torch.stack(list(per_task.values())).mean(dim=0)  # (steps, layers, experts)
    routing = denoiser.config.router_input
    plot_expert_usage(usage, sigmas, out / USAGE_FILES[1], title=f"expert usage ({routing} routing)")
    if denoiser.config.routing_uses_goal:
        for index, (task, task_usage) in enumerate(per_task.items()):
            plot_expert_usage(task_usage, sigmas, out / f"expert_usage_task{index}.png", title=task)
    report = {
        "policy": str(policy_dir) if policy_dir else None,
        "router_input": routing,
        "sigmas": sigmas.tolist(),
        "usage": usage.tolist(),
        "per_task": {task: u.tolist() for task, u in per_task.items()},
    }
    atomic_write_text(out / USAGE_FILES[0], json.dumps(report) + "\n")
    report["out"] = str(out)
    return report


def _observations(
    policy: Any, run_dir: Path | None, dataset: str | Path | None, frames_per_task: int, seed: int
) -> tuple[list[str], list[torch.Tensor]]:
    """Task strings and, per task, raw states (frames, n_obs_steps, state_dim)."""
    config = policy.config
    dataset = dataset or run_dataset(run_dir)
    if dataset is not None:
        from mode_policy.data.lerobot import LeRobotDataset

        data = LeRobotDataset(dataset)
        # np.asarray: a dataset stored on disk reads its columns whole here (inspect samples from all frames)
        state = torch.as_tensor(np.asarray(data.column(STATE_KEY)), dtype=policy.dtype)
        task_index = torch.as_tensor(np.asarray(data.column("task_index")))
        generator = torch.Generator().manual_seed(seed)
        tasks, states = [], []
        for index, task in enumerate(data.tasks):
            rows = torch.nonzero(task_index == index).flatten()
            if rows.numel() == 0:
                continue
            rows = rows[torch.randperm(rows.numel(), generator=generator)[:frames_per_task]]
            tasks.append(task)
            # The usage plot needs no history: repeat the frame as an episode start would.
            states.append(state[rows].unsqueeze(1).expand(-1, config.n_obs_steps, -1))
        return tasks, states
    if not config.tasks:
        raise ValueError(
            "no dataset to draw observations from and no task list in the policy config; pass "
            "dataset=<LeRobot dataset folder> (CLI: --dataset)"
        )
    mean = policy.normalizer.unnormalize(STATE_KEY, torch.zeros(1, 1, config.state_dim))
    return list(config.tasks), [mean.expand(1, config.n_obs_steps, -1).to(policy.dtype)] * len(config.tasks)
