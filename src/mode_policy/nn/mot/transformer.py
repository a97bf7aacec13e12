"""The Mixture-of-Transformers network: MoDE's token sequence, with every layer's weights per token group.

Token sequence (as in MoDE, built by the same code): [noise token phi(sigma), goal token(s), observation
token(s), action tokens], with a learned position embedding on all but the noise token and phi(sigma)
added to every attention input. Each group of tokens (``MoTConfig.token_groups``) runs its own norms,
projections and feed-forward; attention itself is global: every token attends to the whole sequence
(under the mask).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from mode_policy.nn.moe.experts import SwiGLU
from mode_policy.nn.mot.config import MoTConfig
from mode_policy.nn.transformer import init_token_inputs, token_sequence


class TokenGroups(nn.Module):
    """Splits a sequence (batch, tokens, ...) into its groups' tokens and joins them back in order.

    Groups that are runs of consecutive tokens (the default: context, then actions) are sliced; others
    are gathered by index and put back with the inverse permutation.
    """

    def __init__(self, group_ids: list[int]) -> None:
        super().__init__()
        self.num_groups = max(group_ids) + 1
        members = [[t for t, g in enumerate(group_ids) if g == group] for group in range(self.num_groups)]
        order = [t for group in members for t in group]
        self.sliced = order == list(range(len(group_ids)))
        bounds = [0]
        for group in members:
            bounds.append(bounds[-1] + len(group))
        self.slices = [slice(start, stop) for start, stop in itertools.pairwise(bounds)]
        for g, group in enumerate(members):
            self.register_buffer(f"index_{g}", torch.tensor(group), persistent=False)
        self.register_buffer("inverse", torch.argsort(torch.tensor(order)), persistent=False)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (batch, tokens, ...) -> one (batch, group tokens, ...) per group."""
        if self.sliced:
            return [x[:, s] for s in self.slices]
        return [x.index_select(1, getattr(self, f"index_{g}")) for g in range(self.num_groups)]

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of ``split``: (batch, tokens, ...) in sequence order."""
        joined = torch.cat(parts, dim=1)
        return joined if self.sliced else joined.index_select(1, self.inverse)


class GroupWeights(nn.Module):
    """One token group's weights in one layer: attention norm and projections (with QK-norm), and the
    feed-forward norm and SwiGLU."""

    def __init__(self, config: MoTConfig) -> None:
        super().__init__()
        dim, self.heads = config.width, config.heads
        self.attn_norm = nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm = nn.RMSNorm(dim // config.heads)
        self.k_norm = nn.RMSNorm(dim // config.heads)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.ffn_norm = nn.RMSNorm(dim)
        self.ffn = SwiGLU(dim, config.ffn_hidden)

    def query_key_value(self, x: torch.Tensor, sigma_embedding: torch.Tensor) -> torch.Tensor:
        """x: (batch, tokens, D); sigma_embedding: (batch or 1, D) -> (batch, tokens, 3, heads, head_dim)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.attn_norm(x) + sigma_embedding.unsqueeze(1))
        q, k, v = qkv.view(batch, tokens, 3, self.heads, dim // self.heads).unbind(2)
        return torch.stack([self.q_norm(q), self.k_norm(k), v], dim=2)


class MoTBlock(nn.Module):
    def __init__(self, config: MoTConfig, groups: TokenGroups) -> None:
        super().__init__()
        self.groups = [groups]  # shared with the network (a list, so it is not registered twice)
        self.weights = nn.ModuleList(GroupWeights(config) for _ in range(groups.num_groups))
        self.causal = config.attention == "causal"
        self.attention_dropout = config.dropout
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, sigma_embedding: torch.Tensor) -> torch.Tensor:
        """x: (batch, tokens, D); sigma_embedding: (batch or 1, D) -> (batch, tokens, D)."""
        batch, tokens, dim = x.shape
        qkv = self._per_group(lambda w, part: w.query_key_value(part, sigma_embedding), x)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (batch, heads, tokens, head_dim): global attention
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.attention_dropout if self.training else 0.0
        ).transpose(1, 2)  # (batch, tokens, heads, head_dim)
        attended = attended.reshape(batch, tokens, dim)
        h = x + self.dropout(self._per_group(lambda w, part: w.proj(part), attended))
        return h + self.dropout(self._per_group(lambda w, part: w.ffn(w.ffn_norm(part)), h))

    def _per_group(self, function, x: torch.Tensor) -> torch.Tensor:
        """``function(group weights, the group's tokens)`` for each group, joined back in sequence order."""
        groups = self.groups[0]
        return groups.join([function(w, part) for w, part in zip(self.weights, groups.split(x), strict=True)])


class MoTTransformer(nn.Module):
    def __init__(self, config: MoTConfig) -> None:
        super().__init__()
        self.config = config
        init_token_inputs(self, config)
        self.groups = TokenGroups(config.token_group_ids())
        self.layers = nn.ModuleList(MoTBlock(config, self.groups) for _ in range(config.depth))
        self.final_norm = nn.RMSNorm(
            config.width
        )  # the outputs are action tokens only: no per-group head needed
        self.head = nn.Linear(config.width, config.action_dim)

    def forward(
        self, scaled_action: torch.Tensor, c_noise: torch.Tensor, obs: torch.Tensor, goal: torch.Tensor
    ) -> torch.Tensor:
        """F for the action tokens (batch, chunk, action_dim).

        scaled_action: (batch, chunk, action_dim), already multiplied by c_in; c_noise: (batch,) or (1,);
        obs: (batch, obs_tokens, obs_dim); goal: (batch, goal_tokens, goal_dim).
        """
        sigma_embedding = self.sigma_embedding(c_noise)  # (batch or 1, D)
        goal_tokens = self.goal_dropout(self.goal_proj(goal))
        x = token_sequence(self, sigma_embedding, goal_tokens, obs, scaled_action)  # (batch, tokens, D)
        for layer in self.layers:
            x = layer(x, sigma_embedding)
        return self.head(self.final_norm(x[:, -self.config.chunk_size :]))
