"""MoTDenoiser: EDM preconditioning around the Mixture-of-Transformers network (the ``"mot"`` kind).

denoiser = MoTDenoiser(MoTConfig(obs_dim=39, goal_dim=384))
loss = denoiser.loss(action_chunk, obs, goal, sigma=LogLogisticSigma().sample(batch)).total
actions = denoiser.eval().sample_actions(obs, goal, exponential_schedule(10, sigma_min=0.05, sigma_max=80))

Forward, loss, sampling (inpainting included; ``use_cache`` from CachedSamplingDenoiser) and save/load
come from ``mode_policy.nn.edm_denoiser``. It has no router, so
no router losses and no expert cache (there are no experts to choose: a token's weights are fixed by its
token group). Its sampling cache is the context cache instead (causal attention, the default): the
context tokens' keys and values for every step of a chunk, computed in one batched pass when sampling
starts (``mode_policy.nn.mot.transformer``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mode_policy.nn.edm_denoiser import CachedSamplingDenoiser
from mode_policy.nn.mot.config import MoTConfig
from mode_policy.nn.mot.transformer import GroupWeights, MoTContext, MoTTransformer
from mode_policy.nn.registry import DENOISERS


@DENOISERS.register("mot")
class MoTDenoiser(CachedSamplingDenoiser):
    """The Mixture-of-Transformers network as F."""

    config_class = MoTConfig

    def __init__(self, config: MoTConfig) -> None:
        super().__init__(config, MoTTransformer(config))

    def _network(
        self, scaled_action, c_noise, obs, goal, *, need_stats=False, generator=None, context=None, step=0
    ):
        del need_stats, generator  # no routers; dropout uses torch's global generator
        if context is not None:  # c_noise, obs and goal are already in the context's step
            return self.network.denoise_with_context(scaled_action, context, step), []
        return self.network(scaled_action, c_noise, obs, goal), []

    # Sampling ---------------------------------------------------------------------------------------
    @property
    def sampling_cache(self) -> str | None:
        return "context" if self.config.attention == "causal" else None

    def bind(
        self, obs: torch.Tensor, goal: torch.Tensor, sigmas: torch.Tensor | None = None
    ) -> Callable[..., torch.Tensor]:
        """A k-diffusion-style ``model(x, sigma[, step])``; with ``sigmas`` (the schedule you will sample
        with) the context of every step is encoded now and each evaluation at a schedule level reuses its
        step's. An evaluation at another level (a churned ``sigma_hat``) runs the whole sequence."""
        if sigmas is None:
            return super().bind(obs, goal)
        reference = next(self.network.parameters())
        sigmas = torch.as_tensor(sigmas, dtype=reference.dtype, device=reference.device)  # as the sampler
        levels = sigmas[sigmas > 0]
        context = self.encode_context(obs, goal, self.context_c_noise(levels))
        level_values = levels.tolist()

        def model(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
            if step >= len(level_values) or float(sigma) != level_values[step]:
                return self(x, sigma, obs, goal)
            return self(x, sigma, obs, goal, context=context, step=step)

        return model

    def context_c_noise(self, levels: torch.Tensor) -> torch.Tensor:
        """The network's noise input (steps,) at each positive schedule level (steps,)."""
        return self.preconditioning.coefficients(levels).c_noise.reshape(-1)

    def encode_context(self, obs: torch.Tensor, goal: torch.Tensor, c_noise: torch.Tensor) -> MoTContext:
        """The context cache of one chunk: obs (batch, obs_dim) or (batch, obs_tokens, obs_dim), goal
        likewise, c_noise (steps,) from ``context_c_noise``; step j of the returned context is the model
        evaluation at the j-th level."""
        chunk = obs.new_empty(obs.shape[0], self.config.chunk_size, self.config.action_dim)
        obs, goal = self._check_inputs(chunk, obs, goal)
        return self.network.encode_context(c_noise, obs, goal)

    def parameter_counts(self) -> dict[str, int]:
        """Total parameters, and those one token runs through: the embeddings, the head and one group's
        weights per layer (every group's weights are the same size)."""
        total = sum(p.numel() for p in self.parameters())
        per_group = sum(p.numel() for p in GroupWeights(self.config).parameters())
        idle = self.config.depth * (len(self.config.token_groups) - 1) * per_group
        return {"total": total, "active": total - idle}
