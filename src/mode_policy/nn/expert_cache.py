"""Expert caching: with sigma-only routing and a fixed sampler schedule, the experts each layer uses at each
sampler step are known before any observation arrives. The cache stores, per (step, layer), the chosen
expert indices and weights as host values, plus phi(sigma) per step, so inference runs exactly those
experts as dense matmuls on views of the live weights: no router, no dispatch, no copy of any expert.

Pitfalls of the reference implementation that this avoids (DESIGN.md):
- keyed by sampler step (an int), never by a float sigma, so it cannot miss silently or depend on batch;
- an unknown step raises instead of falling back to routing;
- no fused per-step copies of expert weights (memory stays O(steps x layers x k) numbers);
- stale entries are rebuilt when the routing parameters change (optimizer step, load_state_dict, EMA swap);
- refuses models whose routing depends on tokens.
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


class ExpertCache:
    """Per-step routing of a sigma-routed MoDE network for one sampler schedule.

    ``sigmas`` is the sampler's schedule (decreasing, may end in 0); step j of the cache is the model
    evaluation at ``sigmas[j]``, which is what ``mode_policy.diffusion.sample`` passes as ``step``.
    """

    def __init__(self, network: MoDETransformer, sigmas: torch.Tensor) -> None:
        config = network.config
        if not config.cacheable:
            raise ExpertCacheError(
                f"cannot cache experts of a model with router_input={config.router_input!r}: "
                "its experts depend on each token's content, so they are not known before the observation "
                "arrives. Sample without a cache (use_cache=False), or train a sigma-routed model "
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
        self.builds = 0
        self._steps: list[CachedStep] = []
        self._fingerprint: tuple = ()
        self._checksum: list[float] = []
        self.rebuild()

    # Building ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def rebuild(self) -> None:
        network = self.network
        reference = next(network.parameters())
        sigmas = self.sigmas[: self.num_steps].to(device=reference.device, dtype=reference.dtype)
        sigma_embedding = network.sigma_embedding(sigmas.log() / 4)  # (steps, D)
        per_layer: list[list[CachedRoute | None]] = []
        for block in network.blocks:
            if block.moe.router is None:
                per_layer.append([None] * self.num_steps)
                continue
            routing = block.moe.route_sigma(sigma_embedding)
            # One host transfer per layer at build time; none at inference.
            ids, weights = routing.expert_ids.tolist(), routing.expert_weights.tolist()
            per_layer.append([CachedRoute(tuple(i), tuple(w)) for i, w in zip(ids, weights, strict=True)])
        self._steps = [
            CachedStep(sigma_embedding[j : j + 1].clone(), tuple(layer[j] for layer in per_layer))
            for j in range(self.num_steps)
        ]
        self._fingerprint = self._identity_fingerprint()
        self._checksum = self._content_checksum()
        self.builds += 1

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

    def step(self, index: int) -> CachedStep:
        """The cached routing for the model evaluation at ``sigmas[index]``."""
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
        return self._steps[index]

    def matches(self, sigmas: torch.Tensor) -> bool:
        """True when ``sigmas`` is the schedule this cache was built for (exact, no tolerance)."""
        sigmas = torch.as_tensor(sigmas)
        return sigmas.shape == self.sigmas.shape and torch.equal(
            sigmas.detach().to(self.sigmas.device, self.sigmas.dtype), self.sigmas
        )

    def expert_ids(self) -> list[list[tuple[int, ...] | None]]:
        """[step][layer] -> the routed experts used (None for dense layers); handy for usage plots."""
        return [[None if r is None else r.expert_ids for r in s.routes] for s in self._steps]

    def memory_bytes(self) -> int:
        """Bytes this cache holds: its phi(sigma) tensors, schedule and the Python route records."""
        total = self.sigmas.numel() * self.sigmas.element_size()
        for cached in self._steps:
            total += cached.sigma_embedding.numel() * cached.sigma_embedding.element_size()
            total += sys.getsizeof(cached.routes)
            for route in cached.routes:
                if route is not None:
                    total += sys.getsizeof(route) + sys.getsizeof(route.expert_ids)
                    total += sys.getsizeof(route.expert_weights)
                    total += sum(sys.getsizeof(v) for v in (*route.expert_ids, *route.expert_weights))
        return total
