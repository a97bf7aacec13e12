"""A 2-D three-mode toy whose teacher is the analytic ideal denoiser (tests/diffusion/gmm.py)."""

import torch

from mode_policy.distill import VDDPolicy, VDDPolicyConfig
from tests.diffusion.gmm import GaussianMixture

TOY = GaussianMixture.create([0.5, 0.3, 0.2], [[-0.6, -0.5], [0.6, -0.5], [0.0, 0.6]], [0.08, 0.08, 0.08])
TOY_TASK = "toy"


def toy_denoiser(x: torch.Tensor, sigma, obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """The teacher: D(x; sigma) of TOY, ignoring the (dummy) state. x (N, 1, 2) -> (N, 1, 2)."""
    del obs, goal
    return TOY.denoise(x.reshape(len(x), 2), float(sigma)).reshape(x.shape).to(x.dtype)


def toy_student(**overrides) -> VDDPolicy:
    values = dict(
        state_dim=1, action_dim=2, chunk_size=1, n_action_steps=1, language_encoder="onehot",
        tasks=[TOY_TASK], normalization_mapping={"observation.state": "identity", "action": "identity"},
        num_experts=6, hidden_dim=64, depth=2,
    )  # fmt: skip
    values.update(overrides)
    return VDDPolicy(VDDPolicyConfig(**values))


def toy_data(count: int = 2000, seed: int = 1) -> dict:
    actions, _ = TOY.sample(count, torch.Generator().manual_seed(seed))
    states = torch.zeros(count, 1, 1)
    return {"observation.state": states, "task": TOY_TASK, "action": actions.float()[:, None]}
