"""Expert caching: when routing does not look at tokens (sigma, stage or task routing) and the sampler
schedule is fixed, the experts each layer uses at each sampler step are known before any observation
arrives. The cache stores, per (step, layer), the chosen expert indices and weights as host values, plus
phi(sigma) per step, so inference runs exactly those experts as dense matmuls on views of the live
weights: no router, no dispatch, no copy of any expert.

Pitfalls of the reference implementation that this avoids (DESIGN.md):
- keyed by sampler step (an int), never by a float sigma, so it cannot miss silently or depend on batch;
- an unknown step raises instead of falling back to routing;
- no fused per-step copies of expert weights (memory stays O(steps x layers x k) numbers);
- stale entries are rebuilt when the routing parameters change (optimizer step, load_state_dict, EMA swap);
- refuses models whose routing depends on tokens; goal-routed models get one table per goal.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch

from mode_policy.nn.moe.layer import CachedRoute
from mode_policy.nn.transformer import CachedStep

if TYPE_CHECKING:
    from mode_policy.nn.transformer import MoDETransformer


class ExpertCacheError(RuntimeError):
    """Raised when an expert cache cannot be built or used as asked."""


def can_cache_experts(denoiser: torch.nn.Module) -> bool:
    """Whether ``denoiser`` has an expert cache: a MoDE denoiser whose routing is known before the
    observation (every variant but token routing). The CNN baseline has none."""
    return callable(getattr(denoiser, "cache_experts", None)) and bool(denoiser.config.cacheable)


class ExpertCache:
    """Per-step routing of a MoDE network for one sampler schedule.

    ``sigmas`` is the sampler's schedule (decreasing, may end in 0); step j of the cache is the model
    evaluation at ``sigmas[j]``, which is what ``mode_policy.diffusion.sample`` passes as ``step``.
    Sigma and stage routing: one table of steps. Task and sigma+goal routing: one table per goal, keyed by
    the goal tensor's exact bytes (equal goals share a table, a new goal builds one; no tolerance).
    """

    max_goals = 4096  # distinct goals kept (each table is a few KiB); the oldest is dropped beyond this

    def __init__(self, network: MoDETransformer, sigmas: torch.Tensor) -> None:
        config = network.config
        if not config.cacheable:
            raise ExpertCacheError(
                f"cannot cache experts of a model with router_input={config.router_input!r}: its experts "
                f"depend on {config.routing.describe}, which is not known before the observation arrives. "
                "Sample without a cache (use_cache=False), or train a sigma-routed model "
                "(router_input='sigma')."
            )
        sigmas = torch.as_tensor(sigmas).detach()
        if sigmas.dim() != 1 or sigmas.numel() == 0 or not torch.isfinite(sigmas).all():
            raise ExpertCacheError(f"sigmas must be a finite 1-D schedule, got shape {tuple(sigmas.shape)}")
        # A trailing 0 (the sampler's end point) is allowed: the model is never evaluated there.
        num_steps = sigmas.numel() - int(sigmas[-1] == 0)
        if num_steps == 0 or (sigmas[:num_steps] <= 0).any():
            raise ExpertCacheError(f"sigmas must be positive except for a trailing 0, got {sigmas.tolist()}")
        self.network = network
        self.sigmas = sigmas.clone()
        self.num_steps = num_steps
        self.uses_goal = config.routing_uses_goal
        self.builds = 0
        self._steps: list[CachedStep] = []  # routing that needs no goal
        self._goal_steps: dict[bytes, list[CachedStep]] = {}
        self._goals: dict[bytes, torch.Tensor] = {}
        self._fingerprint: tuple = ()
        self._checksum: list[float] = []
        self.rebuild()

    # Building ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def rebuild(self) -> None:
        """Recompute every table from the current weights (done automatically when they change)."""
        self._steps = [] if self.uses_goal else self._build_steps(None)
        self._goal_steps = {key: self._build_steps(goal) for key, goal in self._goals.items()}
        self._fingerprint = self._identity_fingerprint()
        self._checksum = self._content_checksum()
        self.builds += 1

    def _build_steps(self, goal: torch.Tensor | None) -> list[CachedStep]:
        network = self.network
        reference = next(network.parameters())
        sigmas = self.sigmas[: self.num_steps].to(device=reference.device, dtype=reference.dtype)
        c_noise = sigmas.log() / 4
        sigma_embedding = network.sigma_embedding(c_noise)  # (steps, D)
        goal_tokens = (  # (1, goal_tokens, D)
            None
            if goal is None
            else network.goal_proj(goal.to(reference.device, reference.dtype)).unsqueeze(0)
        )
        route_context = network.route_context(sigma_embedding, c_noise, goal_tokens)  # (steps or 1, ...)
        per_layer: list[list[CachedRoute | None]] = [
            [None] * self.num_steps
            if block.moe.dense is not None
            else network.routing.cached_routes(block.moe, route_context, self.num_steps)
            for block in network.blocks
        ]
        return [
            CachedStep(sigma_embedding[j : j + 1].clone(), tuple(layer[j] for layer in per_layer))
            for j in range(self.num_steps)
        ]

    def _identity_fingerprint(self) -> tuple:
        # Tensor versions move on every in-place update that autograd can see (optimizer steps, copy_ under
        # no_grad, load_state_dict); ids and data pointers catch replaced parameters and .to() moves.
        return tuple((id(p), p.data_ptr(), p._version) for p in self.network.routing_parameters())

    def _content_checksum(self) -> list[float]:
        # Writes through `param.data` bypass version counters (a common EMA idiom); a checksum of the
        # routing parameters, checked once per bound sampling call, catches those.
        params = self.network.routing_parameters()
        return torch.stack([p.detach().double().sum() for p in params]).tolist()

    # Using ------------------------------------------------------------------------------------------
    def refresh(self, check_contents: bool = True) -> None:
        """Rebuild if the routing parameters changed since the last build."""
        if self._identity_fingerprint() != self._fingerprint or (
            check_contents and self._content_checksum() != self._checksum
        ):
            self.rebuild()

    @staticmethod
    def goal_key(goal: torch.Tensor) -> bytes:
        """The exact identity of one sample's goal (goal_tokens, goal_dim): dtype, shape and bytes."""
        goal = goal.detach()
        header = f"{goal.dtype}{tuple(goal.shape)}".encode()
        return header + goal.cpu().contiguous().numpy().tobytes()

    def add_goal(self, goal: torch.Tensor) -> bytes:
        """Build (or reuse) the table for one goal (goal_tokens, goal_dim); returns its key for ``step``."""
        key = self.goal_key(goal)
        if key not in self._goal_steps:
            if len(self._goals) >= self.max_goals:
                oldest = next(iter(self._goals))
                del self._goals[oldest], self._goal_steps[oldest]
            self._goals[key] = goal.detach().clone()
            with torch.no_grad():
                self._goal_steps[key] = self._build_steps(self._goals[key])
        return key

    def step(self, index: int, goal_key: bytes | None = None) -> CachedStep:
        """The cached routing for the model evaluation at ``sigmas[index]`` (and the goal of ``goal_key``)."""
        if not 0 <= index < self.num_steps:
            raise ExpertCacheError(
                f"step {index} is outside this expert cache, built for {self.num_steps} sampler steps; build "
                "a cache for the schedule you sample with (denoiser.cache_experts(sigmas))"
            )
        if self.network.training:
            raise ExpertCacheError(
                "the expert cache holds inference routing; call .eval() on the model before sampling with it"
            )
        self.refresh(check_contents=False)
        if not self.uses_goal:
            return self._steps[index]
        if goal_key is None or goal_key not in self._goal_steps:
            raise ExpertCacheError(
                "this model routes on the goal: register each goal with cache.add_goal(goal) and pass the "
                "key it returns (denoiser.sample_actions does this for you)"
            )
        return self._goal_steps[goal_key][index]

    def matches(self, sigmas: torch.Tensor) -> bool:
        """True when ``sigmas`` is the schedule this cache was built for (exact, no tolerance)."""
        sigmas = torch.as_tensor(sigmas)
        return sigmas.shape == self.sigmas.shape and torch.equal(
            sigmas.detach().to(self.sigmas.device, self.sigmas.dtype), self.sigmas
        )

    def expert_ids(self, goal_key: bytes | None = None) -> list[list[tuple[int, ...] | None]]:
        """[step][layer] -> the routed experts used (None for dense layers); handy for usage plots."""
        steps = self._goal_steps[goal_key] if self.uses_goal else self._steps
        return [[None if r is None else r.expert_ids for r in s.routes] for s in steps]

    def memory_bytes(self) -> int:
        """Bytes this cache holds: its phi(sigma) tensors, schedule, goals and the Python route records."""
        total = self.sigmas.numel() * self.sigmas.element_size()
        tables = [self._steps, *self._goal_steps.values()]
        total += sum(goal.numel() * goal.element_size() for goal in self._goals.values())
        for cached in (step for table in tables for step in table):
            total += cached.sigma_embedding.numel() * cached.sigma_embedding.element_size()
            total += sys.getsizeof(cached.routes)
            for route in cached.routes:
                if route is not None:
                    total += sys.getsizeof(route) + sys.getsizeof(route.expert_ids)
                    total += sys.getsizeof(route.expert_weights)
                    total += sum(sys.getsizeof(v) for v in (*route.expert_ids, *route.expert_weights))
        return total
