"""MoDEDenoiser: EDM preconditioning around the MoDE transformer, with its loss, expert cache and IO.

denoiser = MoDEDenoiser(MoDEConfig(obs_dim=39, goal_dim=384))
loss = denoiser.loss(action_chunk, obs, goal, sigma=LogLogisticSigma().sample(batch)).total
...
sigmas = exponential_schedule(10, sigma_min=0.05, sigma_max=80)
actions = denoiser.eval().sample_actions(obs, goal, sigmas)   # expert-cached by default
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.edm_denoiser import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CachedSamplingDenoiser,
    DenoiserLoss,
)
from mode_policy.nn.expert_cache import ExpertCache
from mode_policy.nn.moe.layer import RouterStats
from mode_policy.nn.registry import DENOISERS
from mode_policy.nn.transformer import MoDETransformer

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "DenoiserLoss", "MoDEDenoiser"]


@DENOISERS.register("mode")
class MoDEDenoiser(CachedSamplingDenoiser):
    """The MoDE transformer under EDM preconditioning, with router losses and the expert cache.

    ``forward(noisy_action, sigma, obs, goal, cached_step=None)``: with ``cached_step`` (from
    ``cache_experts(sigmas).step(j)``) the layers run their cached experts and skip the routers.
    """

    config_class = MoDEConfig

    def __init__(self, config: MoDEConfig) -> None:
        super().__init__(config, MoDETransformer(config))
        self._expert_cache: ExpertCache | None = None

    def _network(self, scaled_action, c_noise, obs, goal, **options):
        return self.network(scaled_action, c_noise, obs, goal, **options)

    def _add_router_losses(self, diffusion: torch.Tensor, stats: list[RouterStats]) -> DenoiserLoss:
        if not stats:  # dense
            return super()._add_router_losses(diffusion, stats)
        load_balance = torch.stack([s.load_balance_loss for s in stats]).mean()
        z_loss = torch.stack([s.z_loss for s in stats]).mean()
        total = (
            diffusion
            + self.config.load_balance_weight * load_balance
            + self.config.router_z_loss_weight * z_loss
        )
        fractions = torch.stack([s.expert_fraction for s in stats])
        return DenoiserLoss(total, diffusion, load_balance, z_loss, fractions)

    # Sampling ---------------------------------------------------------------------------------------
    @property
    def sampling_cache(self) -> str | None:
        return "experts" if self.config.cacheable else None

    def cache_experts(self, sigmas: torch.Tensor) -> ExpertCache:
        """The expert cache for this sampler schedule (reused while the schedule is the same)."""
        if self._expert_cache is None or not self._expert_cache.matches(sigmas):
            self._expert_cache = ExpertCache(self.network, sigmas)
        return self._expert_cache

    def clear_expert_cache(self) -> None:
        self._expert_cache = None

    def bind(
        self, obs: torch.Tensor, goal: torch.Tensor, sigmas: torch.Tensor | None = None
    ) -> Callable[..., torch.Tensor]:
        """A k-diffusion-style ``model(x, sigma[, step])`` for ``mode_policy.diffusion.sample``.

        With ``sigmas`` (the schedule you will sample with) the model takes the sampler's ``step`` and runs
        the cached experts of that step; without, it routes at every call.
        """
        if sigmas is None:
            return super().bind(obs, goal)
        cache = self.cache_experts(sigmas)
        cache.refresh(check_contents=True)
        if not cache.uses_goal:

            def model(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
                return self(x, sigma, obs, goal, cached_step=cache.step(step))

            return model

        # Goal-routed: samples that share a goal share a table; each group runs its own experts.
        goal_rows = goal if goal.dim() == 3 else goal.unsqueeze(1)  # (batch, goal_tokens, goal_dim)
        unique_goals, group_of = torch.unique(goal_rows.flatten(1), dim=0, return_inverse=True)
        keys = [cache.add_goal(row.view_as(goal_rows[0])) for row in unique_goals]
        if len(keys) == 1:
            return lambda x, sigma, step: self(x, sigma, obs, goal, cached_step=cache.step(step, keys[0]))
        members = [torch.nonzero(group_of == g).flatten() for g in range(len(keys))]

        def grouped_model(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
            out = torch.empty_like(x)
            for key, rows in zip(keys, members, strict=True):
                cached = cache.step(step, key)
                out[rows] = self(x[rows], sigma, obs[rows], goal[rows], cached_step=cached)
            return out

        return grouped_model

    def parameter_counts(self) -> dict[str, int]:
        """Total parameters, and those a token actually runs through (unchosen routed experts excluded)."""
        total = sum(p.numel() for p in self.parameters())
        config = self.config
        idle = 0
        if not config.is_dense:
            per_expert = 3 * config.width * config.expert_hidden
            idle = config.depth * (config.routed_experts - config.routed_top_k) * per_expert
        return {"total": total, "active": total - idle}
