"""The MoDE transformer: the raw network F that EDM preconditioning wraps into a denoiser.

Token sequence: [noise token phi(sigma), goal token(s), observation token(s), action tokens]. Goal,
observation and action tokens get a learned absolute position embedding; the noise token gets none.
phi(sigma) is also added to the normalised input of every attention layer and is the router's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mode_policy.nn.attention import SelfAttention
from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.moe.layer import CachedRoute, MoELayer, RouterStats
from mode_policy.nn.sigma_embedding import SigmaEmbedding


@dataclass(frozen=True)
class CachedStep:
    """Everything about one sampler step that does not depend on the observation.

    sigma_embedding: phi(sigma) of shape (1, D); routes: one entry per layer (None for dense layers).
    """

    sigma_embedding: torch.Tensor
    routes: tuple[CachedRoute | None, ...]


def init_token_inputs(network: nn.Module, config) -> None:
    """The input side of a MoDE-style transformer (MoDE and Mixture-of-Transformers share it): phi(sigma),
    the goal, observation and action projections, goal dropout and the position embedding. Set as the
    network's own attributes, so their names in saved weights are ``network.goal_proj`` and so on."""
    dim = config.width
    network.sigma_embedding = SigmaEmbedding(dim)
    network.goal_proj = nn.Linear(config.goal_dim, dim)
    network.obs_proj = nn.Linear(config.obs_dim, dim)
    network.action_proj = nn.Linear(config.action_dim, dim)
    network.goal_dropout = nn.Dropout(config.goal_dropout)
    positions = config.num_goal_tokens + config.num_obs_tokens + config.chunk_size
    network.position = nn.Parameter(torch.randn(1, positions, dim) * 0.02)


def token_sequence(
    network: nn.Module,
    sigma_embedding: torch.Tensor,
    goal_tokens: torch.Tensor,
    obs: torch.Tensor,
    scaled_action: torch.Tensor,
) -> torch.Tensor:
    """[noise token phi(sigma), goal tokens, observation tokens, action tokens] -> (batch, tokens, D).

    sigma_embedding: (batch or 1, D); goal_tokens: (batch, goal_tokens, D), already projected; obs:
    (batch, obs_tokens, obs_dim); scaled_action: (batch, chunk, action_dim).
    """
    batch = scaled_action.shape[0]
    context = torch.cat([goal_tokens, network.obs_proj(obs), network.action_proj(scaled_action)], dim=1)
    noise_token = sigma_embedding.unsqueeze(1).expand(batch, 1, -1)
    return torch.cat([noise_token, context + network.position], dim=1)


class MoDEBlock(nn.Module):
    def __init__(self, config: MoDEConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.width)
        self.attn = SelfAttention(
            config.width, config.heads, causal=config.attention == "causal", dropout=config.dropout
        )
        self.moe_norm = nn.RMSNorm(config.width)
        self.moe = MoELayer(config)
        self.normalize_residual = config.residual == "reference"
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        sigma_embedding: torch.Tensor,
        route_context: torch.Tensor | None,
        *,
        cached_route: CachedRoute | None = None,
        need_stats: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, RouterStats | None]:
        """x: (batch, tokens, D); sigma_embedding: (batch or 1, D); route_context: see MoELayer."""
        h = x + self.dropout(self.attn(self.attn_norm(x) + sigma_embedding.unsqueeze(1)))
        if self.normalize_residual:
            h = self.moe_norm(h)
            moe_in = h
        else:
            moe_in = self.moe_norm(h)
        moe_out, stats = self.moe(
            moe_in, route_context, cached_route=cached_route, need_stats=need_stats, generator=generator
        )
        return h + self.dropout(moe_out), stats


class MoDETransformer(nn.Module):
    def __init__(self, config: MoDEConfig) -> None:
        super().__init__()
        self.config = config
        init_token_inputs(self, config)
        self.blocks = nn.ModuleList(MoDEBlock(config) for _ in range(config.depth))
        self.final_norm = nn.RMSNorm(config.width)
        self.head = nn.Linear(config.width, config.action_dim)
        self.routing = config.routing(config)  # what the routers look at (mode_policy.nn.moe.routing)
        self.routing.attach(self)

    def routing_parameters(self) -> list[nn.Parameter]:
        """The parameters that decide which experts run at a given sigma (what an expert cache depends on)."""
        params = list(self.sigma_embedding.parameters())
        if not self.config.is_dense:
            params.extend(self.routing.context_parameters(self))
        for block in self.blocks:
            params.extend(block.moe.routing_parameters())
        return params

    def route_context(
        self, sigma_embedding: torch.Tensor, c_noise: torch.Tensor, goal_tokens: torch.Tensor | None
    ) -> torch.Tensor | None:
        """What the routers look at, one row per sample (or a single shared row).

        sigma_embedding: (rows, D) phi(sigma); c_noise: (rows,); goal_tokens: (batch, goal_tokens, D)
        projected goal. Returns the strategy's context ((rows, D), or (rows,) stage ids), or None for a
        dense model and for strategies that need none (token, fixed).
        """
        if self.config.is_dense:
            return None
        return self.routing.context(self, sigma_embedding, c_noise, goal_tokens)

    def forward(
        self,
        scaled_action: torch.Tensor,
        c_noise: torch.Tensor,
        obs: torch.Tensor,
        goal: torch.Tensor,
        *,
        cached_step: CachedStep | None = None,
        need_stats: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[RouterStats]]:
        """Network output F for the action tokens.

        scaled_action: (batch, chunk, action_dim), already multiplied by c_in.
        c_noise: (batch,) or (1,); a single value means the batch shares sigma (and routing).
        obs: (batch, obs_tokens, obs_dim); goal: (batch, goal_tokens, goal_dim).
        Returns F (batch, chunk, action_dim) and the per-layer router stats (empty unless need_stats).
        """
        if cached_step is None:
            sigma_embedding = self.sigma_embedding(c_noise)  # (batch or 1, D)
        else:
            sigma_embedding = cached_step.sigma_embedding
        goal_tokens = self.goal_dropout(self.goal_proj(goal))  # (batch, goal_tokens, D)
        route_context = (
            None if cached_step is not None else self.route_context(sigma_embedding, c_noise, goal_tokens)
        )
        x = token_sequence(self, sigma_embedding, goal_tokens, obs, scaled_action)  # (batch, tokens, D)
        all_stats = []
        for layer, block in enumerate(self.blocks):
            x, stats = block(
                x,
                sigma_embedding,
                route_context,
                cached_route=None if cached_step is None else cached_step.routes[layer],
                need_stats=need_stats,
                generator=generator,
            )
            if stats is not None:
                all_stats.append(stats)
        actions = x[:, -self.config.chunk_size :]
        return self.head(self.final_norm(actions)), all_stats
