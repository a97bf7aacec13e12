"""VDDNetwork: normalised state tokens + goal embedding -> the parameters of a Gaussian mixture, in one call.

trunk:   MLP over [flattened (n_obs_steps, state_dim) states, goal embedding] -> features (B, hidden_dim)
experts: means (B, K, d); Cholesky factors with a softplus(+min_std) diagonal and a free strictly-lower
         triangle (B, K, d, d), or standard deviations (B, K, d) for ``covariance="diagonal"``
gating:  a small MLP on the *detached* trunk features -> log q(z|s) (B, K). Detached as in VDD's reference
         agent: the gating is refit to responsibilities and must not pull the experts' shared trunk.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mode_policy.policies.vdd.configuration import VDDPolicyConfig
from mode_policy.policies.vdd.mixture import MixtureParams


class VDDNetwork(nn.Module):
    def __init__(self, config: VDDPolicyConfig, goal_dim: int) -> None:
        super().__init__()
        self.num_experts = K = config.num_experts
        self.dim = d = config.flat_action_dim
        self.diagonal = config.covariance == "diagonal"
        self.min_std = float(config.min_std)
        width = config.hidden_dim
        layers: list[nn.Module] = []
        in_dim = config.n_obs_steps * config.state_dim + goal_dim
        for _ in range(config.depth):
            layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.Mish()]
            in_dim = width
        self.trunk = nn.Sequential(*layers)
        self.mean_head = nn.Linear(width, K * d)
        self.std_head = nn.Linear(width, K * d)
        self.tril_head = None if self.diagonal else nn.Linear(width, K * d * (d - 1) // 2)
        self.gating = nn.Sequential(nn.Linear(width, width), nn.Mish(), nn.Linear(width, K))
        self._init_heads(config)
        if not self.diagonal:
            rows, cols = torch.tril_indices(d, d, offset=-1)
            self.register_buffer("_rows", rows, persistent=False)
            self.register_buffer("_cols", cols, persistent=False)

    def _init_heads(self, config: VDDPolicyConfig) -> None:
        with torch.no_grad():
            # Spread the experts' initial means over the normalised action range so that they start in
            # different places: the reverse KL is mode-seeking, an expert stays near the mode it first finds.
            self.mean_head.bias.uniform_(-0.5, 0.5)
            # Start every expert at std init_std: softplus(bias) + min_std = init_std.
            self.std_head.weight.mul_(0.01)
            self.std_head.bias.fill_(_inverse_softplus(config.init_std - config.min_std))
            if self.tril_head is not None:  # start uncorrelated
                self.tril_head.weight.zero_()
                self.tril_head.bias.zero_()
            self.gating[-1].weight.zero_()  # start from uniform gating
            self.gating[-1].bias.zero_()

    def forward(self, obs: torch.Tensor, goal: torch.Tensor, *, need_scale: bool = True) -> MixtureParams:
        """obs (B, n_obs_steps, state_dim) normalised, goal (B, goal_dim) -> MixtureParams.

        need_scale=False skips the covariance heads (acting with expert means needs none).
        """
        B = obs.shape[0]
        K, d = self.num_experts, self.dim
        features = self.trunk(torch.cat([obs.flatten(1), goal], dim=-1))  # (B, hidden)
        means = self.mean_head(features).view(B, K, d)
        log_weights = torch.log_softmax(self.gating(features.detach()), dim=-1)  # (B, K)
        scale = None
        if need_scale:
            std = nn.functional.softplus(self.std_head(features).view(B, K, d)) + self.min_std
            if self.diagonal:
                scale = std
            else:
                lower = self.tril_head(features).view(B, K, -1)  # (B, K, d(d-1)/2)
                scale = torch.diag_embed(std)
                scale[..., self._rows, self._cols] = lower  # in-place on a fresh tensor: autograd-safe
        return MixtureParams(means, scale, log_weights)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))
