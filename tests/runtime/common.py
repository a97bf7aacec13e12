"""One tiny policy of every family member, for the program, export and compile tests (one-hot tasks)."""

from __future__ import annotations

import torch

from mode_policy.distill import VDDPolicy, VDDPolicyConfig
from mode_policy.nn import CNNDenoiserConfig, MoDEConfig, MoTConfig
from tests.policies.common import STATE_DIM, TASKS, make_obs, tiny_policy, tiny_stats

MODE = dict(width=32, depth=2, heads=4, goal_dropout=0.0)
MOT = dict(width=32, depth=2, heads=4, ffn_hidden_mult=2, goal_dropout=0.0)

# name -> MoDEConfig fields of the denoiser
DENOISERS = {
    "sigma": {},
    "sigma_shared_expert": {"shared_expert": True, "num_experts": 5, "top_k": 3},
    "token": {"router_input": "token", "shared_expert": True},
    "task": {"router_input": "task"},
    "sigma_goal": {"router_input": "sigma_goal"},
    "stage": {"router_input": "stage", "stage_boundaries": [1.0], "num_experts": 2, "top_k": 1},
    "fixed": {"router_input": "fixed", "num_experts": 2, "top_k": 2},  # an extracted task model
    "dense": {"num_experts": 1, "top_k": 1},
}
VDD_MODES = ("mean", "greedy", "sample")
VARIANTS = [*DENOISERS, "cnn", "mot", *(f"vdd_{mode}" for mode in VDD_MODES)]


def variant_policy(name: str, seed: int = 0, steps: int = 3, **denoiser: object):
    """An untrained tiny policy of the variant ``name`` (weights randomised, so that routes differ) with
    ``steps`` sampler steps; ``denoiser``: MoDEConfig fields to change."""
    torch.manual_seed(seed)
    if name.startswith("vdd_"):
        config = VDDPolicyConfig(
            state_dim=STATE_DIM, action_dim=2, chunk_size=4, n_action_steps=2, language_encoder="onehot",
            tasks=list(TASKS), hidden_dim=32, depth=2, action_mode=name.removeprefix("vdd_"),
        )  # fmt: skip
        return VDDPolicy(config, tiny_stats()).eval()
    if name == "cnn":
        denoiser = CNNDenoiserConfig(down_dims=(16, 32), cond_embed_dim=16, n_groups=4)
    elif name == "mot":
        denoiser = MoTConfig(**{**MOT, **denoiser})
    else:
        denoiser = MoDEConfig(**{**MODE, **DENOISERS[name], **denoiser})
    policy = tiny_policy(denoiser=denoiser, num_inference_steps=steps).eval()
    if name == "fixed":
        for block in policy.denoiser.network.blocks:
            block.moe.fixed_weights.copy_(torch.tensor([0.7, 0.3]))
    return policy


def observations(config, batch: int = 3, seed: int = 1) -> dict:
    """A batch whose rows have different tasks (goal-routed experts then differ by row)."""
    obs = make_obs(config, batch=batch, seed=seed)
    obs["task"] = [TASKS[(2 * i) % len(TASKS)] for i in range(batch)]
    return obs


def same_noise_chunks(policy, other, obs: dict, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Both policies' chunks for ``obs`` with generators of the same seed."""
    first = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(seed))
    second = other.predict_action_chunk(obs, generator=torch.Generator().manual_seed(seed))
    return first, second
