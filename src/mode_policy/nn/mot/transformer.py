"""The Mixture-of-Transformers network: MoDE's token sequence, with every layer's weights per token group.

Token sequence (as in MoDE, built by the same code): [noise token phi(sigma), goal token(s), observation
token(s), action tokens], with a learned position embedding on all but the noise token and phi(sigma)
added to every attention input. Each group of tokens (``MoTConfig.token_groups``) runs its own norms,
projections and feed-forward; attention itself is global: every token attends to the whole sequence
(under the mask).

Context cache (sampling, causal attention only): the context tokens (noise, goal, observation) come before
the action tokens, so under the causal mask they never see the actions, and their keys and values in every
layer depend only on (sigma, goal, observation). ``encode_context`` computes them for every sampler step
of a chunk in one batched pass; ``denoise_with_context`` then runs only the action tokens through their
group's weights, attending to that step's cached context. Same result as ``forward``, up to float
rounding; at batch 1 it replaces a step's small context matmuls with one batched pass per chunk.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mode_policy.nn.moe.experts import SwiGLU
from mode_policy.nn.mot.config import MoTConfig
from mode_policy.nn.transformer import init_token_inputs, token_sequence


class TokenGroups(nn.Module):
    """Splits a sequence (batch, tokens, ...) into its groups' tokens and joins them back in order.

    ``group_ids`` gives each token's group; ``num_groups`` (default: the largest id + 1) the groups of the
    whole model, of which a part of the sequence (the context, the actions) may hold only some: ``present``
    lists those, and ``split`` returns one part per present group. Groups that are runs of consecutive
    tokens (the default: context, then actions) are sliced; others are gathered by index and put back
    with the inverse permutation.
    """

    def __init__(self, group_ids: list[int], num_groups: int | None = None) -> None:
        super().__init__()
        self.num_groups = max(group_ids) + 1 if num_groups is None else num_groups
        members = [[t for t, g in enumerate(group_ids) if g == group] for group in range(self.num_groups)]
        self.present = [group for group in range(self.num_groups) if members[group]]
        order = [t for group in self.present for t in members[group]]
        self.sliced = order == list(range(len(group_ids)))
        bounds = [0]
        for group in self.present:
            bounds.append(bounds[-1] + len(members[group]))
        self.slices = [slice(start, stop) for start, stop in itertools.pairwise(bounds)]
        for group in self.present:
            self.register_buffer(f"index_{group}", torch.tensor(members[group]), persistent=False)
        self.register_buffer("inverse", torch.argsort(torch.tensor(order)), persistent=False)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (batch, tokens, ...) -> one (batch, group tokens, ...) per present group."""
        if self.sliced:
            return [x[:, s] for s in self.slices]
        return [x.index_select(1, getattr(self, f"index_{group}")) for group in self.present]

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of ``split``: (batch, tokens, ...) in sequence order."""
        joined = torch.cat(parts, dim=1)
        return joined if self.sliced else joined.index_select(1, self.inverse)


@dataclass
class MoTContext:
    """The context tokens' keys and values for every step of one chunk (``MoTTransformer.encode_context``).

    sigma_embedding: phi(sigma) per step (steps, D); keys, values: per layer (steps, batch, heads,
    context tokens, head_dim).
    """

    sigma_embedding: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


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
        groups = self.groups[0]
        q, k, v = self._query_key_value(x, sigma_embedding, groups)
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.attention_dropout if self.training else 0.0
        )
        return self._residual(x, attended, groups)

    def context_forward(
        self, x: torch.Tensor, sigma_embedding: torch.Tensor, groups: TokenGroups, *, last: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The context tokens alone (causal attention among themselves), x: (n, context tokens, D);
        sigma_embedding: (n, D) -> (the next layer's input, None for the last layer, whose context outputs
        nothing reads; keys and values (n, heads, context tokens, head_dim))."""
        q, k, v = self._query_key_value(x, sigma_embedding, groups)
        if last:
            return None, k, v
        return self._residual(x, F.scaled_dot_product_attention(q, k, v, is_causal=True), groups), k, v

    def action_forward(
        self,
        x: torch.Tensor,
        sigma_embedding: torch.Tensor,
        groups: TokenGroups,
        context_keys: torch.Tensor,
        context_values: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """The action tokens x: (batch, chunk, D) attending to the cached context (batch, heads, context
        tokens, head_dim) and, causally, to each other (``mask``: (chunk, context tokens + chunk))."""
        q, k, v = self._query_key_value(x, sigma_embedding, groups)
        k, v = torch.cat([context_keys, k], dim=2), torch.cat([context_values, v], dim=2)
        return self._residual(x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), groups)

    def _query_key_value(
        self, x: torch.Tensor, sigma_embedding: torch.Tensor, groups: TokenGroups
    ) -> torch.Tensor:
        """x: (batch, tokens, D) -> 3 x (batch, heads, tokens, head_dim), each token by its group."""
        qkv = self._per_group(lambda w, part: w.query_key_value(part, sigma_embedding), x, groups)
        return qkv.permute(2, 0, 3, 1, 4)

    def _residual(self, x: torch.Tensor, attended: torch.Tensor, groups: TokenGroups) -> torch.Tensor:
        """The output projection and feed-forward, with their residuals; attended: (batch, heads, tokens,
        head_dim) -> (batch, tokens, D)."""
        attended = attended.transpose(1, 2).reshape(x.shape)
        h = x + self.dropout(self._per_group(lambda w, part: w.proj(part), attended, groups))
        return h + self.dropout(self._per_group(lambda w, part: w.ffn(w.ffn_norm(part)), h, groups))

    def _per_group(self, function, x: torch.Tensor, groups: TokenGroups) -> torch.Tensor:
        """``function(group weights, the group's tokens)`` for each group, joined back in sequence order."""
        parts = groups.split(x)
        return groups.join(
            [function(self.weights[g], part) for g, part in zip(groups.present, parts, strict=True)]
        )


