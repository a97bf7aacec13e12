"""Routing strategies: what each MoE layer routes on, one registered class per variant.

A strategy says what it routes on (``describe``), whether its experts are known before the observation
arrives (``cacheable``), whether they depend on the goal (``uses_goal``: the expert cache is then kept per
goal), whether it has a learned router (and so a balance loss), and which parameters decide it. It builds
the routing context from the network's inputs (one row per sample, or one row for a whole batch that
shares sigma) and turns it into a route (``mode_policy.nn.moe.routes``) for a layer.

Adding a variant = one subclass with ``@register_routing("name")``; ``MoDEConfig(router_input="name")``
then selects it (README "Routing variants", docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from mode_policy.nn.moe.router import Routing, select_experts
from mode_policy.nn.moe.routes import AllExperts, CachedRoute, Route, SharedRoute, TokenRoute

# Strategies read a MoDEConfig and act on an MoELayer; both import this module, so here they are ``Any``.
MoDEConfig = MoELayer = Any

ROUTING_STRATEGIES: dict[str, type[RoutingStrategy]] = {}


def register_routing(name: str) -> Callable[[type[RoutingStrategy]], type[RoutingStrategy]]:
    """Class decorator: make a strategy selectable as ``MoDEConfig(router_input=name)``."""

    def decorate(cls: type[RoutingStrategy]) -> type[RoutingStrategy]:
        if name in ROUTING_STRATEGIES and ROUTING_STRATEGIES[name] is not cls:
            raise ValueError(f"routing {name!r} is already registered ({ROUTING_STRATEGIES[name].__name__})")
        cls.name = name
        ROUTING_STRATEGIES[name] = cls
        return cls

    return decorate


def routing_strategy(name: str) -> type[RoutingStrategy]:
    """The strategy registered as ``name``; an unknown name lists the known ones."""
    if name not in ROUTING_STRATEGIES:
        raise ValueError(f"unknown routing {name!r}; known routing variants: {sorted(ROUTING_STRATEGIES)}")
    return ROUTING_STRATEGIES[name]


class RoutingStrategy:
    """Per-sample routing by default: a learned router on one context row per sample."""

    name: ClassVar[str]
    describe: ClassVar[str] = ""
    cacheable: ClassVar[bool] = True  # experts known per sampler step before the observation arrives
    uses_goal: ClassVar[bool] = False  # the context includes the goal: cached per (goal, step)
    learned_router: ClassVar[bool] = True  # a Router MLP per layer, trained with the balance loss
    samples_in_training: ClassVar[bool] = True  # experts drawn from the router, as the MoDE reference
    dense_with_one_expert: ClassVar[bool] = True  # num_experts=1 is the dense transformer

    def __init__(self, config: MoDEConfig) -> None:
        self.config = config

    # The config --------------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: MoDEConfig) -> None:
        """Raise ValueError naming the field when ``config`` does not suit this variant."""
        if config.stage_boundaries is not None:
            raise ValueError(
                "MoDEConfig.stage_boundaries only applies to router_input='stage'; remove it or set "
                "router_input='stage'"
            )

    # The network side ----------------------------------------------------------------------------------
    def attach(self, network: nn.Module) -> None:
        """Register on the transformer whatever the context needs (buffers); nothing by default."""

    def context(
        self, network: nn.Module, sigma_embedding: torch.Tensor, c_noise: torch.Tensor, goal_tokens: Any
    ) -> torch.Tensor | None:
        """What the routers look at: (rows, D) or (rows,) with one row per sample (or one shared row);
        sigma_embedding (rows, D), c_noise (rows,), goal_tokens (batch, goal_tokens, D)."""
        raise NotImplementedError

    def context_parameters(self, network: nn.Module) -> list[nn.Parameter]:
        """Parameters besides phi(sigma) and the routers that decide the experts (the goal projection)."""
        return []

    # The layer side ------------------------------------------------------------------------------------
    def route_rows(self, layer: MoELayer, context: torch.Tensor) -> Routing:
        """Deterministic routing of each context row (the expert cache and the shared path use it)."""
        return select_experts(layer.router(context), layer.top_k, sample=False)

    def route(
        self,
        layer: MoELayer,
        flat: torch.Tensor,
        context: torch.Tensor | None,
        batch: int,
        generator: torch.Generator | None,
    ) -> Route:
        """The route of one forward call; flat: (batch * tokens, D) the layer's input tokens."""
        sample = layer.training and layer.stochastic_routing and self.samples_in_training
        if context.shape[0] == 1 and not sample:
            return SharedRoute(self.route_rows(layer, context))  # one routing for every token
        tokens = flat.shape[0] // batch
        return TokenRoute(self.route_tokens(layer, context, batch, tokens, sample, generator))

    def route_tokens(
        self,
        layer: MoELayer,
        context: torch.Tensor,
        batch: int,
        tokens: int,
        sample: bool,
        generator: torch.Generator | None,
    ) -> Routing:
        """Per-sample routing expanded to every token; sampling (training) then draws per token."""
        logits = layer.router(context).expand(batch, -1).repeat_interleave(tokens, dim=0)
        return select_experts(logits, layer.top_k, sample=sample, generator=generator)

    def cached_routes(self, layer: MoELayer, context: torch.Tensor, steps: int) -> list[CachedRoute | None]:
        """The routes of ``steps`` sampler steps from their contexts (steps or 1 rows), as host values."""
        routing = self.route_rows(layer, context)
        ids, weights = routing.expert_ids.tolist(), routing.expert_weights.tolist()  # one host transfer
        if len(ids) == 1:  # a context that ignores sigma: the same experts at every step
            ids, weights = ids * steps, weights * steps
        return [CachedRoute(tuple(i), tuple(w)) for i, w in zip(ids, weights, strict=True)]


