"""Per-state Gaussian mixtures: reparameterised samples, component log-densities, entropies, acting.

Shapes: B states, K experts, d = chunk_size * action_dim (the flattened chunk), M points per state.
A covariance is held as its Cholesky factor ``L`` (B, K, d, d), lower triangular with a positive diagonal,
or, for ``diagonal`` mixtures, as standard deviations (B, K, d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mode_policy.policies.program import NoiseSpec

LOG_2PI = math.log(2 * math.pi)


@dataclass
class MixtureParams:
    """means (B, K, d); scale: Cholesky factors (B, K, d, d) or standard deviations (B, K, d), or None when
    the network was asked for means only; log_weights (B, K): log q(z|s), normalised over K."""

    means: torch.Tensor
    scale: torch.Tensor | None
    log_weights: torch.Tensor

    @property
    def diagonal(self) -> bool:
        return self.scale is not None and self.scale.dim() == self.means.dim()

    def detach(self) -> MixtureParams:
        scale = None if self.scale is None else self.scale.detach()
        return MixtureParams(self.means.detach(), scale, self.log_weights.detach())

    def _scale(self) -> torch.Tensor:
        if self.scale is None:
            raise ValueError("these mixture parameters hold means only; run the network with need_scale=True")
        return self.scale

    def log_det(self) -> torch.Tensor:
        """log |L| = sum log diag(L): (B, K)."""
        scale = self._scale()
        diagonal = scale if self.diagonal else scale.diagonal(dim1=-2, dim2=-1)
        return diagonal.log().sum(-1)

    def scale_norm_sq(self) -> torch.Tensor:
        """|L|_F^2 = trace of the covariance, (B, K)."""
        scale = self._scale()
        return scale.square().sum(-1) if self.diagonal else scale.square().sum((-2, -1))

    def rsample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` reparameterised draws per expert, a = mu + L eps: (B, K, count, d), differentiable."""
        scale = self._scale()
        B, K, d = self.means.shape
        device = generator.device if generator is not None else self.means.device
        eps = torch.randn((B, K, count, d), generator=generator, device=device, dtype=self.means.dtype)
        eps = eps.to(self.means.device)
        offset = scale[:, :, None] * eps if self.diagonal else torch.einsum("bkde,bkne->bknd", scale, eps)
        return self.means[:, :, None] + offset

    def component_log_prob(self, points: torch.Tensor) -> torch.Tensor:
        """log N(x_m; mu_k, Sigma_k) for every point and expert: points (B, M, d) -> (B, M, K)."""
        scale = self._scale()
        d = self.means.shape[-1]
        if self.diagonal:
            z = (points[:, :, None] - self.means[:, None]) / scale[:, None]  # (B, M, K, d)
        else:
            # One triangular inverse per expert, then einsums: solving per (point, expert) pair would
            # broadcast L to (B, M, K, d, d).
            eye = torch.eye(d, device=scale.device, dtype=scale.dtype)
            inverse = torch.linalg.solve_triangular(scale, eye.expand_as(scale), upper=False)  # (B, K, d, d)
            z = (
                torch.einsum("bkde,bme->bmkd", inverse, points)
                - torch.einsum("bkde,bke->bkd", inverse, self.means)[:, None]
            )
        return -0.5 * z.square().sum(-1) - self.log_det()[:, None] - 0.5 * d * LOG_2PI

    def entropy(self) -> torch.Tensor:
        """Differential entropy of every expert: (B, K)."""
        d = self.means.shape[-1]
        return 0.5 * d * (1.0 + LOG_2PI) + self.log_det()

    def log_responsibilities(self, points: torch.Tensor) -> torch.Tensor:
        """log q(z|a, s) for points (B, M, d) under this mixture: (B, M, K)."""
        joint = self.component_log_prob(points) + self.log_weights[:, None]
        return joint - torch.logsumexp(joint, dim=-1, keepdim=True)

    def act(self, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """One action (chunk) per state, (B, d): see ``VDDPolicyConfig.action_mode``."""
        B, _, d = self.means.shape
        spec = act_noise_spec(mode, d)
        noise = None if spec is None else spec.draw(B, generator, self.means.device, self.means.dtype)
        return self.act_with_noise(mode, noise)

    def act_with_noise(self, mode: str, noise: torch.Tensor | None) -> torch.Tensor:
        """``act`` with its random numbers given: noise (B, 1) uniform for "mean", (B, 1 + d) uniform then
        standard normal for "sample", None for "greedy". The expert is drawn by inverse CDF of the gating,
        with static shapes (an exported program runs this too)."""
        if mode not in ACTION_MODES:
            raise ValueError(
                f"unknown action mode {mode!r}; valid: {', '.join(repr(m) for m in ACTION_MODES)}"
            )
        if mode == "greedy":
            picks = self.log_weights.argmax(-1)
        else:
            below = self.log_weights.exp().cumsum(-1) < noise[:, :1]  # (B, K)
            picks = below.sum(-1).clamp(max=self.means.shape[1] - 1)
        action = _pick(self.means, picks)  # (B, d)
        if mode == "sample":
            scale = _pick(self._scale(), picks)  # (B, d) or (B, d, d)
            eps = noise[:, 1:]
            action = action + (scale * eps if self.diagonal else torch.einsum("bde,be->bd", scale, eps))
        return action


# "mean": sample an expert from the gating, act with its mean (what VDD's released agent does by default).
# "greedy": the mean of the most likely expert (deterministic). "sample": a full draw from the mixture.
ACTION_MODES = ("mean", "greedy", "sample")


def act_noise_spec(mode: str, dim: int) -> NoiseSpec | None:
    """The random numbers ``act_with_noise`` takes per row, for chunks of ``dim`` values: one uniform
    ("mean"), one uniform then ``dim`` standard normal ("sample"), none ("greedy")."""
    return {
        "greedy": None,
        "mean": NoiseSpec("uniform", (1,)),
        "sample": NoiseSpec("uniform+normal", (1 + dim,)),
    }[mode]


def _pick(values: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """values (B, K, ...) at expert picks (B,) -> (B, ...)."""
    index = picks.reshape(-1, 1, *([1] * (values.dim() - 2))).expand(-1, 1, *values.shape[2:])
    return values.gather(1, index).squeeze(1)
