"""Configuration of the MoDE denoiser: a typed dataclass, validated on construction, saved as JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mode_policy.config_io import TaggedConfig, check_positive_int
from mode_policy.nn.moe.routing import ROUTING_STRATEGIES, RoutingStrategy, routing_strategy

ATTENTION_MASKS = ("causal", "bidirectional")
RESIDUAL_VARIANTS = ("prenorm", "reference")
# What goes in and comes out of a denoiser (MoDE or CNN alike): a policy derives these from its data.
INTERFACE_FIELDS = ("action_dim", "chunk_size", "obs_dim", "num_obs_tokens", "goal_dim", "num_goal_tokens")


@dataclass
class MoDEConfig(TaggedConfig):
    """Everything that defines a MoDE denoiser's architecture.

    Expert counting: ``num_experts`` and ``top_k`` count *all* experts, the shared one included. With
    ``shared_expert=True`` one of the ``num_experts`` is always on, and the router picks ``top_k - 1`` of
    the remaining ``num_experts - 1``, so active parameters do not depend on the flag.
    ``num_experts=1`` (with ``top_k=1``) is a dense transformer with one SwiGLU MLP per layer.

    Residual variants (DESIGN.md): ``"prenorm"`` (default) is the paper's
    ``h = x + SA(norm(x) + phi); out = h + MoE(norm(h))``. ``"reference"`` reproduces the released code,
    which replaces the residual stream with its normalized value before the MoE:
    ``h = norm(x + SA(norm(x) + phi)); out = h + MoE(h)``.
    """

    describe: ClassVar[str] = "MoDE transformer denoiser"

    tag_key: ClassVar[str] = "kind"  # the saved config says which denoiser reads it (mode_policy.nn.registry)

    # Interface: what goes in and comes out.
    action_dim: int = 4
    chunk_size: int = 10
    obs_dim: int = 39
    num_obs_tokens: int = 1
    goal_dim: int = 384
    num_goal_tokens: int = 1
    # Transformer.
    width: int = 256
    depth: int = 8
    heads: int = 8
    attention: str = "causal"
    residual: str = "prenorm"
    dropout: float = 0.0
    goal_dropout: float = 0.1
    # Mixture of experts.
    num_experts: int = 4
    top_k: int = 2
    expert_hidden_mult: int = 4
    shared_expert: bool = False
    router_input: str = "sigma"
    # Stage routing only: sigma values splitting the noise range, decreasing; stage 0 owns sigma >= first.
    stage_boundaries: list[float] | None = None
    router_hidden_mult: int = 2
    # Training routes like eval (deterministic top-k): lower held-out loss than the reference's sampled
    # experts on 3 of 3 seeds (benchmarks/RESULTS.md, mode_topk); True reproduces the reference.
    stochastic_routing: bool = False
    load_balance_weight: float = 0.01
    router_z_loss_weight: float = 0.0
    # Diffusion.
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        positive = [
            *INTERFACE_FIELDS,
            "width",
            "depth",
            "heads",
            "num_experts",
            "top_k",
            "expert_hidden_mult",
            "router_hidden_mult",
        ]
        for name in positive:
            check_positive_int("MoDEConfig", name, getattr(self, name))
        if self.width % self.heads:
            raise ValueError(
                f"MoDEConfig.width ({self.width}) must be divisible by heads ({self.heads}); "
                f"try heads={_largest_divisor_at_most(self.width, self.heads)}"
            )
        _check_choice("attention", self.attention, ATTENTION_MASKS)
        _check_choice("residual", self.residual, RESIDUAL_VARIANTS)
        if self.router_input not in ROUTING_STRATEGIES:
            raise ValueError(
                f"MoDEConfig.router_input must be one of {sorted(ROUTING_STRATEGIES)} (the routing "
                f"variants), got {self.router_input!r}"
            )
        self.routing.check_config(self)
        if self.top_k > self.num_experts:
            raise ValueError(
                f"MoDEConfig.top_k ({self.top_k}) cannot exceed num_experts ({self.num_experts})"
            )
        if self.shared_expert and self.top_k < 2:
            raise ValueError(
                "MoDEConfig.shared_expert=True needs top_k >= 2 (the shared expert is one of the top_k "
                "active experts); with top_k=1 use num_experts=1 for a dense model instead"
            )
        if self.shared_expert and self.num_experts < 3:
            raise ValueError(
                "MoDEConfig.shared_expert=True needs num_experts >= 3 (one shared plus at least two to "
                f"route between), got num_experts={self.num_experts}"
            )
        for name in ("dropout", "goal_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"MoDEConfig.{name} must be in [0, 1), got {value}")
        for name in ("load_balance_weight", "router_z_loss_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"MoDEConfig.{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise ValueError(f"MoDEConfig.sigma_data must be > 0, got {self.sigma_data}")

    # Derived quantities -------------------------------------------------------------------------------
    @property
    def routing(self) -> type[RoutingStrategy]:
        """The routing strategy class ``router_input`` names (``mode_policy.nn.moe.routing``)."""
        return routing_strategy(self.router_input)

    @property
    def is_dense(self) -> bool:
        return self.num_experts == 1 and self.routing.dense_with_one_expert

    @property
    def routed_experts(self) -> int:
        """Experts the router chooses between."""
        return self.num_experts - 1 if self.shared_expert else self.num_experts

    @property
    def routed_top_k(self) -> int:
        """Experts the router picks per token."""
        return self.top_k - 1 if self.shared_expert else self.top_k

    @property
    def expert_hidden(self) -> int:
        return self.expert_hidden_mult * self.width

    @property
    def context_tokens(self) -> int:
        """Tokens in front of the action chunk: noise + goal + observation."""
        return 1 + self.num_goal_tokens + self.num_obs_tokens

    @property
    def sequence_length(self) -> int:
        return self.context_tokens + self.chunk_size

    @property
    def cacheable(self) -> bool:
        """True when the experts of a sampler step are known before the observation arrives.

        Sigma and stage routing: per step. Task and sigma+goal routing: per (goal, step). Token routing
        depends on every token's content and cannot be cached.
        """
        return self.is_dense or self.routing.cacheable

    @property
    def routing_uses_goal(self) -> bool:
        return not self.is_dense and self.routing.uses_goal


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"MoDEConfig.{name} must be one of {list(choices)}, got {value!r}")


def _largest_divisor_at_most(number: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if number % d == 0)
