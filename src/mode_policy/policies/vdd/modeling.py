"""VDDPolicy: the teacher's normaliser and language encoder + a one-step mixture of Gaussian experts.

student = VDDPolicy.from_teacher(teacher, num_experts=4)        # shares the teacher's encoder and stats
chunk = student.predict_action_chunk({"observation.state": s, "task": [instruction]})   # one network call
student.save_pretrained("run/policy"); student = VDDPolicy.from_pretrained("run/policy")

Same public interface as ``MoDEPolicy`` (predict_action_chunk, select_action, reset, save_pretrained,
from_pretrained), so ``mode_policy.evaluation.evaluate`` runs it unchanged. Acting (``action_mode``):
"mean" samples an expert from the gating and returns its mean (VDD's reference agent, non-greedy),
"greedy" returns the mean of the most likely expert, "sample" a full draw from the mixture.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mode_policy.keys import STATE_KEY
from mode_policy.nn.encoders.language import LanguageEncoder
from mode_policy.policies.base import ChunkingPolicy
from mode_policy.policies.inputs import instructions
from mode_policy.policies.program import task_not_needed
from mode_policy.policies.registry import register_policy
from mode_policy.policies.vdd.configuration import VDDPolicyConfig
from mode_policy.policies.vdd.mixture import MixtureParams
from mode_policy.policies.vdd.network import VDDNetwork
from mode_policy.policies.vdd.program import MixtureChunk


@register_policy("vdd")
class VDDPolicy(ChunkingPolicy):
    """A language-conditioned Gaussian-mixture policy over state observations (a distilled student).

    config: a VDDPolicyConfig. dataset_stats: LeRobot stats layout (the teacher's; restored by
    from_pretrained). language_encoder: an already built encoder (e.g. the teacher's) of the right dim.
    """

    config_class = VDDPolicyConfig
    made_by = "mode-policy distill --teacher RUN"

    def __init__(
        self,
        config: VDDPolicyConfig,
        dataset_stats: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        language_encoder: LanguageEncoder | None = None,
    ) -> None:
        super().__init__(config)
        self._init_language(language_encoder)
        self._init_normalization(dataset_stats)
        self.network = VDDNetwork(config, self.language_encoder.dim)

    @classmethod
    def from_teacher(cls, teacher: Any, **overrides: Any) -> VDDPolicy:
        """A fresh student of a MoDEPolicy: its layout, encoder (shared object) and normalisation stats."""
        config = VDDPolicyConfig.from_teacher(teacher.config, **overrides)
        student = cls(config, teacher.dataset_stats, language_encoder=teacher.language_encoder)
        return student.to(teacher.device)

    # Properties -----------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Student parameters (all active at every call; the frozen language encoder is not counted)."""
        total = sum(p.numel() for p in self.network.parameters())
        return {"total": total, "active": total}

    # The mixture ----------------------------------------------------------------------------------------
    def encode_inputs(self, state: torch.Tensor, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw states (B, n_obs_steps, state_dim) + B instructions -> (normalised states, goal (B, goal_dim)).

        Exactly what the teacher's denoiser receives for the same observation.
        """
        obs = self.normalizer.normalize(STATE_KEY, state.to(device=self.device, dtype=self.dtype))
        return obs, self._goal(tasks)

    def mixture(self, obs: torch.Tensor, goal: torch.Tensor, *, need_scale: bool = True) -> MixtureParams:
        """The mixture over normalised flat chunks (d = chunk_size * action_dim) at normalised inputs."""
        return self.network(obs, goal, need_scale=need_scale)

    # Inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action_chunk(
        self, obs: Mapping[str, Any], *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A chunk of actions in the data's units, (B, chunk_size, action_dim), from one network call.

        obs: ``observation.state`` (B, n_obs_steps, state_dim), or (B, state_dim) when n_obs_steps == 1;
        ``task``: list[str] of length B (a single string is used for every row). ``generator`` (on the
        policy's device) makes the expert choice (and, for "sample", the draw) reproducible.
        """
        config = self.config
        state = self._observation(obs, history=True)[STATE_KEY]  # (B, n_obs_steps, state_dim), checked
        tasks = instructions(obs, state.shape[0])
        with self._eval_mode():
            inputs = self.encode_inputs(state, tasks)
            params = self.mixture(*inputs, need_scale=config.action_mode == "sample")
            flat = params.act(config.action_mode, generator)  # (B, d), normalised
        actions = flat.view(state.shape[0], config.chunk_size, config.action_dim)
        return self._checked_actions(self._to_data_units(actions))

    def chunk_program(self, *, task: str | None = None, fuse_experts: bool = False) -> MixtureChunk:
        """The student's whole chunk as one module (``mode_policy.policies.vdd.program``). One network
        serves every task and no experts are routed: ``task`` is refused, ``fuse_experts`` changes nothing."""
        if task is not None:
            raise task_not_needed("nothing (a VDD student has no routed experts)")
        return MixtureChunk(self)
