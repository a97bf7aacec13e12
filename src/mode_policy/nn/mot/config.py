"""Configuration of the Mixture-of-Transformers denoiser: a typed dataclass, validated, saved as JSON.

The interface fields (``action_dim`` ... ``num_goal_tokens``, ``sigma_data``, ``goal_dropout``) mean the
same as in :class:`mode_policy.nn.config.MoDEConfig`, so a policy can swap one denoiser for the other.
The saved JSON carries ``"kind": "mot"`` (``mode_policy.nn.registry``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from mode_policy.config_io import TaggedConfig, check_positive_int
from mode_policy.nn.config import ATTENTION_MASKS, INTERFACE_FIELDS

# The token kinds of the sequence, in its order: [noise token, goal tokens, observation tokens, actions].
MODALITIES = ("noise", "goal", "obs", "action")


def default_token_groups() -> list[str]:
    return ["noise+goal+obs", "action"]  # pi0's split: the context, and the action expert


@dataclass
class MoTConfig(TaggedConfig):
    """Mixture-of-Transformers (Liang et al. 2024): every non-embedding parameter is per token group.

    ``token_groups`` lists the groups, each a ``+``-joined set of the modalities ``noise``, ``goal``,
    ``obs`` and ``action``; every modality is in exactly one group. Each group has its own attention
    norm, query/key/value and output projections, query/key norms, feed-forward norm and SwiGLU
    feed-forward (hidden ``ffn_hidden_mult * width``) in every layer; self-attention runs over the whole
    sequence. The default, context vs actions, is the separate "action expert" weights of pi0; one group
    is a dense transformer. There is no router: which weights a token uses is fixed by its position, so a
    token runs through one group's weights (the parameters counted as active).

    The defaults (width 128, depth 4, SwiGLU hidden 8 x width) match the default MoDE policy's denoiser
    at equal active parameters, which is what the routing comparison sets against each other.
    """

    describe: ClassVar[str] = "Mixture-of-Transformers denoiser"

    tag_key: ClassVar[str] = "kind"

    # Interface: what goes in and comes out (same meaning as MoDEConfig).
    action_dim: int = 4
    chunk_size: int = 10
    obs_dim: int = 39
    num_obs_tokens: int = 1
    goal_dim: int = 384
    num_goal_tokens: int = 1
    # Transformer.
    width: int = 128
    depth: int = 4
    heads: int = 4
    attention: str = "causal"
    dropout: float = 0.0
    goal_dropout: float = 0.1
    ffn_hidden_mult: int = 8
    token_groups: list[str] = field(default_factory=default_token_groups)
    # Diffusion.
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        for name in (*INTERFACE_FIELDS, "width", "depth", "heads", "ffn_hidden_mult"):
            check_positive_int("MoTConfig", name, getattr(self, name))
        if self.width % self.heads:
            raise ValueError(f"MoTConfig.width ({self.width}) must be divisible by heads ({self.heads})")
        if self.attention not in ATTENTION_MASKS:
            raise ValueError(
                f"MoTConfig.attention must be one of {list(ATTENTION_MASKS)}, got {self.attention!r}"
            )
        for name in ("dropout", "goal_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"MoTConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise ValueError(f"MoTConfig.sigma_data must be > 0, got {self.sigma_data}")
        groups = self.token_groups
        members = (
            [name for group in groups for name in str(group).split("+")]
            if isinstance(groups, (list, tuple))
            else []
        )
        if sorted(members) != sorted(MODALITIES):
            raise ValueError(
                "MoTConfig.token_groups must put each of noise, goal, obs, action in exactly one group, "
                f"e.g. ['noise+goal+obs', 'action'] or ['noise', 'goal+obs', 'action']; got {groups!r}"
            )
        self.token_groups = [str(group) for group in groups]

    @property
    def group_of_modality(self) -> dict[str, int]:
        return {name: g for g, group in enumerate(self.token_groups) for name in group.split("+")}

    def token_group_ids(self) -> list[int]:
        """The group of each token of the sequence (noise, goal tokens, observation tokens, actions)."""
        counts = {
            "noise": 1,
            "goal": self.num_goal_tokens,
            "obs": self.num_obs_tokens,
            "action": self.chunk_size,
        }
        groups = self.group_of_modality
        return [groups[name] for name in MODALITIES for _ in range(counts[name])]

    @property
    def ffn_hidden(self) -> int:
        return self.ffn_hidden_mult * self.width