class MoTTransformer(nn.Module):
    def __init__(self, config: MoTConfig) -> None:
        super().__init__()
        self.config = config
        init_token_inputs(self, config)
        group_ids = config.token_group_ids()
        self.groups = TokenGroups(group_ids)
        self.layers = nn.ModuleList(MoTBlock(config, self.groups) for _ in range(config.depth))
        # The context cache's two parts of the sequence, and the actions' mask over [context, actions].
        context = len(group_ids) - config.chunk_size
        self.context_groups = TokenGroups(group_ids[:context], self.groups.num_groups)
        self.action_groups = TokenGroups(group_ids[context:], self.groups.num_groups)
        mask = torch.ones(config.chunk_size, context + config.chunk_size, dtype=torch.bool)
        mask[:, context:] = torch.ones(config.chunk_size, config.chunk_size, dtype=torch.bool).tril()
        self.register_buffer("action_mask", mask, persistent=False)
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

    # Context cache (sampling with causal attention) -----------------------------------------------------
    @torch.no_grad()
    def encode_context(self, c_noise: torch.Tensor, obs: torch.Tensor, goal: torch.Tensor) -> MoTContext:
        """The context tokens' keys and values in every layer at each noise level of ``c_noise`` (steps,),
        for obs (batch, obs_tokens, obs_dim) and goal (batch, goal_tokens, goal_dim): one pass over
        (steps x batch) context sequences. Only valid under causal attention (the context then never sees
        the actions)."""
        if self.config.attention != "causal":
            raise ValueError(
                "the context cache needs causal attention: with bidirectional attention the context "
                "tokens attend to the actions, so they change at every step"
            )
        steps, batch = c_noise.shape[0], obs.shape[0]
        sigma_embedding = self.sigma_embedding(c_noise)  # (steps, D)
        # Step-major rows (steps * batch, ...) by expand + flatten (not repeat_interleave): an ONNX graph
        # exported for any batch size keeps the batch symbolic this way.
        rows = sigma_embedding.unsqueeze(1).expand(-1, batch, -1).flatten(0, 1)  # (steps * batch, D)
        prefix = self.config.num_goal_tokens + self.config.num_obs_tokens
        context = torch.cat([self.goal_dropout(self.goal_proj(goal)), self.obs_proj(obs)], dim=1)
        context = context + self.position[:, :prefix]  # (batch, prefix, D)
        context = context.unsqueeze(0).expand(steps, -1, -1, -1).flatten(0, 1)  # (steps * batch, prefix, D)
        x = torch.cat([rows.unsqueeze(1), context], dim=1)  # the noise token first, as in the sequence
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer.context_forward(x, rows, self.context_groups, last=i == len(self.layers) - 1)
            keys.append(k.unflatten(0, (steps, batch)))
            values.append(v.unflatten(0, (steps, batch)))
        return MoTContext(sigma_embedding, keys, values)

    def denoise_with_context(
        self, scaled_action: torch.Tensor, context: MoTContext, step: int
    ) -> torch.Tensor:
        """F for the action tokens (batch, chunk, action_dim) at sampler step ``step`` of ``context``:
        equal to ``forward`` at that step's noise level, without recomputing the context."""
        sigma_embedding = context.sigma_embedding[step : step + 1]  # (1, D)
        x = self.action_proj(scaled_action) + self.position[:, -self.config.chunk_size :]
        for layer, keys, values in zip(self.layers, context.keys, context.values, strict=True):
            x = layer.action_forward(
                x, sigma_embedding, self.action_groups, keys[step], values[step], self.action_mask
            )
        return self.head(self.final_norm(x))
