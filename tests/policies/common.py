"""Tiny policies and batches shared by the policy tests (one-hot tasks: no language model to load)."""

import numpy as np
import torch

from mode_policy.nn import MoDEConfig
from mode_policy.policies import MoDEPolicy, MoDEPolicyConfig

TASKS = ["reach the red button", "open the drawer", "push the puck"]
STATE_DIM, ACTION_DIM = 5, 2


def tiny_config(**overrides) -> MoDEPolicyConfig:
    values = dict(
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        chunk_size=4,
        n_action_steps=2,
        language_encoder="onehot",
        tasks=list(TASKS),
        num_inference_steps=3,
        denoiser=MoDEConfig(width=32, depth=2, heads=4, goal_dropout=0.0),
    )
    values.update(overrides)
    return MoDEPolicyConfig(**values)


def tiny_stats(state_dim: int = STATE_DIM, action_dim: int = ACTION_DIM) -> dict:
    rng = np.random.default_rng(0)
    return {
        "observation.state": {
            "mean": rng.normal(size=state_dim),
            "std": rng.uniform(0.5, 2.0, size=state_dim),
            "min": -3 * np.ones(state_dim),
            "max": 3 * np.ones(state_dim),
        },
        "action": {
            "mean": np.zeros(action_dim),
            "std": np.ones(action_dim),
            "min": np.linspace(-2.0, -1.0, action_dim),
            "max": np.linspace(1.0, 3.0, action_dim),
        },
    }


def tiny_policy(**overrides) -> MoDEPolicy:
    return MoDEPolicy(tiny_config(**overrides), tiny_stats())


def make_batch(config: MoDEPolicyConfig, batch: int = 6, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "observation.state": torch.randn(batch, config.n_obs_steps, config.state_dim, generator=generator),
        "observation_is_pad": torch.zeros(batch, config.n_obs_steps, dtype=torch.bool),
        "action": torch.rand(batch, config.chunk_size, config.action_dim, generator=generator) * 2 - 1,
        "action_is_pad": torch.zeros(batch, config.chunk_size, dtype=torch.bool),
        "task": [TASKS[i % len(TASKS)] for i in range(batch)],
        "task_index": torch.arange(batch) % len(TASKS),
        "episode_index": torch.zeros(batch, dtype=torch.long),
        "frame_index": torch.arange(batch),
    }


def make_obs(config: MoDEPolicyConfig, batch: int = 2, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "observation.state": torch.randn(batch, config.state_dim, generator=generator),
        "task": [TASKS[i % len(TASKS)] for i in range(batch)],
    }
