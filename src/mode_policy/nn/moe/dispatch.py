"""Dispatch: sort token-expert assignments by expert, run grouped experts, scatter weighted results back."""

from __future__ import annotations

import torch

from mode_policy.nn.moe.experts import GroupedSwiGLU


def dispatch_to_experts(
    tokens: torch.Tensor,
    expert_ids: torch.Tensor,
    expert_weights: torch.Tensor,
    experts: GroupedSwiGLU,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run each token through its k experts and sum the weighted outputs.

    tokens: (N, D); expert_ids, expert_weights: (N, k). Returns (output (N, D), tokens per expert (E,)).
    Everything stays on the device: sorting and bincount replace a per-expert loop.
    """
    num_tokens, k = expert_ids.shape
    flat_ids = expert_ids.reshape(-1)  # (N*k,)
    order = flat_ids.argsort(stable=True)
    source_token = order // k  # which token each sorted assignment came from
    tokens_per_expert = torch.bincount(flat_ids, minlength=experts.num_experts)
    group_ends = tokens_per_expert.cumsum(0).to(torch.int32)
    expert_out = experts.forward_grouped(tokens[source_token], group_ends)  # (N*k, D)
    # In the tokens' dtype: under autocast the experts may have run in bfloat16 and the gates in float32.
    expert_out = (expert_out * expert_weights.reshape(-1)[order].unsqueeze(-1)).to(tokens.dtype)
    output = tokens.new_zeros(num_tokens, tokens.shape[-1]).index_add_(0, source_token, expert_out)
    return output, tokens_per_expert
