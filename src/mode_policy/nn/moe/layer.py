"""The MoE layer: picks the fastest correct way to run the experts for the routing at hand."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.moe.dispatch import dispatch_to_experts
from mode_policy.nn.moe.experts import GroupedSwiGLU, SwiGLU
from mode_policy.nn.moe.router import Router, Routing, select_experts


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


@dataclass(frozen=True)
class CachedRoute:
    """A layer's experts at one sampler step, as host values: running them needs no router and no copy."""

    expert_ids: tuple[int, ...]
    expert_weights: tuple[float, ...]


def load_balance_loss(probs: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss. probs: (rows, E) router probabilities; tokens_per_expert: (E,)."""
    num_experts = probs.shape[-1]
    fraction = tokens_per_expert.to(probs.dtype) / tokens_per_expert.sum()
    return num_experts * (fraction * probs.mean(dim=0)).sum()


class MoELayer(nn.Module):
    """Routed SwiGLU experts (plus an optional shared expert), or one dense SwiGLU when num_experts == 1.

    Per-sample routing (sigma, task, sigma_goal, stage) takes a ``route_context`` with one row per sample, or
    a single row when the whole batch shares it, as it does inside a sampler for sigma and stage routing:
    a float (rows, D) router input, or for stage routing (rows,) long stage indices. Token routing routes
    every token on its own hidden state (``route_context`` is ignored). A "fixed" layer (an extracted task
    model) runs all of its experts with constant weights.
    """

    def __init__(self, config: MoDEConfig) -> None:
        super().__init__()
        dim, hidden = config.width, config.expert_hidden
        self.routing = config.router_input
        self.top_k = config.routed_top_k
        self.stochastic_routing = config.stochastic_routing
        self.dense = SwiGLU(dim, hidden) if config.is_dense else None
        learned_router = not config.is_dense and self.routing not in ("stage", "fixed")
        self.router = (
            Router(dim, config.routed_experts, config.router_hidden_mult) if learned_router else None
        )
        self.experts = None if config.is_dense else GroupedSwiGLU(config.routed_experts, dim, hidden)
        self.shared_expert = SwiGLU(dim, hidden) if config.shared_expert else None
        # When a list, every forward appends the (routed experts,) share of gate weight each expert got;
        # mode_policy.nn.usage turns it into per-step usage tables and heatmaps.
        self.usage_log: list[torch.Tensor] | None = None
        if self.routing == "fixed" and not config.is_dense:
            # Set by extract_task_model; a buffer so it is saved with the weights.
            self.register_buffer(
                "fixed_weights", torch.full((config.routed_experts,), 1.0 / config.routed_experts)
            )

    def route_rows(self, route_context: torch.Tensor) -> Routing:
        """Deterministic (eval) routing for per-sample rows; used to build the expert cache.

        route_context: (rows, D) router input, or (rows,) long stage indices for stage routing.
        """
        if self.routing == "stage":
            return _hard_routing(route_context, self.experts.num_experts)
        return select_experts(self.router(route_context), self.top_k, sample=False)

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
        stats = None
        if cached_route is not None:
            out = self._run_cached(flat, cached_route)
            self._log_usage(
                torch.tensor([cached_route.expert_ids]), torch.tensor([cached_route.expert_weights])
            )
        elif self.routing == "fixed":
            out = (self.fixed_weights.view(-1, 1, 1) * self.experts.forward_all(flat)).sum(dim=0)
            self._log_usage(
                torch.arange(self.experts.num_experts).unsqueeze(0), self.fixed_weights.unsqueeze(0)
            )
        else:
            sample = self.training and self.stochastic_routing and self.routing != "stage"
            if self.routing != "token" and route_context.shape[0] == 1 and not sample:
                # One routing for every token: run just the chosen experts, densely.
                routing = self.route_rows(route_context)
                expert_out = self.experts.forward_selected(flat, routing.expert_ids[0])  # (k, N, D)
                out = (routing.expert_weights[0].view(-1, 1, 1) * expert_out).sum(dim=0)
                tokens_per_expert = torch.zeros_like(routing.probs[0]).index_fill_(
                    0, routing.expert_ids[0], 1
                )
            else:
                routing = self._route_tokens(flat, route_context, batch, tokens, sample, generator)
                out, tokens_per_expert = dispatch_to_experts(
                    flat, routing.expert_ids, routing.expert_weights, self.experts
                )
            self._log_usage(routing.expert_ids, routing.expert_weights)
            if need_stats:
                stats = self._stats(routing, tokens_per_expert)
        if self.shared_expert is not None:
            out = out + self.shared_expert(flat)
        return out.reshape(batch, tokens, dim), stats

    def _log_usage(self, expert_ids: torch.Tensor, expert_weights: torch.Tensor) -> None:
        """expert_ids, expert_weights: (rows, k); rows that share a routing count once, which is exact here
        because every row of one call stands for the same number of tokens."""
        if self.usage_log is None:
            return
        mass = torch.zeros(self.experts.num_experts, dtype=torch.float64)
        mass.index_add_(
            0, expert_ids.detach().flatten().cpu(), expert_weights.detach().flatten().double().cpu()
        )
        self.usage_log.append(mass / expert_ids.shape[0])

    def _route_tokens(
        self,
        flat: torch.Tensor,
        route_context: torch.Tensor | None,
        batch: int,
        tokens: int,
        sample: bool,
        generator: torch.Generator | None,
    ) -> Routing:
        """Routing with one row per token (N = batch * tokens)."""
        if self.routing == "token":
            logits = self.router(flat)
        elif self.routing == "stage":
            stage = route_context.expand(batch).repeat_interleave(tokens)
            return _hard_routing(stage, self.experts.num_experts)
        else:
            # Per-sample routing expanded to every token; sampling (training) then draws per token.
            logits = self.router(route_context).expand(batch, -1).repeat_interleave(tokens, dim=0)
        return select_experts(logits, self.top_k, sample=sample, generator=generator)

    def _run_cached(self, flat: torch.Tensor, route: CachedRoute) -> torch.Tensor:
        out = None
        for expert_id, weight in zip(route.expert_ids, route.expert_weights, strict=True):
            expert_out = self.experts.forward_expert(flat, expert_id)
            out = expert_out * weight if out is None else out.add_(expert_out, alpha=weight)
        return out

    def _stats(self, routing: Routing, tokens_per_expert: torch.Tensor) -> RouterStats:
        fraction = tokens_per_expert.detach().float() / tokens_per_expert.sum().clamp_min(1)
        if self.routing == "stage":  # hard routing by sigma: there is no router to balance or regularise
            zero = routing.probs.new_zeros(())
            return RouterStats(zero, zero, fraction)
        z_loss = torch.logsumexp(routing.logits.float(), dim=-1).square().mean()
        return RouterStats(load_balance_loss(routing.probs, tokens_per_expert), z_loss, fraction)


def _hard_routing(stage: torch.Tensor, num_experts: int) -> Routing:
    """Stage routing: row i uses expert ``stage[i]`` with weight 1. stage: (rows,) long."""
    probs = torch.nn.functional.one_hot(stage, num_experts).float()
    ids = stage.unsqueeze(-1)
    return Routing(probs, probs, ids, torch.ones(ids.shape, device=stage.device))