@register_routing("sigma")
class SigmaRouting(RoutingStrategy):
    """MoDE: the router sees phi(sigma) only, so each sampler step has its experts."""

    describe = "the noise level (phi(sigma))"

    def context(self, network, sigma_embedding, c_noise, goal_tokens):
        return sigma_embedding


def _goal_feature(goal_tokens: torch.Tensor) -> torch.Tensor:
    return goal_tokens.mean(dim=1)  # (batch, D)


@register_routing("task")
class TaskRouting(RoutingStrategy):
    """M3ViT / Edge-MoE: the router sees the goal embedding, so each task has its experts."""

    describe = "the goal (task) embedding"
    uses_goal = True

    def context(self, network, sigma_embedding, c_noise, goal_tokens):
        return _goal_feature(goal_tokens)

    def context_parameters(self, network):
        return list(network.goal_proj.parameters())


@register_routing("sigma_goal")
class SigmaGoalRouting(TaskRouting):
    """The MoDE reference code's ``use_goal_in_routing``: phi(sigma) + the goal embedding."""

    describe = "the noise level and the goal embedding"

    def context(self, network, sigma_embedding, c_noise, goal_tokens):
        return sigma_embedding + _goal_feature(goal_tokens)


@register_routing("token")
class TokenRouting(RoutingStrategy):
    """DiT-MoE: every token is routed on its own hidden state; not cacheable."""

    describe = "each token's hidden state"
    cacheable = False

    def context(self, network, sigma_embedding, c_noise, goal_tokens):
        return None

    def route(self, layer, flat, context, batch, generator):
        sample = layer.training and layer.stochastic_routing
        return TokenRoute(select_experts(layer.router(flat), layer.top_k, sample=sample, generator=generator))


@register_routing("stage")
class StageRouting(RoutingStrategy):
    """eDiff-I: one expert per noise stage, chosen by sigma alone; no router, no balance loss."""

    describe = "the noise stage (hard, by sigma range)"
    learned_router = False
    samples_in_training = False

    @classmethod
    def check_config(cls, config):
        boundaries = config.stage_boundaries
        if not boundaries or any(not (math.isfinite(b) and b > 0) for b in boundaries):
            raise ValueError(
                "MoDEConfig.router_input='stage' needs stage_boundaries: positive sigma values that "
                "split the noise range, e.g. [1.0] for two stages"
            )
        if any(a <= b for a, b in itertools.pairwise(boundaries)):
            raise ValueError(f"MoDEConfig.stage_boundaries must be strictly decreasing, got {boundaries}")
        stages = len(boundaries) + 1
        if config.num_experts != stages or config.top_k != 1 or config.shared_expert:
            raise ValueError(
                f"stage routing with {len(boundaries)} boundaries has {stages} stages, each owning one "
                f"expert: set num_experts={stages}, top_k=1, shared_expert=False (got num_experts="
                f"{config.num_experts}, top_k={config.top_k}, shared_expert={config.shared_expert})"
            )

    def attach(self, network):
        # Compared with c_noise = ln(sigma)/4, computed by the same ops as the preconditioning.
        boundaries = torch.tensor(self.config.stage_boundaries, dtype=torch.float64).log() / 4
        network.register_buffer("stage_c_noise_boundaries", boundaries.float(), persistent=False)

    def context(self, network, sigma_embedding, c_noise, goal_tokens):
        # Stage s owns sigma in [boundary_s, boundary_{s-1}); stage 0 is the noisiest. (rows,) long.
        return (c_noise.reshape(-1, 1) < network.stage_c_noise_boundaries.to(c_noise.dtype)).sum(dim=-1)

    def route_rows(self, layer, context):
        return _hard_routing(context, layer.experts.num_experts)

    def route_tokens(self, layer, context, batch, tokens, sample, generator):
        return _hard_routing(context.expand(batch).repeat_interleave(tokens), layer.experts.num_experts)


@register_routing("fixed")
class FixedRouting(RoutingStrategy):
    """An extracted task model (``extract_task_model``): every layer runs its k experts with constant
    weights, held in the layer's ``fixed_weights`` buffer."""

    describe = "nothing (constant expert weights)"
    learned_router = False
    dense_with_one_expert = False  # a one-expert task model keeps its expert and weight

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        if config.top_k != config.num_experts:
            raise ValueError(
                "router_input='fixed' (an extracted task model) runs all its experts: set top_k=num_experts"
            )

    def context(self, network, sigma_embedding, c_noise, goal_tokens):
        return None

    def route(self, layer, flat, context, batch, generator):
        return AllExperts(layer.fixed_weights)

    def cached_routes(self, layer, context, steps):
        return [None] * steps  # the layer runs its constant weights itself


def _hard_routing(stage: torch.Tensor, num_experts: int) -> Routing:
    """Row i uses expert ``stage[i]`` with weight 1. stage: (rows,) long."""
    probs = torch.nn.functional.one_hot(stage, num_experts).float()
    ids = stage.unsqueeze(-1)
    return Routing(probs, probs, ids, torch.ones(ids.shape, device=stage.device))
