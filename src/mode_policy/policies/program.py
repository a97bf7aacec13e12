"""A policy's whole action chunk as one module of fixed structure: what ONNX export and torch.compile take.

program = policy.chunk_program()                       # MoDE: the sampler unrolled, expert cache baked in
inputs = program.inputs(policy._observation(obs, history=True), goal, program.draw_noise(B, generator))
actions = program(*inputs)                             # (B, chunk_size, action_dim), in the data's units

A program holds only what inference uses (a copy of the policy's modules, for MoDE only the experts some
step runs) and takes every random number as an input (``noise``), drawn by ``draw_noise`` exactly as the
policy itself draws them: a program and its policy give the same actions for the same generator.
Inputs, in ``input_names`` order: the observation features (``observation.state`` (B, n_obs_steps,
state_dim) float32, cameras (B, n_obs_steps, 3, H, W) uint8), ``goal`` (B, goal_dim) float32 (the
instruction embedding) or, for a program whose experts depend on the training task, ``task_index`` (B,)
int64 into ``config.tasks``, and ``noise`` when the policy draws any.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mode_policy.keys import STATE_KEY
from mode_policy.messages import warn

GOAL_INPUT = "goal"
TASK_INDEX_INPUT = "task_index"
NOISE_INPUT = "noise"
ACTION_OUTPUT = "action"


@dataclass(frozen=True)
class NoiseSpec:
    """The random numbers a chunk takes, per row: ``normal`` values of ``shape``, or for ``"uniform+normal"``
    one uniform value then the rest normal (a mixture's expert pick and its draw)."""

    kind: str  # "normal" | "uniform" | "uniform+normal"
    shape: tuple[int, ...]

    def draw(
        self, batch: int, generator: torch.Generator | None, device: Any, dtype: torch.dtype
    ) -> torch.Tensor:
        where = generator.device if generator is not None else device
        if self.kind == "normal":
            noise = torch.randn((batch, *self.shape), generator=generator, device=where, dtype=dtype)
        else:
            noise = torch.rand((batch, 1), generator=generator, device=where, dtype=dtype)
            if self.kind == "uniform+normal":
                rest = torch.randn((batch, self.shape[0] - 1), generator=generator, device=where, dtype=dtype)
                noise = torch.cat([noise, rest], dim=1)
        return noise.to(device)


def task_not_needed(routes_on: str) -> ValueError:
    """The error for a task given to a program that serves every task."""
    return ValueError(
        "a task picks the experts of a goal-routed policy (router_input 'task' or 'sigma_goal'); this "
        f"policy routes on {routes_on}, so one program serves every task: leave the task (--task) out"
    )


class ChunkProgram(nn.Module):
    """Base class: ``forward(*inputs) -> actions``; subclasses set ``observation_keys``, ``noise``, whether
    the task comes as an index (``takes_task_index``) and the shapes in ``input_shapes``."""

    takes_task_index = False
    num_tasks = 0  # the tasks a program that takes a task index knows

    def __init__(self, observation_keys: list[str], noise: NoiseSpec | None) -> None:
        super().__init__()
        self.observation_keys = list(observation_keys)
        self.noise = noise

    @property
    def input_names(self) -> list[str]:
        task = TASK_INDEX_INPUT if self.takes_task_index else GOAL_INPUT
        return [*self.observation_keys, task, *([NOISE_INPUT] if self.noise is not None else [])]

    def input_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """{input: (shape without the batch, dtype)}."""
        raise NotImplementedError

    def draw_noise(self, batch: int, generator: torch.Generator | None, device: Any = "cpu",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor | None:  # fmt: skip
        return None if self.noise is None else self.noise.draw(batch, generator, device, dtype)

    def inputs(
        self,
        observation: Mapping[str, torch.Tensor],
        goal: torch.Tensor | None,
        noise: torch.Tensor | None,
        task_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The positional inputs from checked observations ({key: (B, n_obs_steps, ...)}), the goal (B,
        goal_dim) or task indices (B,), and the noise."""
        values = [observation[key] for key in self.observation_keys]
        values.append(task_index if self.takes_task_index else goal)
        return (*values, noise) if self.noise is not None else tuple(values)

    def example_inputs(self, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs of the right shapes and dtypes (for tracing and checks)."""
        generator = torch.Generator().manual_seed(seed)
        values = []
        for name, (shape, dtype) in self.input_shapes().items():
            if dtype == torch.uint8:
                values.append(torch.randint(0, 256, (batch, *shape), generator=generator, dtype=torch.uint8))
            elif name == TASK_INDEX_INPUT:
                values.append(torch.arange(batch) % self.num_tasks)
            elif name == NOISE_INPUT:
                values.append(self.noise.draw(batch, generator, "cpu", dtype))
            else:
                values.append(torch.randn((batch, *shape), generator=generator, dtype=dtype))
        return tuple(values)

    def compiled(self, **options: Any) -> Any:
        """The program under ``torch.compile``: a callable like the program (here the whole chunk as one
        graph; a diffusion chunk compiles its per-step network instead)."""
        return torch.compile(self, **options)

    def observation_shapes(self, config: Any) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The observation inputs of a policy config: the state and the cameras it reads."""
        shapes = {}
        for key in self.observation_keys:
            if key == STATE_KEY:
                shapes[key] = ((config.n_obs_steps, config.state_dim), torch.float32)
            else:
                shapes[key] = ((config.n_obs_steps, 3, *config.image_hw), torch.uint8)
        return shapes


class CompiledProgram:
    """A program under ``torch.compile``, used while its policy still holds the weights it was built from."""

    def __init__(self, program: ChunkProgram, compiled: Any, policy: nn.Module) -> None:
        self.program = program
        self.compiled = compiled
        self._fingerprint = _fingerprint(policy)
        self._warned = False

    def valid_for(self, policy: nn.Module) -> bool:
        if _fingerprint(policy) == self._fingerprint:
            return True
        if not self._warned:
            warn("the policy's weights changed after compile(): predicting with the eager sampler; call "
                 "compile() again to compile the new weights")  # fmt: skip
            self._warned = True
        return False

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.compiled(*inputs)

    def chunk(
        self,
        policy: Any,
        observation: Mapping[str, torch.Tensor],
        goal: torch.Tensor,
        tasks: list[str],
        generator: torch.Generator | None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The compiled chunk for checked observations, (B, chunk_size, action_dim) in the data's units;
        None where it does not apply: the weights changed since compile(), or a program that takes a task
        index meets an instruction that is not a training task. ``noise``: the program's noise input
        (checked by the caller), else drawn from ``generator``."""
        if not self.valid_for(policy):
            return None
        program, task_index = self.program, None
        if program.takes_task_index:
            known = list(policy.config.tasks)
            if any(task not in known for task in tasks):
                return None
            task_index = torch.tensor([known.index(task) for task in tasks], device=goal.device)
        if noise is None:
            noise = program.draw_noise(len(tasks), generator, goal.device, goal.dtype)
        return self.compiled(*program.inputs(observation, goal, noise, task_index))


def compile_program(policy: nn.Module, program: ChunkProgram, **options: Any) -> CompiledProgram | None:
    """``torch.compile`` of ``program`` (inductor; CUDA graphs on a GPU), compiled now on a batch of one.
    None, with a warning, when this machine cannot compile (no C++ compiler, an unsupported backend)."""
    device = next(policy.parameters()).device
    if device.type == "cuda":
        options.setdefault("mode", "reduce-overhead")
    program = program.to(device)
    compiled = program.compiled(**options)
    try:
        with torch.no_grad():
            compiled(*(value.to(device) for value in program.example_inputs(batch=1)))
    except Exception as error:  # the compiler stack raises many kinds; eager always works
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        warn(f"torch.compile could not compile this policy here ({reason}); it stays eager")
        return None
    return CompiledProgram(program, compiled, policy)


def _fingerprint(module: nn.Module) -> tuple:
    """Identity and version of every tensor: any in-place update or replacement changes it."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))
