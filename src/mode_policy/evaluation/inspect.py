"""``inspect_policy``: per-layer expert usage heatmaps (sampler step x expert) of any trained run.

inspect_policy("runs/mt10")            # -> runs/mt10/inspect/expert_usage.png, expert_usage.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mode_policy.data.mixture import DatasetMixture
from mode_policy.io import atomic_write_text, check_output_dir
from mode_policy.keys import DATASET_INDEX_KEY, STATE_KEY, TASK_INDEX_KEY
from mode_policy.nn.usage import expert_usage, plot_expert_usage, routed_layers
from mode_policy.policies.folders import open_run_data
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

    Observations come from ``dataset`` (default: the data the run trained on, every dataset of a mixture,
    when it still exists): up to ``frames_per_task`` random frames per task and dataset. Without a
    dataset, each task of the policy's config is paired with the mean state (enough for sigma, stage and
    task routing, whose experts ignore the state).
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
        goal = policy._goal([task] * state.shape[0])  # state: normalised (frames, n_obs_steps, state_dim)
        per_task[task] = expert_usage(denoiser, state, goal, sigmas, method=policy.config.sampler, seed=seed)
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
    """Task strings and, per task, normalised states (frames, n_obs_steps, state_dim): up to
    ``frames_per_task`` random frames of each task from each dataset the run trained on (a mixture's
    every dataset, with the run's rename / drop), or from ``dataset``. A policy with per-dataset stats
    normalises each dataset's frames with that dataset's stats."""
    config = policy.config
    if dataset is not None:
        from mode_policy.data.lerobot import LeRobotDataset

        source = LeRobotDataset(dataset)
    else:
        source = open_run_data(run_dir)
    if source is None:
        if not config.tasks:
            raise ValueError(
                "no dataset to draw observations from and no task list in the policy config; pass "
                "dataset=<LeRobot dataset folder> (CLI: --dataset)"
            )
        # The mean state, normalised: zeros (enough for sigma, stage and task routing, which ignore it).
        zeros = torch.zeros(1, config.n_obs_steps, config.state_dim, dtype=policy.dtype)
        return list(config.tasks), [zeros] * len(config.tasks)
    parts = source.datasets if isinstance(source, DatasetMixture) else [source]
    generator = torch.Generator().manual_seed(seed)
    frames: dict[str, list[torch.Tensor]] = {}
    for index, part in enumerate(parts):
        for task, state in _task_frames(part, frames_per_task, generator):
            # The usage plot needs no history: repeat the frame as an episode start would.
            state = torch.as_tensor(state, dtype=policy.dtype).unsqueeze(1).expand(-1, config.n_obs_steps, -1)
            # As in training: rows of mixture dataset d carry dataset_index d (ignored by one set of stats).
            rows = {DATASET_INDEX_KEY: torch.full((len(state),), index)} if len(parts) > 1 else {}
            frames.setdefault(task, []).append(policy.batch_normalizer(rows).normalize(STATE_KEY, state))
    return list(frames), [torch.cat(states) for states in frames.values()]


def _task_frames(dataset: Any, frames_per_task: int, generator: torch.Generator) -> list[tuple[str, Any]]:
    """(task, raw states (frames, state_dim)) of up to ``frames_per_task`` random frames of each task of
    ``dataset``. Only the chosen rows of the state column are read (a dataset on disk is not read whole)."""
    task_index = np.asarray(dataset.column(TASK_INDEX_KEY))
    state = dataset.column(STATE_KEY)
    chosen = []
    for index, task in enumerate(dataset.tasks):
        rows = np.flatnonzero(task_index == index)
        if rows.size == 0:
            continue
        rows = rows[torch.randperm(rows.size, generator=generator)[:frames_per_task].numpy()]
        chosen.append((task, np.stack([state[int(row)] for row in rows])))
    return chosen
