"""The router: scores experts and picks top-k of them (deterministic) or samples k (MoDE training)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Routing:
    """Which experts each row uses.

    Shapes, with ``rows`` the routed unit (a sample for sigma routing, a token for token routing):
    ``logits`` and ``probs`` (rows, experts); ``expert_ids`` (rows, k) long; ``expert_weights`` (rows, k),
    the chosen probabilities renormalised to sum to 1.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    expert_ids: torch.Tensor
    expert_weights: torch.Tensor


class Router(nn.Module):
    """MLP ``D -> hidden_mult * D -> GELU -> E`` followed by a softmax (the MoDE reference router)."""

    def __init__(self, dim: int, num_experts: int, hidden_mult: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_mult * dim), nn.GELU(), nn.Linear(hidden_mult * dim, num_experts)
        )

    def forward(self, router_input: torch.Tensor) -> torch.Tensor:
        """router_input: (rows, dim) -> logits (rows, experts)."""
        return self.net(router_input)


def select_experts(
    logits: torch.Tensor, k: int, *, sample: bool, generator: torch.Generator | None = None
) -> Routing:
    """Pick k experts per row of ``logits`` (rows, experts).

    ``sample=True`` draws k experts without replacement from the router's distribution, as the MoDE
    reference does in training; otherwise the top-k are taken.
    """
    probs = logits.float().softmax(dim=-1).to(logits.dtype)
    if sample:
        # NaN / inf logits (a diverging run) would make multinomial raise before the loss is ever checked.
        # Draw from a sanitised copy instead: the chosen weights below are still gathered from ``probs``,
        # so the NaN reaches the output and the loss, where the training loop's divergence check sees it.
        draw = probs.detach().float().nan_to_num(nan=1.0, posinf=1.0, neginf=0.0).clamp_min(1e-12)
        expert_ids = torch.multinomial(draw, k, replacement=False, generator=generator)
    else:
        expert_ids = probs.topk(k, dim=-1).indices
    chosen = probs.gather(-1, expert_ids)
    return Routing(logits, probs, expert_ids, chosen / chosen.sum(dim=-1, keepdim=True))
