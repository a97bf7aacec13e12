"""MoTDenoiser: EDM preconditioning around the Mixture-of-Transformers network (the ``"mot"`` kind).

denoiser = MoTDenoiser(MoTConfig(obs_dim=39, goal_dim=384))
loss = denoiser.loss(action_chunk, obs, goal, sigma=LogLogisticSigma().sample(batch)).total
actions = denoiser.eval().sample_actions(obs, goal, exponential_schedule(10, sigma_min=0.05, sigma_max=80))

Forward, loss, sampling (inpainting included) and save/load come from EDMDenoiser. It has no router, so
no router losses and no expert cache (there are no experts to choose: a token's weights are fixed by its
token group).
"""

from __future__ import annotations

from mode_policy.nn.edm_denoiser import EDMDenoiser
from mode_policy.nn.mot.config import MoTConfig
from mode_policy.nn.mot.transformer import GroupWeights, MoTTransformer
from mode_policy.nn.registry import DENOISERS


@DENOISERS.register("mot")
class MoTDenoiser(EDMDenoiser):
    """The Mixture-of-Transformers network as F."""

    config_class = MoTConfig

    def __init__(self, config: MoTConfig) -> None:
        super().__init__(config, MoTTransformer(config))

    def _network(self, scaled_action, c_noise, obs, goal, *, need_stats=False, generator=None):
        del need_stats, generator  # no routers; dropout uses torch's global generator
        return self.network(scaled_action, c_noise, obs, goal), []

    def parameter_counts(self) -> dict[str, int]:
        """Total parameters, and those one token runs through: the embeddings, the head and one group's
        weights per layer (every group's weights are the same size)."""
        total = sum(p.numel() for p in self.parameters())
        per_group = sum(p.numel() for p in GroupWeights(self.config).parameters())
        idle = self.config.depth * (len(self.config.token_groups) - 1) * per_group
        return {"total": total, "active": total - idle}
