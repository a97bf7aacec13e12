"""Per-state Gaussian mixtures: reparameterised samples, component log-densities, entropies, acting.

Shapes: B states, K experts, d = chunk_size * action_dim (the flattened chunk), M points per state.
A covariance is held as its Cholesky factor ``L`` (B, K, d, d), lower triangular with a positive diagonal,
or, for ``diagonal`` mixtures, as standard deviations (B, K, d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
        B = self.means.shape[0]
        rows = torch.arange(B, device=self.means.device)
        if mode == "greedy":
            return self.means[rows, self.log_weights.argmax(-1)]
        # torch.multinomial draws on the generator's device; the weights go there and the pick comes back.
        weights = self.log_weights.exp()
        if generator is not None:
            weights = weights.to(generator.device)
        picks = torch.multinomial(weights, 1, generator=generator).squeeze(-1).to(self.means.device)
        if mode == "mean":
            return self.means[rows, picks]
        if mode == "sample":
            scale = self._scale()[rows, picks]  # (B, d) or (B, d, d)
            device = generator.device if generator is not None else self.means.device
            eps = torch.randn((B, scale.shape[-1]), generator=generator, device=device, dtype=scale.dtype)
            eps = eps.to(self.means.device)
            offset = scale * eps if self.diagonal else torch.einsum("bde,be->bd", scale, eps)
            return self.means[rows, picks] + offset
        raise ValueError(f"unknown action mode {mode!r}; valid: 'mean', 'greedy', 'sample'")
