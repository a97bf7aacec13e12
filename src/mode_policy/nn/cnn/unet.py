"""Diffusion Policy's 1-D temporal convolutional U-Net with FiLM conditioning (Chi et al. 2023).

Layout (``down_dims = (d0, d1, d2)``, chunk length T padded to a multiple of 4):

    down:  [Res(A->d0), Res(d0->d0), Down]  [Res(d0->d1), Res(d1->d1), Down]  [Res(d1->d2), Res(d2->d2)]
    mid:   Res(d2->d2), Res(d2->d2)
    up:    [Res(2*d2->d1), Res(d1->d1), Up]  [Res(2*d1->d0), Res(d0->d0), Up]
    final: Conv1d(d0->d0, k)-GroupNorm-Mish, then ``head`` Conv1d(d0->A, 1)

Each residual block is Conv1d-GroupNorm-Mish, a FiLM ``scale * h + bias`` predicted from the condition
vector (Mish -> Linear), another Conv1d-GroupNorm-Mish, plus a 1x1-conv (or identity) shortcut. Downsample
is a stride-2 Conv1d (kernel 3), upsample a stride-2 ConvTranspose1d (kernel 4). Each up level first
concatenates the output of the down level at its input resolution, deepest first (so, as in the reference
code, the deepest level's output feeds both the mid blocks and the first skip, and the first level's output
is not used as a skip). The condition is
``[MLP(sinusoidal(c_noise)), flattened obs, goal]`` where c_noise = ln(sigma) / 4 is EDM's noise input (the
original conditioned on a DDPM step index through the same kind of embedding).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from mode_policy.nn.cnn.config import CNNDenoiserConfig

# Sinusoidal frequencies of c_noise, in radians per unit of c_noise. Over sigma in [1e-3, 80] c_noise spans
# about -1.7 .. 1.1, so the lowest frequency gives a near-monotone coarse code and the highest resolves
# changes of sigma by a factor of about 1.1.
MIN_FREQUENCY = 1.0
MAX_FREQUENCY = 32.0


class SinusoidalNoiseEmbedding(nn.Module):
    """c_noise (batch,) -> [sin(f c), cos(f c)] (batch, dim) with fixed log-spaced frequencies f."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        frequencies = torch.exp(torch.linspace(math.log(MIN_FREQUENCY), math.log(MAX_FREQUENCY), half))
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1) * self.frequencies.to(c_noise.dtype)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvBlock(nn.Module):
    """Conv1d (length-preserving) -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(self.norm(self.conv(x)))


class FiLMResidualBlock(nn.Module):
    """ConvBlock -> FiLM(scale, bias from the condition) -> ConvBlock, plus a shortcut."""

    def __init__(
        self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int
    ) -> None:
        super().__init__()
        self.block1 = ConvBlock(in_channels, out_channels, kernel_size, n_groups)
        self.block2 = ConvBlock(out_channels, out_channels, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.shortcut = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, length); cond: (batch, cond_dim)."""
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)  # each (batch, out_channels, 1)
        h = self.block2(scale * self.block1(x) + bias)
        return h + self.shortcut(x)


class Level(nn.Module):
    """Two residual blocks and an optional resampling conv: one U-Net level."""

    def __init__(
        self, first: FiLMResidualBlock, second: FiLMResidualBlock, resample: nn.Module | None
    ) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.resample = resample if resample is not None else nn.Identity()


class ConditionalUnet1D(nn.Module):
    """F(scaled_action, c_noise, obs, goal) -> (batch, chunk_size, action_dim), the raw EDM network."""

    def __init__(self, config: CNNDenoiserConfig) -> None:
        super().__init__()
        self.config = config
        k, groups, embed = config.kernel_size, config.n_groups, config.cond_embed_dim
        self.noise_embedding = nn.Sequential(
            SinusoidalNoiseEmbedding(embed),
            nn.Linear(embed, 4 * embed),
            nn.Mish(),
            nn.Linear(4 * embed, embed),
        )
        self.goal_dropout = nn.Dropout(config.goal_dropout)
        cond_dim = embed + config.global_cond_dim
        dims = config.down_dims
        inputs = (config.action_dim, *dims[:-1])

        def block(cin: int, cout: int) -> FiLMResidualBlock:
            return FiLMResidualBlock(cin, cout, cond_dim, k, groups)

        self.down = nn.ModuleList(
            Level(
                block(cin, cout),
                block(cout, cout),
                nn.Conv1d(cout, cout, 3, stride=2, padding=1) if level < len(dims) - 1 else None,
            )
            for level, (cin, cout) in enumerate(zip(inputs, dims, strict=True))
        )
        self.mid = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        # Up level for each down level but the first, deepest first: the skip doubles the input channels.
        self.up = nn.ModuleList(
            Level(
                block(2 * cout, cin),
                block(cin, cin),
                nn.ConvTranspose1d(cin, cin, 4, stride=2, padding=1),
            )
            for cin, cout in reversed(list(itertools.pairwise(dims)))
        )
        self.final = ConvBlock(dims[0], dims[0], k, groups)
        self.head = nn.Conv1d(dims[0], config.action_dim, 1)

    def condition(self, c_noise: torch.Tensor, obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """The FiLM condition (batch, cond_embed_dim + global_cond_dim); c_noise (batch,) or (1,)."""
        batch = obs.shape[0]
        noise = self.noise_embedding(c_noise).expand(batch, -1)
        goal = self.goal_dropout(goal.flatten(1))
        return torch.cat([noise, obs.flatten(1), goal], dim=-1)

    def forward(
        self, scaled_action: torch.Tensor, c_noise: torch.Tensor, obs: torch.Tensor, goal: torch.Tensor
    ) -> torch.Tensor:
        """scaled_action: (batch, chunk, action_dim), already times c_in; c_noise: (batch,) or (1,);
        obs: (batch, obs_tokens, obs_dim); goal: (batch, goal_tokens, goal_dim)."""
        chunk = scaled_action.shape[1]
        cond = self.condition(c_noise, obs, goal)
        x = scaled_action.transpose(1, 2)  # (batch, action_dim, chunk): channels first for Conv1d
        x = F.pad(x, (0, self.config.padded_chunk_size - chunk))
        skips = []
        for level in self.down:
            x = level.second(level.first(x, cond), cond)
            skips.append(x)
            x = level.resample(x)
        for block in self.mid:
            x = block(x, cond)
        for level in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = level.resample(level.second(level.first(x, cond), cond))
        x = self.head(self.final(x))
        return x[:, :, :chunk].transpose(1, 2)
