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

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from mode_policy.config_io import read_config_json
from mode_policy.diffusion.preconditioning import EDMPreconditioning, expand_like
from mode_policy.diffusion.samplers import sample
from mode_policy.nn.cnn.config import KIND_KEY, CNNDenoiserConfig
from mode_policy.nn.cnn.unet import ConditionalUnet1D
from mode_policy.nn.denoiser import CONFIG_FILE, WEIGHTS_FILE, DenoiserLoss, MoDEDenoiser
from mode_policy.nn.expert_cache import ExpertCacheError


class CNNDenoiser(nn.Module):
    def __init__(self, config: CNNDenoiserConfig) -> None:
        super().__init__()
        self.config = config
        self.preconditioning = EDMPreconditioning(config.sigma_data)
        self.network = ConditionalUnet1D(config)

    # Denoising --------------------------------------------------------------------------------------
    def forward(
        self, noisy_action: torch.Tensor, sigma: torch.Tensor | float, obs: torch.Tensor, goal: torch.Tensor
    ) -> torch.Tensor:
        """D(x; sigma): the denoised action chunk (batch, chunk, action_dim).

        sigma: a scalar shared by the batch or (batch,). obs: (batch, obs_dim) or (batch, obs_tokens,
        obs_dim); goal: (batch, goal_dim) or (batch, goal_tokens, goal_dim).
        """
        obs, goal = self._check_inputs(noisy_action, obs, goal)
        sigma = self._as_sigma(sigma, noisy_action)
        coefficients = self.preconditioning.coefficients(sigma)
        scaled = expand_like(coefficients.c_in, noisy_action) * noisy_action
        output = self.network(scaled, coefficients.c_noise.reshape(-1), obs, goal)
        return (
            expand_like(coefficients.c_skip, noisy_action) * noisy_action
            + expand_like(coefficients.c_out, noisy_action) * output
        )

    def loss(
        self,
        action: torch.Tensor,
        obs: torch.Tensor,
        goal: torch.Tensor,
        *,
        sigma: torch.Tensor,
        noise: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DenoiserLoss:
        """EDM loss in F space (``total == diffusion``; the router terms are zeros).

        action: clean (batch, chunk, action_dim); sigma: (batch,) noise levels; action_mask: optional
        (batch, chunk), 1 for real actions and 0 for padding past an episode's end.
        """
        obs, goal = self._check_inputs(action, obs, goal)
        sigma = self._as_sigma(sigma, action)
        if noise is None:
            noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
        noisy = action + expand_like(sigma, action) * noise
        coefficients = self.preconditioning.coefficients(sigma)
        output = self.network(
            expand_like(coefficients.c_in, action) * noisy, coefficients.c_noise.reshape(-1), obs, goal
        )
        target = (action - expand_like(coefficients.c_skip, action) * noisy) / expand_like(
            coefficients.c_out, action
        )
        error = (output - target).square().mean(dim=-1)  # (batch, chunk)
        if action_mask is None:
            diffusion = error.mean()
        else:
            mask = action_mask.to(error.dtype)
            diffusion = (error * mask).sum() / mask.sum().clamp_min(1)
        zero = diffusion.new_zeros(())
        return DenoiserLoss(diffusion, diffusion, zero, zero, diffusion.new_zeros(0, 0).detach())

    # Sampling ---------------------------------------------------------------------------------------
    def cache_experts(self, sigmas: torch.Tensor) -> None:
        """Not available: a CNN has no experts to cache (``config.cacheable`` is False)."""
        raise ExpertCacheError(
            "CNNDenoiser has no experts, so there is no expert cache to build: sample with "
            "use_cache=False (sample_actions ignores use_cache for this model), or check "
            "denoiser.config.cacheable before calling cache_experts"
        )

    def clear_expert_cache(self) -> None:
        """Nothing to clear: a CNN has no expert cache."""

    def bind(
        self,
        obs: torch.Tensor,
        goal: torch.Tensor,
        sigmas: torch.Tensor | None = None,
        *,
        use_cache: bool = True,
    ) -> Callable[..., torch.Tensor]:
        """A k-diffusion-style ``model(x, sigma)`` for ``mode_policy.diffusion.sample``.

        ``sigmas`` and ``use_cache`` are accepted for interface parity with MoDEDenoiser and ignored.
        """
        del sigmas, use_cache
        return lambda x, sigma: self(x, sigma, obs, goal)

    @torch.no_grad()
    def sample_actions(
        self,
        obs: torch.Tensor,
        goal: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        method: str = "ddim",
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Sample an action chunk (batch, chunk, action_dim) from noise at sigmas[0].

        ``use_cache`` is ignored (there are no experts); it is accepted so policies can pass it blindly.
        """
        reference = self.network.head.weight
        batch = obs.shape[0]
        shape = (batch, self.config.chunk_size, self.config.action_dim)
        sigmas = torch.as_tensor(sigmas, dtype=reference.dtype, device=reference.device)
        x = (
            torch.randn(shape, generator=generator, device=reference.device, dtype=reference.dtype)
            * sigmas[0]
        )
        model = self.bind(obs, goal, sigmas, use_cache=use_cache)
        return sample(model, x, sigmas, method=method, generator=generator)

    # Bookkeeping ------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Total parameters and active ones: equal, since every parameter runs for every input."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "active": total}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json (with ``"kind": "cnn"``) and model.safetensors into ``directory``, atomically."""
        return MoDEDenoiser.save_pretrained(self, directory)  # same files, same atomic writes

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> CNNDenoiser:
        directory = Path(directory)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(
                f"no {WEIGHTS_FILE} in {directory}; point at a directory written by save_pretrained"
            )
        model = cls(CNNDenoiserConfig.load(directory / CONFIG_FILE))
        state = load_file(str(weights), device=str(device))
        hint = "was config.json edited after saving?"
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatches raise even when strict=False
            first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), error)
            raise ValueError(f"{weights} does not match {directory / CONFIG_FILE}: {first}; {hint}") from None
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match {directory / CONFIG_FILE}: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}; {hint}"
            )
        return model.to(device)

    # Input checks -----------------------------------------------------------------------------------
    def _check_inputs(
        self, action: torch.Tensor, obs: torch.Tensor, goal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MoDEDenoiser's shape checks (they read only the interface fields), naming this config class."""
        try:
            return MoDEDenoiser._check_inputs(self, action, obs, goal)  # type: ignore[arg-type]
        except ValueError as error:
            raise ValueError(str(error).replace("MoDEConfig.", "CNNDenoiserConfig.")) from None

    _as_sigma = staticmethod(MoDEDenoiser._as_sigma)


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
