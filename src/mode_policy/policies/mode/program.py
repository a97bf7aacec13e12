"""The MoDE policy's chunk program: normalisation in, the sampler unrolled over the fixed schedule, each
step's experts baked in, de-normalisation out (``mode_policy.policies.program``).

With an expert cache (every routing but token routing) each step runs exactly its cached experts: the
routers are gone, and only the experts some step uses are kept, each once (``SelectedExperts``), shared by
all steps. ``fuse_experts`` runs a step's experts as one wide SwiGLU (for graphs that fold the
concatenated weights: ONNX Runtime). Goal routing (task, sigma_goal) makes a program one task's (its
experts baked in, Edge-MoE's per-task model) or, without a task, every training task's: it then takes a
task index, and a table of each task's expert weights per step picks the experts. Token routing keeps its
routers and runs every expert with gate weights (static shapes); the CNN baseline (no experts to choose)
is its network, unrolled. Mixture-of-Transformers keeps its context cache (causal attention): the program
encodes the context tokens of every step in one batched pass at its start, and each step runs only the
action tokens against them.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from mode_policy.diffusion.samplers import SAMPLERS
from mode_policy.keys import STATE_KEY
from mode_policy.nn.expert_cache import can_cache_experts
from mode_policy.nn.moe.experts import SelectedExperts
from mode_policy.nn.moe.routes import CachedRoute, DenseTokenRoute, FusedRoute, SampleGatedRoute, TensorRoute
from mode_policy.nn.mot.transformer import MoTContext
from mode_policy.nn.transformer import CachedStep
from mode_policy.policies.program import (
    GOAL_INPUT,
    NOISE_INPUT,
    TASK_INDEX_INPUT,
    ChunkProgram,
    NoiseSpec,
    task_not_needed,
)

# Samplers that draw no noise of their own: a chunk is then a function of its inputs.
DETERMINISTIC_SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m")


class DiffusionChunk(ChunkProgram):
    """policy: a MoDEPolicy (left untouched: the program holds a copy). goal: (goal_dim,) embedding of the
    one task a goal-routed program (task, sigma_goal) is for; without it such a program takes a task index
    into ``config.tasks``."""

    def __init__(self, policy: Any, *, goal: torch.Tensor | None = None, fuse_experts: bool = False) -> None:
        config = policy.config
        super().__init__(config.observation_keys, NoiseSpec("normal", (config.chunk_size, config.action_dim)))
        if config.sampler not in DETERMINISTIC_SAMPLERS:
            raise ValueError(
                f"the {config.sampler!r} sampler draws noise at every step, so a chunk is not a fixed "
                f"program; programs (export, compile) take the deterministic samplers "
                f"{list(DETERMINISTIC_SAMPLERS)}"
            )
        self.policy = copy.deepcopy(policy).eval()  # the language encoder is shared, not copied
        self.config = config
        sigmas = config.sampling_sigmas(dtype=policy.dtype, device=policy.device)
        self.sigma_values = sigmas.double().tolist()  # what the sampler computes its coefficients from
        self._gated_layers: dict[int, tuple[int, ...]] = {}  # all-tasks program: layer -> its experts
        self._routes = self._bake(sigmas, goal, fuse_experts)
        self._gates = self._gate_tensors()
        # Mixture-of-Transformers' context cache: the network's noise input at every step, encoded per chunk
        self._context_cache = self.policy.denoiser.sampling_cache == "context"
        if self._context_cache:
            levels = sigmas[sigmas > 0]
            self.register_buffer("context_c_noise", self.policy.denoiser.context_c_noise(levels))
        self.compiled_step: Any = None  # torch.compile of ``tensor_step``, set by ``compiled``

    def _bake(self, sigmas: torch.Tensor, goal: torch.Tensor | None, fuse: bool) -> list[tuple] | None:
        """Per step, the routes of every layer (and phi(sigma) as a buffer); None for a denoiser without
        experts (the CNN, Mixture-of-Transformers)."""
        denoiser = self.policy.denoiser
        network = denoiser.network
        if not hasattr(network, "routing"):
            if goal is not None:
                raise task_not_needed(f"nothing (the {denoiser.config.describe} has no experts)")
            return None
        if goal is not None and (network.config.is_dense or not network.routing.uses_goal):
            raise task_not_needed(
                "nothing (a dense model)" if network.config.is_dense else network.routing.describe
            )
        steps = len(self.sigma_values) - 1
        with torch.no_grad():
            phi = network.sigma_embedding(sigmas[:steps].log() / 4)  # (steps, D)
        for j in range(steps):
            self.register_buffer(f"phi_{j}", phi[j : j + 1].clone())
        if not can_cache_experts(denoiser):  # token routing: routers stay, every expert runs
            return [tuple(_dense_route(block.moe) for block in network.blocks)] * steps
        return self._cached_routes(denoiser, sigmas, goal, fuse)

    def _step_options(
        self, step: int, task_index: torch.Tensor | None, context: MoTContext | None
    ) -> dict[str, Any]:
        """The denoiser's options at ``step``; built per call so that they follow the module's device."""
        if context is not None:
            return {"context": context, "step": step}
        if self._routes is None:
            return {}
        routes = self._routes[step]
        if self._gated_layers:  # each sample's task picks its row of the layer's gate table
            routes = tuple(
                SampleGatedRoute(ids, getattr(self, f"gates_{layer}")[step][task_index])
                if (ids := self._gated_layers.get(layer)) is not None
                else route
                for layer, route in enumerate(routes)
            )
        return {"cached_step": CachedStep(getattr(self, f"phi_{step}"), routes)}

    def _cached_routes(self, denoiser: Any, sigmas: torch.Tensor, goal: torch.Tensor | None, fuse: bool):
        cache = denoiser.cache_experts(sigmas)
        goal_shape = (denoiser.config.num_goal_tokens, denoiser.config.goal_dim)
        uses_goal = cache.uses_goal and not denoiser.config.is_dense
        if uses_goal and goal is None:
            return self._all_task_routes(cache, goal_shape)
        key = cache.add_goal(goal.reshape(goal_shape)) if uses_goal else None
        steps = [cache.step(j, key) for j in range(cache.num_steps)]
        for layer, block in enumerate(denoiser.network.blocks):
            if block.moe.dense is not None or steps[0].routes[layer] is None:
                continue  # dense, or constant weights of an extracted task model (it keeps its experts)
            used = {e for step in steps for e in step.routes[layer].expert_ids}
            block.moe.experts = SelectedExperts(block.moe.experts, sorted(used))
            block.moe.router = None
        route = FusedRoute if fuse else CachedRoute
        return [
            tuple(None if r is None else route(r.expert_ids, r.expert_weights) for r in step.routes)
            for step in steps
        ]

    def _all_task_routes(self, cache: Any, goal_shape: tuple[int, int]) -> list[tuple]:
        """Every training task's cached routes as per-layer gate tables ``gates_{layer}`` (steps, tasks,
        experts the layer keeps); the program then takes ``task_index`` and looks its goal up too."""
        tasks = list(self.config.tasks)
        if not tasks:
            raise ValueError(
                "this policy routes on the goal and knows no training tasks (config.tasks is empty): pass "
                "the task to export, e.g. --task 'open the drawer'"
            )
        goals = self.policy._goal(tasks)  # (tasks, goal_dim)
        self.register_buffer("task_goals", goals.clone())
        self.takes_task_index, self.num_tasks = True, len(tasks)
        keys = [cache.add_goal(g.reshape(goal_shape)) for g in goals]
        per_task = [[cache.step(j, key).routes for j in range(cache.num_steps)] for key in keys]
        for layer, block in enumerate(self.policy.denoiser.network.blocks):
            if block.moe.dense is not None:
                continue
            used = sorted({e for steps in per_task for routes in steps for e in routes[layer].expert_ids})
            gates = torch.zeros(cache.num_steps, len(tasks), len(used), dtype=goals.dtype)
            for task, steps in enumerate(per_task):
                for step, routes in enumerate(steps):
                    for e, weight in zip(routes[layer].expert_ids, routes[layer].expert_weights, strict=True):
                        gates[step, task, used.index(e)] = weight
            self.register_buffer(f"gates_{layer}", gates.to(goals.device))
            self._gated_layers[layer] = tuple(used)
            block.moe.experts = SelectedExperts(block.moe.experts, used)
            block.moe.router = None
        return [(None,) * len(self.policy.denoiser.network.blocks)] * cache.num_steps

    # One graph for every step (torch.compile) ----------------------------------------------------------
    def _gate_tensors(self) -> dict[tuple[int, int], str]:
        """Each cached route's gate weights as a buffer ``route_gates_{step}_{layer}`` (k,)."""
        names = {}
        for step, routes in enumerate(self._routes or []):
            for layer, route in enumerate(routes):
                if isinstance(route, CachedRoute | FusedRoute):
                    names[step, layer] = f"route_gates_{step}_{layer}"
                    self.register_buffer(names[step, layer], torch.tensor(route.expert_weights))
        return names

    def step_tensors(
        self, step: int, task_index: torch.Tensor | None, context: MoTContext | None = None
    ) -> list[list[torch.Tensor]]:
        """What differs between sampler steps besides sigma and phi, as tensors, per layer: a cached route's
        experts' weights and its gates; an all-tasks layer's gates (B, experts); the context's keys and
        values of the step (1, batch, heads, context tokens, head_dim) under a context cache; nothing
        otherwise."""
        if context is not None:
            step_of = slice(step, step + 1)  # the step's context, as a context of one step
            return [[k[step_of], v[step_of]] for k, v in zip(context.keys, context.values, strict=True)]
        tensors = []
        for layer, route in enumerate(self._routes[step] if self._routes else []):
            if layer in self._gated_layers:
                tensors.append([getattr(self, f"gates_{layer}")[step][task_index]])
            elif isinstance(route, CachedRoute | FusedRoute):
                experts = self.policy.denoiser.network.blocks[layer].moe.experts
                tensors.append([
                    *(experts.w_in[str(e)] for e in route.expert_ids),
                    *(experts.w_out[str(e)] for e in route.expert_ids),
                    getattr(self, self._gates[step, layer]),
                ])  # fmt: skip
            else:
                tensors.append([])
        return tensors

    def tensor_step(self, x: torch.Tensor, sigma: torch.Tensor, phi: torch.Tensor | None, obs: torch.Tensor,
                    goal: torch.Tensor, layer_tensors: list[list[torch.Tensor]]) -> torch.Tensor:  # fmt: skip
        """D(x; sigma) of any step, everything that differs between steps given as tensors (``step_tensors``):
        what ``torch.compile`` compiles once for the whole schedule. Under a context cache ``phi`` and
        ``layer_tensors`` are the step's slice of the context."""
        if self._context_cache:
            keys, values = ([tensors[i] for tensors in layer_tensors] for i in (0, 1))
            return self.policy.denoiser(x, sigma, obs, goal, context=MoTContext(phi, keys, values), step=0)
        if self._routes is None:
            return self.policy.denoiser(x, sigma, obs, goal)
        routes = []
        for layer, (template, tensors) in enumerate(zip(self._routes[0], layer_tensors, strict=True)):
            if layer in self._gated_layers:
                routes.append(SampleGatedRoute(self._gated_layers[layer], tensors[0]))
            elif isinstance(template, CachedRoute | FusedRoute):
                k = len(template.expert_ids)
                routes.append(TensorRoute(tuple(tensors[:k]), tuple(tensors[k : 2 * k]), tensors[2 * k]))
            else:
                routes.append(template)  # a token route (routers in the graph) or None (dense, fixed)
        return self.policy.denoiser(x, sigma, obs, goal, cached_step=CachedStep(phi, tuple(routes)))

    def compiled(self, **options: Any) -> DiffusionChunk:
        """The program with ``tensor_step`` under ``torch.compile`` (one graph for every step; the sampler's
        few operations between steps stay eager)."""
        self.compiled_step = torch.compile(self.tensor_step, **options)
        return self

    def _denoise(self, x: torch.Tensor, step: int, obs: torch.Tensor, goal: torch.Tensor,
                 task_index: torch.Tensor | None, context: MoTContext | None) -> torch.Tensor:  # fmt: skip
        if self.compiled_step is not None:
            sigma = torch.tensor(self.sigma_values[step], dtype=x.dtype, device=x.device)
            if context is not None:
                phi = context.sigma_embedding[step : step + 1]  # (1, D)
            else:
                phi = getattr(self, f"phi_{step}", None)
            return self.compiled_step(x, sigma, phi, obs, goal, self.step_tensors(step, task_index, context))
        options = self._step_options(step, task_index, context)
        return self.policy.denoiser(x, self.sigma_values[step], obs, goal, **options)

    def input_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        config = self.config
        task = (
            {TASK_INDEX_INPUT: ((), torch.int64)}
            if self.takes_task_index
            else {GOAL_INPUT: ((self.policy.language_encoder.dim,), torch.float32)}
        )
        return {
            **self.observation_shapes(config),
            **task,
            NOISE_INPUT: ((config.chunk_size, config.action_dim), torch.float32),
        }

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        values = dict(zip(self.input_names, inputs, strict=True))
        policy, config = self.policy, self.config
        task_index = values.get(TASK_INDEX_INPUT)  # (B,) int64, or None: the goal is an input
        goal = values[GOAL_INPUT] if task_index is None else self.task_goals[task_index]
        images = {key: values[key] for key in config.image_keys}
        obs = policy._obs_tokens(values.get(STATE_KEY), images, goal)  # (B, obs tokens, obs_dim)
        context = (
            policy.denoiser.encode_context(obs, goal, self.context_c_noise) if self._context_cache else None
        )

        def denoise(x: torch.Tensor, step: int, sigma_scale: float = 1.0) -> torch.Tensor:
            return self._denoise(x, step, obs, goal, task_index, context)

        x = values[NOISE_INPUT] * self.sigma_values[0]
        x = SAMPLERS[config.sampler](denoise, x, self.sigma_values, generator=None, report=_ignore)
        return policy._to_data_units(x)


def _dense_route(layer: Any) -> DenseTokenRoute | None:
    return None if layer.dense is not None else DenseTokenRoute(layer.router, layer.top_k)


def _ignore(*args: Any) -> None:
    """The samplers' per-step report, unused in a program."""
