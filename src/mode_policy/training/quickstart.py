"""``quickstart()``: collect a small MT10 set, train a small MoDE policy on a time budget, evaluate it.

Everything runs on a CPU within ``minutes`` (default 10) on a 2-core machine. Measured (10 min budget):
collecting 1000 expert episodes took 33-80 s, 100 evaluation episodes in lockstep 22-33 s on a 2-core
AVX-512 EPYC (one or two torch threads) and 45-50 s on an older AVX2 one (up to ~90 s when every episode
fails and runs all 500 steps), so 60 s are kept for evaluation and the rest trains (a fixed 15% kept 90 s,
of which a good policy left 60-70 s unused). A short speed probe plans the run in optimizer steps; while it
trains, ``FitScheduleToBudget`` re-plans from the measured rate so the cosine schedule ends when the
training time does (a probe alone misjudged the real loop by ~10% and left the decay unfinished).
``max_minutes`` still stops training if the machine slows down late, and the EMA weights are exported then.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from mode_policy.io import check_output_dir
from mode_policy.messages import warn
from mode_policy.policies.folders import CHECKPOINT

# Collection and evaluation times scale with these counts; the rest of the budget trains.
# 100 demos per task (~80 s to collect): with 40, reach stayed at 0.5-0.85 success (benchmarks/RESULTS.md).
COLLECT_EPISODES_PER_TASK = 100
EVAL_EPISODES_PER_TASK = 10
EVAL_RESERVE_SECONDS = 60.0  # for EVAL_EPISODES_PER_TASK episodes of the 10 tasks
STARTUP_SECONDS = 15.0  # process start, export, loading
# A small policy that learns MT10 from states in minutes: one-hot task goals (no language model to load).
QUICKSTART_POLICY = {
    "language_encoder": "onehot",
    "denoiser.width": 128,
    "denoiser.depth": 4,
    "denoiser.heads": 4,
}
QUICKSTART_TRAINING = {"batch_size": 128, "lr": 1e-3, "ema_decay": 0.995}
# Measured with 100 demos per task (benchmarks/RESULTS.md): ~1100 steps gave 0.94-0.96, ~830 0.89-0.91.
GOOD_STEPS = 1000


def quickstart(
    minutes: float = 10.0,
    out: str | Path = "runs/quickstart",
    *,
    seed: int = 0,
    workers: int = 2,
    collect_episodes: int = COLLECT_EPISODES_PER_TASK,
    eval_episodes: int = EVAL_EPISODES_PER_TASK,
    tasks: list[str] | None = None,
    policy_overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Collect -> train -> evaluate under ``minutes`` of wall clock; returns the evaluation results.

    out/data is the LeRobot dataset, out/run the training run (policy in out/run/policy), results in
    out/run/eval/. Reuses out/data when it is already complete.
    """
    from mode_policy.envs.collect import collect_demonstrations
    from mode_policy.evaluation.rollout import evaluate
    from mode_policy.training.callbacks import FitScheduleToBudget
    from mode_policy.training.train import train

    if minutes < 2:
        raise ValueError(f"quickstart needs at least 2 minutes (collect, train, evaluate), got {minutes}")
    started = time.perf_counter()
    out = check_output_dir(out, option="--out", owned=("data", "run", "quickstart.json"), what="quickstart")
    data_dir, run_dir = out / "data", out / "run"
    if (run_dir / CHECKPOINT).exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass another --out or delete it")
    budget = 60.0 * minutes
    _say(progress, f"[quickstart] budget {minutes:g} min: collect MT10 demos, train, evaluate")
    if not (data_dir / "meta" / "info.json").is_file():
        collect_demonstrations(
            data_dir, suite="mt10", tasks=tasks, episodes_per_task=collect_episodes, seed=seed,
            progress=progress, workers=workers,
        )  # fmt: skip
    collected = time.perf_counter() - started
    overrides = {**QUICKSTART_POLICY, **(policy_overrides or {})}
    evaluated = eval_episodes / EVAL_EPISODES_PER_TASK * (len(tasks) / 10 if tasks else 1.0)  # of MT10's
    reserve = EVAL_RESERVE_SECONDS * evaluated + STARTUP_SECONDS
    train_seconds = budget - reserve - collected
    if train_seconds < 30:
        raise RuntimeError(
            f"collection took {collected:.0f} s, leaving {train_seconds:.0f} s to train; give more --minutes"
        )
    rate = _probe_steps_per_second(data_dir, overrides, QUICKSTART_TRAINING["batch_size"], seed)
    steps = max(50, int(rate * train_seconds))  # the plan; FitScheduleToBudget corrects it while training
    _say(progress, f"[quickstart] {collected:.0f} s collecting; training {steps} steps (~{rate:.1f} steps/s)")
    if steps < GOOD_STEPS:
        needed = (GOOD_STEPS / rate + collected + reserve) / 60
        warn(
            f"this machine trains ~{rate:.1f} steps/s, so {minutes:g} minutes give {steps} steps, fewer than "
            f"the ~{GOOD_STEPS} a good quickstart policy needs (expect MT10 success near 0.9); give it "
            f"--minutes {math.ceil(needed)}, or free the cores of other work"
        )
    train(
        data_dir, run_dir, steps=steps, seed=seed, policy_overrides=overrides,
        checkpoint_every=max(100, steps // 5), max_minutes=train_seconds / 60, progress=progress,
        # 10 s kept: the Timer counts from setup, the re-planning from the first step
        extra_callbacks=[FitScheduleToBudget(train_seconds, reserve_seconds=10)], **QUICKSTART_TRAINING,
    )  # fmt: skip
    trained = time.perf_counter() - started
    steps_done = json.loads((run_dir / "train_summary.json").read_text())["global_step"]
    results = evaluate(
        run_dir, suite="mt10", tasks=tasks, episodes_per_task=eval_episodes, seed=seed,
        num_workers=workers, progress=progress,
    )  # fmt: skip
    total = time.perf_counter() - started
    timing = {
        "collect_seconds": round(collected, 1),
        "train_seconds": round(trained - collected, 1),
        "eval_seconds": round(total - trained, 1),
        "total_seconds": round(total, 1),
        "planned_steps": steps,
        "train_steps": steps_done,
    }
    results["quickstart"] = timing
    (out / "quickstart.json").write_text(json.dumps(timing, indent=2) + "\n")
    _say(
        progress,
        f"[quickstart] done in {total / 60:.1f} min (collect {collected:.0f} s, train {steps_done} steps in "
        f"{trained - collected:.0f} s, eval {total - trained:.0f} s); mean MT10 success "
        f"{results['mean_success']:.2f}; policy at {run_dir / 'policy'}",
    )
    return results


def _probe_steps_per_second(data_dir: Path, overrides: dict[str, Any], batch_size: int, seed: int) -> float:
    """Optimizer steps per second of this policy on this machine, from a few timed steps outside Lightning."""
    from torch.utils.data import DataLoader

    from mode_policy.data.lerobot import LeRobotDataset
    from mode_policy.data.windows import ActionChunkDataset
    from mode_policy.policies import MoDEPolicy, MoDEPolicyConfig

    torch.manual_seed(seed)
    dataset = LeRobotDataset(data_dir)
    config = MoDEPolicyConfig.for_dataset(dataset, overrides)
    policy = MoDEPolicy(config, dataset.stats)
    windows = ActionChunkDataset(dataset, n_obs_steps=config.n_obs_steps, chunk_size=config.chunk_size)
    loader = iter(DataLoader(windows, batch_size=batch_size, shuffle=True))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    times = []
    for _ in range(6):
        batch = next(loader)
        began = time.perf_counter()
        loss, _ = policy.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
    return 1.0 / (sum(times[2:]) / len(times[2:]))  # the first steps warm up the allocator


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)
