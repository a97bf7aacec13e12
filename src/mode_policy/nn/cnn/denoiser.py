"""CNNDenoiser: EDM preconditioning around Diffusion Policy's 1-D conv U-Net, with MoDEDenoiser's interface.

denoiser = CNNDenoiser(CNNDenoiserConfig(obs_dim=39, goal_dim=384))
loss = denoiser.loss(action_chunk, obs, goal, sigma=LogLogisticSigma().sample(batch)).total
...
actions = denoiser.eval().sample_actions(obs, goal, exponential_schedule(10, sigma_min=0.05, sigma_max=80))

Everything a policy calls on a :class:`~mode_policy.nn.denoiser.MoDEDenoiser` works the same here. The
mixture-of-experts parts degrade gracefully: there are no router losses (zeros), no expert fractions (an
empty (0, 0) tensor), ``use_cache`` is accepted and ignored, ``clear_expert_cache`` does nothing and
``cache_experts`` raises :class:`~mode_policy.nn.expert_cache.ExpertCacheError`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mode_policy.config_io import read_config_json
from mode_policy.nn.cnn.config import KIND_KEY, CNNDenoiserConfig
from mode_policy.nn.cnn.unet import ConditionalUnet1D
from mode_policy.nn.denoiser import MoDEDenoiser
from mode_policy.nn.edm_denoiser import CONFIG_FILE, EDMDenoiser
from mode_policy.nn.expert_cache import ExpertCacheError


class CNNDenoiser(EDMDenoiser):
    """Diffusion Policy's U-Net as F; forward, loss, sampling and save/load come from EDMDenoiser."""

    config_class = CNNDenoiserConfig

    def __init__(self, config: CNNDenoiserConfig) -> None:
        super().__init__(config, ConditionalUnet1D(config))

    def _network(self, scaled_action, c_noise, obs, goal, *, need_stats=False, generator=None):
        del need_stats, generator  # no routers; dropout uses torch's global generator
        return self.network(scaled_action, c_noise, obs, goal), []

    def cache_experts(self, sigmas: torch.Tensor) -> None:
        """Not available: a CNN has no experts to cache (``config.cacheable`` is False)."""
        raise ExpertCacheError(
            "CNNDenoiser has no experts, so there is no expert cache to build: sample with "
            "use_cache=False (sample_actions ignores use_cache for this model), or check "
            "denoiser.config.cacheable before calling cache_experts"
        )

    def clear_expert_cache(self) -> None:
        """Nothing to clear: a CNN has no expert cache."""


def load_denoiser(directory: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load whichever denoiser ``save_pretrained`` wrote into ``directory``: CNN if its config.json says
    ``"kind": "cnn"``, MoDE otherwise (MoDE configs carry no kind)."""
    values = read_config_json(Path(directory) / CONFIG_FILE, "the denoiser", "save_pretrained()")
    if values.get(KIND_KEY) == CNNDenoiserConfig.kind:
        return CNNDenoiser.from_pretrained(directory, device=device)
    if KIND_KEY in values:
        raise ValueError(
            f"{Path(directory) / CONFIG_FILE} has unknown denoiser kind {values[KIND_KEY]!r}; "
            f"known kinds: {CNNDenoiserConfig.kind!r}, or no kind for MoDE"
        )
    return MoDEDenoiser.from_pretrained(directory, device=device)
