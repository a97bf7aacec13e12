"""The MoE layer as a straight pipeline: route (the config's strategy) -> run the experts -> add the shared
expert. How the experts run follows from the route: cached, one shared selection, or dispatched per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from mode_policy.nn.moe.experts import GroupedSwiGLU, SwiGLU
from mode_policy.nn.moe.router import Router, Routing
from mode_policy.nn.moe.routes import CachedRoute, Route
from mode_policy.nn.moe.routing import routing_strategy

if TYPE_CHECKING:
    from mode_policy.nn.config import MoDEConfig

__all__ = ["CachedRoute", "MoELayer", "RouterStats", "load_balance_loss"]


@dataclass
class RouterStats:
    """One layer's routing statistics from a training forward pass.

    load_balance_loss: Switch-style ``E * sum_i f_i * P_i`` (1 at uniform routing), scalar.
    z_loss: mean squared log-sum-exp of the router logits, scalar.
    expert_fraction: (routed experts,) share of token-expert assignments each expert received, detached.
    """

    load_balance_loss: torch.Tensor
    z_loss: torch.Tensor
    expert_fraction: torch.Tensor


def load_balance_loss(probs: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss. probs: (rows, E) router probabilities; tokens_per_expert: (E,)."""
    num_experts = probs.shape[-1]
    fraction = tokens_per_expert.to(probs.dtype) / tokens_per_expert.sum()
    return num_experts * (fraction * probs.mean(dim=0)).sum()


class MoELayer(nn.Module):
    """Routed SwiGLU experts (plus an optional shared expert), or one dense SwiGLU when the config is dense.

    ``route_context`` (from the strategy's ``context``) has one row per sample, or a single row when the
    whole batch shares it, as inside a sampler for sigma and stage routing; token routing ignores it.
    """

    def __init__(self, config: MoDEConfig) -> None:
        super().__init__()
        dim, hidden = config.width, config.expert_hidden
        self.strategy = routing_strategy(config.router_input)(config)
        self.top_k = config.routed_top_k
        self.stochastic_routing = config.stochastic_routing
        self.dense = SwiGLU(dim, hidden) if config.is_dense else None
        routed = not config.is_dense
        learned = routed and self.strategy.learned_router
        self.router = Router(dim, config.routed_experts, config.router_hidden_mult) if learned else None
        self.experts = GroupedSwiGLU(config.routed_experts, dim, hidden) if routed else None
        self.shared_expert = SwiGLU(dim, hidden) if config.shared_expert else None
        # When a list, every forward appends the (routed experts,) share of gate weight each expert got;
        # mode_policy.nn.usage turns it into per-step usage tables and heatmaps.
        self.usage_log: list[torch.Tensor] | None = None
        if routed and not self.strategy.dense_with_one_expert:
            # Constant expert weights (set by extract_task_model); a buffer so it is saved with the weights.
            self.register_buffer(
                "fixed_weights", torch.full((config.routed_experts,), 1.0 / config.routed_experts)
            )

    def routing_parameters(self) -> list[torch.Tensor]:
        """What decides this layer's experts besides the context: its router, or its constant weights."""
        params: list[torch.Tensor] = [] if self.router is None else list(self.router.parameters())
        if hasattr(self, "fixed_weights"):
            params.append(self.fixed_weights)
        return params

    def route_rows(self, route_context: torch.Tensor) -> Routing:
        """Deterministic (eval) routing of per-sample context rows; the expert cache is built from it."""
        return self.strategy.route_rows(self, route_context)

    def forward(
        self,
        x: torch.Tensor,
        route_context: torch.Tensor | None,
        *,
        cached_route: CachedRoute | None = None,
        need_stats: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, RouterStats | None]:
        """x: (batch, tokens, D) -> ((batch, tokens, D), stats or None)."""
        if self.dense is not None:
            return self.dense(x), None
        batch, tokens, dim = x.shape
        flat = x.reshape(-1, dim)  # (batch * tokens, D)
        if cached_route is not None:
            route: Route = cached_route
        else:
            route = self.strategy.route(self, flat, route_context, batch, generator)
        out, tokens_per_expert = route.run(self.experts, flat)
        self._log_usage(route)
        stats = self._stats(route.routing, tokens_per_expert) if need_stats and route.routing else None
        if self.shared_expert is not None:
            out = out + self.shared_expert(flat)
        return out.reshape(batch, tokens, dim), stats

    def _log_usage(self, route: Route) -> None:
        """Rows that share a routing count once, which is exact here because every row of one call stands
        for the same number of tokens."""
        if self.usage_log is None:
            return
        expert_ids, expert_weights = route.usage()  # (rows, k) each
        mass = torch.zeros(self.experts.num_experts, dtype=torch.float64)
        mass.index_add_(
            0, expert_ids.detach().flatten().cpu(), expert_weights.detach().flatten().double().cpu()
        )
        self.usage_log.append(mass / expert_ids.shape[0])

    def _stats(self, routing: Routing, tokens_per_expert: torch.Tensor) -> RouterStats:
        fraction = tokens_per_expert.detach().float() / tokens_per_expert.sum().clamp_min(1)
        if self.router is None:  # hard routing (stage): there is no router to balance or regularise
            zero = routing.probs.new_zeros(())
            return RouterStats(zero, zero, fraction)
        z_loss = torch.logsumexp(routing.logits.float(), dim=-1).square().mean()
        return RouterStats(load_balance_loss(routing.probs, tokens_per_expert), z_loss, fraction)
