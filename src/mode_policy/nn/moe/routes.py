"""What a routing decision asks the experts to do: the four ways a layer runs its experts.

A routing strategy (``mode_policy.nn.moe.routing``) returns one of these; each runs the grouped experts
and says which experts got how much gate weight (for usage plots and the balance loss):

- ``CachedRoute``: the experts of one sampler step, known in advance (host ints and floats): one batched
  matmul per projection on a strided view of the chosen experts' weights, no router, no copy;
- ``SharedRoute``: one routing for every token (a batch that shares sigma): the chosen experts densely;
- ``AllExperts``: every expert with constant weights (an extracted task model);
- ``TokenRoute``: a routing per token: sort by expert, grouped GEMM, scatter back.

Four more serve programs with a fixed structure (``mode_policy.policies.program``: ONNX export and
``torch.compile``): ``FusedRoute`` runs a step's chosen experts as one wide SwiGLU, ``TensorRoute`` takes
them as tensors (one compiled graph then serves every step), ``SampleGatedRoute`` runs a fixed set of
experts with per-sample weights (each sample's task picks its row of a table), and ``DenseTokenRoute``
routes per token without data-dependent shapes (every expert runs, unchosen ones weighted 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from mode_policy.nn.moe.dispatch import dispatch_to_experts
from mode_policy.nn.moe.experts import GroupedSwiGLU, swiglu
from mode_policy.nn.moe.router import Routing, select_experts


@dataclass(frozen=True)
class CachedRoute:
    """A layer's experts at one sampler step, as host values: running them needs no router and no copy."""

    expert_ids: tuple[int, ...]
    expert_weights: tuple[float, ...]
    routing = None  # nothing to balance: the route was decided before the call

    @cached_property
    def strided(self) -> tuple[slice, tuple[float, ...]] | None:
        """The chosen experts as one slice of the stacked weights, with their gate weights in slice order;
        None when a slice cannot select them (one expert, or three or more unevenly spaced ones)."""
        order = sorted(range(len(self.expert_ids)), key=self.expert_ids.__getitem__)
        ids = [self.expert_ids[i] for i in order]
        if len(ids) < 2 or ids[1] == ids[0]:
            return None
        experts = slice(ids[0], ids[-1] + 1, ids[1] - ids[0])
        if ids != list(range(experts.start, experts.stop, experts.step)):
            return None
        return experts, tuple(self.expert_weights[i] for i in order)

    def run(self, experts: GroupedSwiGLU, flat: torch.Tensor) -> tuple[torch.Tensor, None]:
        """flat: (N, D) -> (N, D)."""
        if self.strided is not None and isinstance(experts, GroupedSwiGLU):
            experts_slice, weights = self.strided
            expert_outs = experts.forward_strided(flat, experts_slice)  # (k, N, D)
            out = expert_outs[0].mul_(weights[0])  # in place on a fresh tensor's views (indexed, not unbound)
            for slot in range(1, len(weights)):
                out.add_(expert_outs[slot].mul_(weights[slot]))
            return out, None
        out = None  # one expert, or a program's kept experts (SelectedExperts): a matmul pair per expert
        for expert_id, weight in zip(self.expert_ids, self.expert_weights, strict=True):
            # In place on fresh tensors (no extra allocation); not add_(..., alpha=w), which torch.compile's
            # CPU backend (torch 2.13) miscompiles.
            expert_out = experts.forward_expert(flat, expert_id).mul_(weight)
            out = expert_out if out is None else out.add_(expert_out)
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


@dataclass(frozen=True)
class FusedRoute:
    """A cached route run as one SwiGLU over the chosen experts together (``SelectedExperts``): two
    matmuls per layer instead of two per expert; for a graph that folds the concatenated weights."""

    expert_ids: tuple[int, ...]
    expert_weights: tuple[float, ...]
    routing = None

    def run(self, experts: Any, flat: torch.Tensor) -> tuple[torch.Tensor, None]:
        fused_in, fused_out = experts.fused_weights(self.expert_ids, self.expert_weights)
        return swiglu(flat @ fused_in) @ fused_out, None

    def usage(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([self.expert_ids]), torch.tensor([self.expert_weights])


@dataclass(frozen=True)
class TensorRoute:
    """A cached route whose experts arrive as tensors: each chosen expert's ``w_in`` (D, 2H) and ``w_out``
    (H, D), and the gate weights ``gates`` (k,). The code is the same at every sampler step, so one compiled
    graph serves them all (with host ints, each step would be a graph of its own)."""

    w_in: tuple[torch.Tensor, ...]
    w_out: tuple[torch.Tensor, ...]
    gates: torch.Tensor
    routing = None

    def run(self, experts: Any, flat: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = None
        for slot, (w_in, w_out) in enumerate(zip(self.w_in, self.w_out, strict=True)):
            expert_out = (swiglu(flat @ w_in) @ w_out) * self.gates[slot]
            out = expert_out if out is None else out + expert_out
        return out, None

    def usage(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("a tensor route is for compiled programs; measure usage on the live model")


@dataclass(frozen=True)
class SampleGatedRoute:
    """Experts ``expert_ids`` on every token, weighted per sample by ``gates`` (batch, len(expert_ids)), 0
    for an expert a sample's route does not choose: goal-routed experts of several tasks in one graph."""

    expert_ids: tuple[int, ...]
    gates: torch.Tensor
    routing = None

    def run(self, experts: Any, flat: torch.Tensor) -> tuple[torch.Tensor, None]:
        outs = torch.stack([experts.forward_expert(flat, e) for e in self.expert_ids])  # (E, N, D)
        gates = self.gates.repeat_interleave(flat.shape[0] // self.gates.shape[0], dim=0)  # (N, E)
        return torch.einsum("ne,end->nd", gates, outs), None

    def usage(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("a sample-gated route is for export; measure usage on the live model")


@dataclass(frozen=True)
class DenseTokenRoute:
    """Token routing (top-k per token, deterministic) with static shapes: every expert runs on every token
    and the unchosen ones get weight 0. More arithmetic than dispatching, but a graph of fixed shape."""

    router: torch.nn.Module
    top_k: int
    routing = None

    def run(self, experts: GroupedSwiGLU, flat: torch.Tensor) -> tuple[torch.Tensor, None]:
        routing = select_experts(self.router(flat), self.top_k, sample=False)
        gates = torch.zeros(flat.shape[0], experts.num_experts, dtype=flat.dtype, device=flat.device)
        gates = gates.scatter(1, routing.expert_ids, routing.expert_weights)  # (N, E)
        return torch.einsum("ne,end->nd", gates, experts.forward_all(flat)), None

    def usage(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("a dense token route is for export; measure usage on the live model")


Route = CachedRoute | SharedRoute | AllExperts | TokenRoute | FusedRoute | SampleGatedRoute | DenseTokenRoute
