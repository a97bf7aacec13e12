"""What a routing decision asks the experts to do: the four ways a layer runs its experts.

A routing strategy (``mode_policy.nn.moe.routing``) returns one of these; each runs the grouped experts
and says which experts got how much gate weight (for usage plots and the balance loss):

- ``CachedRoute``: the experts of one sampler step, known in advance (host ints and floats): a plain
  matmul per chosen expert on a view of its weights, no router, no copy;
- ``SharedRoute``: one routing for every token (a batch that shares sigma): the chosen experts densely;
- ``AllExperts``: every expert with constant weights (an extracted task model);
- ``TokenRoute``: a routing per token: sort by expert, grouped GEMM, scatter back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mode_policy.nn.moe.dispatch import dispatch_to_experts
from mode_policy.nn.moe.experts import GroupedSwiGLU
from mode_policy.nn.moe.router import Routing


@dataclass(frozen=True)
class CachedRoute:
    """A layer's experts at one sampler step, as host values: running them needs no router and no copy."""

    expert_ids: tuple[int, ...]
    expert_weights: tuple[float, ...]
    routing = None  # nothing to balance: the route was decided before the call

    def run(self, experts: GroupedSwiGLU, flat: torch.Tensor) -> tuple[torch.Tensor, None]:
        """flat: (N, D) -> (N, D)."""
        out = None
        for expert_id, weight in zip(self.expert_ids, self.expert_weights, strict=True):
            expert_out = experts.forward_expert(flat, expert_id)
            out = expert_out * weight if out is None else out.add_(expert_out, alpha=weight)
        return out, None

    def usage(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([self.expert_ids]), torch.tensor([self.expert_weights])


@dataclass(frozen=True)
class SharedRoute:
    """One routing row (``routing`` of shape (1, ...)) for every token of the call."""

    routing: Routing

    def run(self, experts: GroupedSwiGLU, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, weights = self.routing.expert_ids[0], self.routing.expert_weights[0]
        expert_out = experts.forward_selected(flat, ids)  # (k, N, D)
        out = (weights.view(-1, 1, 1) * expert_out).sum(dim=0)
        tokens_per_expert = torch.zeros_like(self.routing.probs[0]).index_fill_(0, ids, 1)
        return out, tokens_per_expert

    def usage(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.routing.expert_ids, self.routing.expert_weights


@dataclass(frozen=True)
class AllExperts:
    """Every expert, weighted by ``weights`` (experts,), the same for every token."""

    weights: torch.Tensor
    routing = None

    def run(self, experts: GroupedSwiGLU, flat: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (self.weights.view(-1, 1, 1) * experts.forward_all(flat)).sum(dim=0), None

    def usage(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.arange(self.weights.numel()).unsqueeze(0), self.weights.unsqueeze(0)


@dataclass(frozen=True)
class TokenRoute:
    """One routing row per token (``routing`` of shape (N, ...))."""

    routing: Routing

    def run(self, experts: GroupedSwiGLU, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dispatch_to_experts(flat, self.routing.expert_ids, self.routing.expert_weights, experts)

    def usage(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.routing.expert_ids, self.routing.expert_weights


Route = CachedRoute | SharedRoute | AllExperts | TokenRoute
