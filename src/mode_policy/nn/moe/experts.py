"""SwiGLU experts: ``D -> 2H (value, gate) -> value * SiLU(gate) -> H -> D``, stacked for grouped matmuls."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def grouped_gemm_dtype(device: torch.device, dtype: torch.dtype, dims: tuple[int, ...]) -> torch.dtype | None:
    """The dtype torch's grouped GEMM (``F.grouped_mm``) runs these experts in, or None for the looped
    fallback. dtype: the tokens' (or, under autocast, autocast's); dims: the matrices' inner sizes.

    Chosen by device and dtype, not dtype alone: torch documents CUDA support for bfloat16 on SM >= 80
    (float32 and older GPUs take the fallback), its CPU kernel runs float32 (bfloat16 on CPU needs
    16-byte-aligned strides, and CPU autocast's matmuls are faster anyway), and float64 (tests) has none.
    """
    if not hasattr(F, "grouped_mm"):
        return None
    if device.type == "cuda":
        supported = dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (8, 0)
    else:
        supported = device.type == "cpu" and dtype == torch.float32
    aligned = all(size * dtype.itemsize % 16 == 0 for size in dims)
    return dtype if supported and aligned else None


def swiglu(projected: torch.Tensor) -> torch.Tensor:
    """(..., 2H) -> (..., H): the first half is the value, the second the gate."""
    value, gate = projected.chunk(2, dim=-1)
    return value * F.silu(gate)


def _stacked_swiglu(tokens: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """tokens: (N, D) through k stacked experts w_in (k, D, 2H), w_out (k, H, D) -> (k, N, D)."""
    hidden = swiglu(torch.matmul(tokens.unsqueeze(0), w_in))  # (k, N, H)
    return torch.bmm(hidden, w_out)


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
    - ``forward_strided``: experts given as a Python slice (the expert cache: any two experts, or more
      evenly spaced ones), a batched matmul on a strided view of the stacked weights, no copy;
    - ``forward_expert``: one expert given as a Python int, a plain matmul on a view of its weights.
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
        device = sorted_tokens.device
        dtype = sorted_tokens.dtype
        if torch.is_autocast_enabled(device.type):  # autocast leaves grouped_mm alone: cast as it would
            dtype = torch.get_autocast_dtype(device.type)
        dtype = grouped_gemm_dtype(
            device, dtype, (self.w_in.shape[1], self.w_in.shape[2], self.w_out.shape[1])
        )
        if dtype is None:
            return self._looped_fallback(sorted_tokens, group_ends)
        hidden = swiglu(F.grouped_mm(sorted_tokens.to(dtype), self.w_in.to(dtype), offs=group_ends))
        return F.grouped_mm(hidden, self.w_out.to(dtype), offs=group_ends)

    def _looped_fallback(self, sorted_tokens: torch.Tensor, group_ends: torch.Tensor) -> torch.Tensor:
        # Reads the group sizes on the host (a device sync): for what the grouped kernel lacks.
        counts = torch.diff(group_ends, prepend=group_ends.new_zeros(1)).tolist()
        pieces = sorted_tokens.split(counts)
        outputs = [
            swiglu(piece @ self.w_in[e]) @ self.w_out[e] for e, piece in enumerate(pieces) if piece.shape[0]
        ]
        return torch.cat(outputs) if outputs else sorted_tokens.new_zeros(sorted_tokens.shape)

    def forward_selected(self, tokens: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """tokens: (N, D); expert_ids: (k,) device tensor shared by all tokens -> (k, N, D)."""
        return _stacked_swiglu(
            tokens, self.w_in.index_select(0, expert_ids), self.w_out.index_select(0, expert_ids)
        )

    def forward_strided(self, tokens: torch.Tensor, experts: slice) -> torch.Tensor:
        """tokens: (N, D) through the experts the slice ``experts`` picks (a view, no gather) -> (k, N, D).

        One batched matmul per projection instead of one matmul per expert: at batch 1 each matmul is small
        enough that the call itself costs as much as the arithmetic."""
        return _stacked_swiglu(tokens, self.w_in[experts], self.w_out[experts])

    def forward_all(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (N, D) through every expert -> (E, N, D) (an extracted task model runs them all)."""
        return _stacked_swiglu(tokens, self.w_in, self.w_out)

    def forward_expert(self, tokens: torch.Tensor, expert_id: int) -> torch.Tensor:
        """tokens: (N, D) through expert ``expert_id`` -> (N, D)."""
        return swiglu(tokens @ self.w_in[expert_id]) @ self.w_out[expert_id]


class SelectedExperts(nn.Module):
    """Copies of only some experts of a GroupedSwiGLU, each its own tensors: what a program that runs a fixed
    set of experts keeps (an exported file then stores each used expert once and no unused one).

    ``forward_expert(tokens, expert_id)`` as GroupedSwiGLU's, for the ids it holds.
    """

    def __init__(self, experts: GroupedSwiGLU, expert_ids: list[int]) -> None:
        super().__init__()
        self.expert_ids = sorted(expert_ids)
        self.w_in = nn.ParameterDict(
            {str(e): nn.Parameter(experts.w_in[e].detach().clone()) for e in self.expert_ids}
        )
        self.w_out = nn.ParameterDict(
            {str(e): nn.Parameter(experts.w_out[e].detach().clone()) for e in self.expert_ids}
        )

    def forward_expert(self, tokens: torch.Tensor, expert_id: int) -> torch.Tensor:
        """tokens: (N, D) through expert ``expert_id`` -> (N, D)."""
        return swiglu(tokens @ self.w_in[str(expert_id)]) @ self.w_out[str(expert_id)]

    def fused_weights(
        self, expert_ids: tuple[int, ...], weights: tuple[float, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen experts as one SwiGLU of their summed width: w_in (D, 2kH) laid out [values | gates],
        w_out (kH, D) with each expert's gate weight folded in. Built from the weights at every call, which
        a graph compiler folds into constants (the file still stores each expert once)."""
        hidden = self.w_out[str(expert_ids[0])].shape[0]
        w_in = [self.w_in[str(e)] for e in expert_ids]
        fused_in = torch.cat([w[:, :hidden] for w in w_in] + [w[:, hidden:] for w in w_in], dim=1)
        fused_out = torch.cat(
            [w * self.w_out[str(e)] for e, w in zip(expert_ids, weights, strict=True)], dim=0
        )
        return fused_in, fused_out
