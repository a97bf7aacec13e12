"""Isotropic Gaussian mixtures: a data distribution whose ideal denoiser is known in closed form.

For ``p(a) = sum_k pi_k N(mu_k, s_k^2 I)`` the noisy marginal at level ``sigma`` is
``sum_k pi_k N(mu_k, (s_k^2 + sigma^2) I)`` and the ideal denoiser is the posterior mean

    D(x; sigma) = E[a | x] = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),

with ``r_k(x)`` the posterior responsibilities of the components under the noisy marginal. Everything is
computed in float64 (responsibilities in log space) so that sampler tests measure the sampler, not this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianMixture:
    """Mixture of ``K`` isotropic Gaussians in ``dim`` dimensions.

    ``weights`` (K,) sum to 1, ``means`` (K, dim), ``stds`` (K,) are the per-component standard deviations.
    """

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    @classmethod
    def create(cls, weights: list[float], means: list[list[float]], stds: list[float]) -> GaussianMixture:
        mixture = cls(
            weights=torch.tensor(weights, dtype=torch.float64),
            means=torch.tensor(means, dtype=torch.float64),
            stds=torch.tensor(stds, dtype=torch.float64),
        )
        if not math.isclose(float(mixture.weights.sum()), 1.0, abs_tol=1e-12):
            raise ValueError(f"weights must sum to 1, got {weights}")
        return mixture

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``count`` clean samples; returns samples (count, dim) and component labels (count,)."""
        labels = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        noise = torch.randn(count, self.dim, generator=generator, dtype=torch.float64)
        return self.means[labels] + self.stds[labels, None] * noise, labels

    def log_responsibilities(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``log r_k(x)`` under the marginal at noise level ``sigma``: x (..., dim) -> (..., K)."""
        variances = self.stds**2 + float(sigma) ** 2  # (K,)
        squared_distance = ((x.to(torch.float64)[..., None, :] - self.means) ** 2).sum(-1)  # (..., K)
        log_joint = (
            self.weights.log()
            - 0.5 * squared_distance / variances
            - 0.5 * self.dim * torch.log(2 * math.pi * variances)
        )
        return log_joint - torch.logsumexp(log_joint, dim=-1, keepdim=True)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The ideal denoiser ``E[a | a + sigma * eps = x]``: x (..., dim) -> (..., dim) in x's dtype."""
        x64 = x.to(torch.float64)
        responsibilities = self.log_responsibilities(x64, sigma).exp()  # (..., K)
        shrink = self.stds**2 / (self.stds**2 + float(sigma) ** 2)  # (K,)
        component_means = self.means + shrink[:, None] * (x64[..., None, :] - self.means)  # (..., K, dim)
        return (responsibilities[..., None] * component_means).sum(-2).to(x.dtype)

    def nearest_component(self, samples: torch.Tensor) -> torch.Tensor:
        """Index of the closest mean for each sample: (count, dim) -> (count,)."""
        return torch.cdist(samples.to(torch.float64), self.means).argmin(dim=-1)
