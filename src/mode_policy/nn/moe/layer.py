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

    Routing on sigma gives one routing per sample: ``router_input`` is phi(sigma) of shape (batch, D), or
    (1, D) when the whole batch shares one sigma, as it does inside a sampler. Routing on tokens routes
    every token on its own hidden state.
    """

    def __init__(self, config: MoDEConfig) -> None:
        super().__init__()
        dim, hidden = config.width, config.expert_hidden
        self.router_on_sigma = config.router_input == "sigma"
        self.top_k = config.routed_top_k
        self.stochastic_routing = config.stochastic_routing
        self.dense = SwiGLU(dim, hidden) if config.is_dense else None
        self.router = (
            None if config.is_dense else Router(dim, config.routed_experts, config.router_hidden_mult)
        )
        self.experts = None if config.is_dense else GroupedSwiGLU(config.routed_experts, dim, hidden)
        self.shared_expert = SwiGLU(dim, hidden) if config.shared_expert else None

    def route_sigma(self, sigma_embedding: torch.Tensor) -> Routing:
        """Deterministic (eval) routing for phi(sigma) rows (rows, D); used to build the expert cache."""
        return select_experts(self.router(sigma_embedding), self.top_k, sample=False)

    def forward(
        self,
        x: torch.Tensor,
        sigma_embedding: torch.Tensor,
        *,
        cached_route: CachedRoute | None = None,
        need_stats: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, RouterStats | None]:
        """x: (batch, tokens, D); sigma_embedding: (batch or 1, D) -> ((batch, tokens, D), stats or None)."""
        if self.dense is not None:
            return self.dense(x), None
        batch, tokens, dim = x.shape
        flat = x.reshape(-1, dim)  # (batch * tokens, D)
        stats = None
        if cached_route is not None:
            out = self._run_cached(flat, cached_route)
        else:
            sample = self.training and self.stochastic_routing
            if self.router_on_sigma and sigma_embedding.shape[0] == 1 and not sample:
                # One routing for every token: run just the chosen experts, densely.
                routing = select_experts(self.router(sigma_embedding), self.top_k, sample=False)
                expert_out = self.experts.forward_selected(flat, routing.expert_ids[0])  # (k, N, D)
                out = (routing.expert_weights[0].view(-1, 1, 1) * expert_out).sum(dim=0)
                tokens_per_expert = torch.zeros_like(routing.probs[0]).index_fill_(
                    0, routing.expert_ids[0], 1
                )
            else:
                if self.router_on_sigma:
                    # Per-sample routing expanded to every token; sampling (training) then draws per token.
                    logits = self.router(sigma_embedding).expand(batch, -1).repeat_interleave(tokens, dim=0)
                else:
                    logits = self.router(flat)
                routing = select_experts(logits, self.top_k, sample=sample, generator=generator)
                out, tokens_per_expert = dispatch_to_experts(
                    flat, routing.expert_ids, routing.expert_weights, self.experts
                )
            if need_stats:
                stats = self._stats(routing, tokens_per_expert)
        if self.shared_expert is not None:
            out = out + self.shared_expert(flat)
        return out.reshape(batch, tokens, dim), stats

    def _run_cached(self, flat: torch.Tensor, route: CachedRoute) -> torch.Tensor:
        out = None
        for expert_id, weight in zip(route.expert_ids, route.expert_weights, strict=True):
            expert_out = self.experts.forward_expert(flat, expert_id)
            out = expert_out * weight if out is None else out.add_(expert_out, alpha=weight)
        return out

    @staticmethod
    def _stats(routing: Routing, tokens_per_expert: torch.Tensor) -> RouterStats:
        fraction = tokens_per_expert.detach().float() / tokens_per_expert.sum().clamp_min(1)
        z_loss = torch.logsumexp(routing.logits.float(), dim=-1).square().mean()
        return RouterStats(load_balance_loss(routing.probs, tokens_per_expert), z_loss, fraction)
