"""phi(sigma): MoDE's noise embedding.

It is used as the noise token, as attention conditioning and as router input.
"""

from __future__ import annotations

import torch
from torch import nn


class SigmaEmbedding(nn.Module):
    """c_noise -> Linear(1, D) -> Linear(D, D), as in the MoDE reference code (no Fourier features).

    The two linears compose to an affine map of c_noise; we keep both so that reference checkpoints map
    one-to-one onto our parameters.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.inner = nn.Linear(1, dim)
        self.outer = nn.Linear(dim, dim)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """c_noise: (batch,) or (1,) -> (batch, dim)."""
        return self.outer(self.inner(c_noise.reshape(-1, 1)))
