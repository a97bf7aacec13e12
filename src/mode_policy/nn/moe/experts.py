"""SwiGLU experts: ``D -> 2H (value, gate) -> value * SiLU(gate) -> H -> D``, stacked for grouped matmuls."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Dtypes for which torch's grouped GEMM runs; anything else (float64 in tests) takes the looped fallback.
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def swiglu(projected: torch.Tensor) -> torch.Tensor:
    """(..., 2H) -> (..., H): the first half is the value, the second the gate."""
    value, gate = projected.chunk(2, dim=-1)
    return value * F.silu(gate)


class SwiGLU(nn.Module):
    """One dense SwiGLU MLP (the dense baseline's MLP, and the always-on shared expert)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.w_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(swiglu(self.w_in(x)))


class GroupedSwiGLU(nn.Module):
    """``num_experts`` SwiGLU experts whose weights are stacked: w_in (E, D, 2H), w_out (E, H, D).

    Three ways to run them, none with a per-expert Python loop that waits on the device:
    - ``forward_grouped``: tokens already sorted by expert, one grouped GEMM per projection;
    - ``forward_selected``: every token uses the same experts given as a device tensor (uncached sigma
      routing), a batched matmul over the selected experts;
    - ``forward_expert``: one expert given as a Python int (the expert cache), a plain matmul on a view
      of its weights, no copy.
    """

    def __init__(self, num_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, 2 * hidden))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same scale as nn.Linear's default init, per expert.
        for weight in (self.w_in, self.w_out):
            bound = 1 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)

    def forward_grouped(self, sorted_tokens: torch.Tensor, group_ends: torch.Tensor) -> torch.Tensor:
        """sorted_tokens: (M, D), grouped by expert; group_ends: (E,) int32 cumulative counts -> (M, D)."""
        if sorted_tokens.dtype in _GROUPED_MM_DTYPES and hasattr(F, "grouped_mm"):
            hidden = swiglu(F.grouped_mm(sorted_tokens, self.w_in, offs=group_ends))
            return F.grouped_mm(hidden, self.w_out, offs=group_ends)
        return self._looped_fallback(sorted_tokens, group_ends)

    def _looped_fallback(self, sorted_tokens: torch.Tensor, group_ends: torch.Tensor) -> torch.Tensor:
        # Reads the group sizes on the host: only for dtypes the grouped kernel lacks (float64 tests).
        counts = torch.diff(group_ends, prepend=group_ends.new_zeros(1)).tolist()
        pieces = sorted_tokens.split(counts)
        outputs = [
            swiglu(piece @ self.w_in[e]) @ self.w_out[e] for e, piece in enumerate(pieces) if piece.shape[0]
        ]
        return torch.cat(outputs) if outputs else sorted_tokens.new_zeros(sorted_tokens.shape)

    def forward_selected(self, tokens: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """tokens: (N, D); expert_ids: (k,) device tensor shared by all tokens -> (k, N, D)."""
        w_in = self.w_in.index_select(0, expert_ids)  # (k, D, 2H)
        w_out = self.w_out.index_select(0, expert_ids)  # (k, H, D)
        hidden = swiglu(torch.matmul(tokens.unsqueeze(0), w_in))  # (k, N, H)
        return torch.bmm(hidden, w_out)

    def forward_all(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (N, D) through every expert -> (E, N, D) (an extracted task model runs them all)."""
        hidden = swiglu(torch.matmul(tokens.unsqueeze(0), self.w_in))  # (E, N, H)
        return torch.bmm(hidden, self.w_out)

    def forward_expert(self, tokens: torch.Tensor, expert_id: int) -> torch.Tensor:
        """tokens: (N, D) through expert ``expert_id`` -> (N, D)."""
        return swiglu(tokens @ self.w_in[expert_id]) @ self.w_out[expert_id]
