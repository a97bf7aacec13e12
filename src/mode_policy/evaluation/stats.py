"""Success rates with 95% intervals.

Per task: the Wilson score interval of ``successes / episodes`` (well behaved at 0 and 1, unlike the
normal "Wald" interval, which collapses to zero width there).
Mean over tasks: with the same number of episodes per task, the mean of the task rates equals the pooled
rate over all episodes, so its interval is the Wilson interval over all episodes pooled. Episodes of one
task share a task, so this treats the suite mean as one binomial draw; it is the conventional and slightly
conservative choice when task difficulties differ.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054
MEAN_INTERVAL_METHOD = "Wilson score interval over all episodes pooled (equal episodes per task)"


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials={trials}], got {successes}")
    p = successes / trials
    denominator = 1.0 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def summarize(per_task: dict[str, list[bool]]) -> dict:
    """{task: [success per episode]} -> per-task rates with intervals, the suite mean with its interval."""
    tasks = {}
    for task, outcomes in per_task.items():
        successes, episodes = sum(outcomes), len(outcomes)
        low, high = wilson_interval(successes, episodes)
        tasks[task] = {
            "success_rate": successes / episodes if episodes else float("nan"),
            "successes": successes,
            "episodes": episodes,
            "ci95": [low, high],
        }
    rates = [entry["success_rate"] for entry in tasks.values()]
    pooled_successes = sum(entry["successes"] for entry in tasks.values())
    pooled_episodes = sum(entry["episodes"] for entry in tasks.values())
    low, high = wilson_interval(pooled_successes, pooled_episodes)
    return {
        "per_task": tasks,
        "mean_success": sum(rates) / len(rates) if rates else float("nan"),
        "mean_ci95": [low, high],
        "mean_ci_method": MEAN_INTERVAL_METHOD,
    }
