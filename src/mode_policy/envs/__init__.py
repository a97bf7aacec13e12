"""Simulation environments (Meta-World v3), their scripted experts, and demonstration collection."""

from mode_policy.envs.instructions import INSTRUCTIONS
from mode_policy.envs.metaworld import (
    MAX_EPISODE_STEPS,
    MT10_TASKS,
    MT50_TASKS,
    episode_seed,
    make_env,
    reset_with_seed,
    scripted_policy,
    suite_tasks,
)

__all__ = [
    "INSTRUCTIONS",
    "MAX_EPISODE_STEPS",
    "MT10_TASKS",
    "MT50_TASKS",
    "episode_seed",
    "make_env",
    "reset_with_seed",
    "scripted_policy",
    "suite_tasks",
]
