"""EDM preconditioning (Karras et al. 2022, table 1) and its training loss.

The network F never sees raw noisy actions: it gets ``c_in * x`` and ``c_noise = ln(sigma) / 4`` and the
denoiser is ``D(x; sigma) = c_skip * x + c_out * F(c_in * x; c_noise)``. Training regresses F on
``(a - c_skip * x) / c_out``, which is EDM's loss weighting expressed in F space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EDMCoefficients:
    """The four EDM scalings, each shaped like ``sigma`` (broadcast them against the data yourself)."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


@dataclass(frozen=True)
class EDMPreconditioning:
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive number (the data's std), got {self.sigma_data}")

    def coefficients(self, sigma: torch.Tensor) -> EDMCoefficients:
        sd2 = self.sigma_data**2
        total = sigma**2 + sd2
        return EDMCoefficients(
            c_skip=sd2 / total,
            c_out=sigma * self.sigma_data / total.sqrt(),
            c_in=total.rsqrt(),
            c_noise=sigma.log() / 4,
        )

    def training_target(
        self, clean: torch.Tensor, noisy: torch.Tensor, coefficients: EDMCoefficients
    ) -> torch.Tensor:
        """What F should output so that D(noisy) == clean: ``(clean - c_skip * noisy) / c_out``."""
        return (clean - coefficients.c_skip * noisy) / coefficients.c_out


def expand_like(values: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample ``values`` (batch,) or a scalar so they broadcast over ``data`` (batch, ...)."""
    if values.dim() == 0:
        return values
    return values.reshape(values.shape[0], *([1] * (data.dim() - 1)))
