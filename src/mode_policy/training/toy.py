"""A two-mode 2-D toy problem: the quickest end-to-end check that a MoDE denoiser learns a multimodal
distribution (a unimodal regressor would put its mass between the modes)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from mode_policy.diffusion.noise_distributions import LogLogisticSigma
from mode_policy.diffusion.schedules import exponential_schedule
from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.denoiser import MoDEDenoiser

MODE_CENTERS = ((-0.8, 0.0), (0.8, 0.0))
MODE_STD = 0.1


def toy_config(**overrides) -> MoDEConfig:
    values = dict(
        action_dim=2, chunk_size=1, obs_dim=1, goal_dim=1, width=64, depth=2, heads=4,
        num_experts=4, top_k=2, goal_dropout=0.0,
    )  # fmt: skip
    values.update(overrides)
    return MoDEConfig(**values)


def sample_two_modes(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 1, 2) points, half around each centre."""
    centers = torch.tensor(MODE_CENTERS)
    which = torch.randint(0, len(MODE_CENTERS), (count,), generator=generator)
    points = centers[which] + MODE_STD * torch.randn(count, 2, generator=generator)
    return points.unsqueeze(1)


@dataclass
class ToyResult:
    denoiser: MoDEDenoiser
    steps: int
    seconds: float
    final_loss: float
    mode_fractions: list[float]
    off_mode_fraction: float
    losses: list[float] = field(default_factory=list)


def mode_fractions(points: torch.Tensor, radius: float = 0.4) -> tuple[list[float], float]:
    """Share of points nearest each centre, and share farther than ``radius`` from every centre."""
    flat = points.reshape(-1, 2)
    distances = torch.cdist(flat, torch.tensor(MODE_CENTERS, dtype=flat.dtype))  # (points, modes)
    nearest = distances.argmin(dim=1)
    fractions = [(nearest == m).float().mean().item() for m in range(len(MODE_CENTERS))]
    off_mode = (distances.min(dim=1).values > radius).float().mean().item()
    return fractions, off_mode


def train_two_mode_toy(
    *,
    seconds: float = 30.0,
    max_steps: int = 2000,
    batch_size: int = 256,
    samples: int = 2000,
    seed: int = 0,
    progress: bool = False,
    **config_overrides,
) -> ToyResult:
    """Train a small MoDE denoiser on the two-mode toy (at most ``seconds`` / ``max_steps``), then sample."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    denoiser = MoDEDenoiser(toy_config(**config_overrides))
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=2e-3, weight_decay=0.0)
    sigma_distribution = LogLogisticSigma()
    condition = torch.zeros(batch_size, 1)
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=max_steps, disable=not progress, desc="toy training")
    step = 0
    while step < max_steps and time.perf_counter() - start < seconds:
        actions = sample_two_modes(batch_size, generator)
        sigma = sigma_distribution.sample(batch_size, generator=generator)
        loss = denoiser.loss(actions, condition, condition, sigma=sigma, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        losses.append(loss.diffusion.item())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    elapsed = time.perf_counter() - start
    denoiser.eval()
    sigmas = exponential_schedule(10, sigma_min=0.01, sigma_max=80.0)
    zeros = torch.zeros(samples, 1)
    points = denoiser.sample_actions(zeros, zeros, sigmas, generator=generator)
    fractions, off_mode = mode_fractions(points)
    final = sum(losses[-50:]) / max(1, len(losses[-50:]))
    return ToyResult(denoiser, step, elapsed, final, fractions, off_mode, losses)
