"""The VDD student's chunk program: normalisation in, one network call, the expert pick, de-normalisation
out. Its random numbers (the expert pick, and for ``action_mode="sample"`` the draw) are the ``noise``
input, drawn as the policy draws them (``mode_policy.policies.vdd.mixture.act_noise``)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from mode_policy.keys import STATE_KEY
from mode_policy.policies.program import GOAL_INPUT, NOISE_INPUT, ChunkProgram
from mode_policy.policies.vdd.mixture import act_noise_spec


class MixtureChunk(ChunkProgram):
    def __init__(self, policy: Any) -> None:
        config = policy.config
        super().__init__(config.observation_keys, act_noise_spec(config.action_mode, config.flat_action_dim))
        self.policy = copy.deepcopy(policy).eval()
        self.config = config

    def input_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        goal_dim = self.policy.language_encoder.dim
        shapes = {**self.observation_shapes(self.config), GOAL_INPUT: ((goal_dim,), torch.float32)}
        if self.noise is not None:
            shapes[NOISE_INPUT] = (self.noise.shape, torch.float32)
        return shapes

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        values = dict(zip(self.input_names, inputs, strict=True))
        policy, config = self.policy, self.config
        obs = policy.normalizer.normalize(STATE_KEY, values[STATE_KEY])
        params = policy.mixture(obs, values[GOAL_INPUT], need_scale=config.action_mode == "sample")
        flat = params.act_with_noise(config.action_mode, values.get(NOISE_INPUT))
        return policy._to_data_units(flat.view(flat.shape[0], config.chunk_size, config.action_dim))
