"""CNNDenoiser: EDM preconditioning around Diffusion Policy's 1-D conv U-Net (the ``"cnn"`` denoiser kind).

denoiser = CNNDenoiser(CNNDenoiserConfig(obs_dim=39, goal_dim=384))
loss = denoiser.loss(action_chunk, obs, goal, sigma=LogLogisticSigma().sample(batch)).total
...
actions = denoiser.eval().sample_actions(obs, goal, exponential_schedule(10, sigma_min=0.05, sigma_max=80))

It has what every EDM denoiser has (forward, loss, sampling, save/load, from EDMDenoiser): no router
losses (zeros), no expert fractions (an empty (0, 0) tensor) and no sampling cache, a capability it lacks
(its ``sampling_cache`` is None, and ``mode_policy.nn.expert_cache.can_cache_experts`` says False).
"""

from __future__ import annotations

from mode_policy.nn.cnn.config import CNNDenoiserConfig
from mode_policy.nn.cnn.unet import ConditionalUnet1D
from mode_policy.nn.edm_denoiser import EDMDenoiser
from mode_policy.nn.registry import DENOISERS


@DENOISERS.register("cnn")
class CNNDenoiser(EDMDenoiser):
    """Diffusion Policy's U-Net as F; forward, loss, sampling and save/load come from EDMDenoiser."""

    config_class = CNNDenoiserConfig

    def __init__(self, config: CNNDenoiserConfig) -> None:
        super().__init__(config, ConditionalUnet1D(config))

    def _network(self, scaled_action, c_noise, obs, goal, *, need_stats=False, generator=None):
        del need_stats, generator  # no routers; dropout uses torch's global generator
        return self.network(scaled_action, c_noise, obs, goal), []
