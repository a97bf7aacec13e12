"""EDMDenoiser: what every denoiser of the library shares around its network F.

EDM preconditioning (D = c_skip x + c_out F(c_in x, c_noise)), the EDM loss in F space with an action mask,
sampling with the k-diffusion samplers, input checks that name the config field to change, and
``save_pretrained`` / ``from_pretrained`` (config.json + model.safetensors, atomic). Subclasses say how to
call their network (``_network``) and add what is theirs: MoDE its router losses and expert cache
(mode_policy.nn.denoiser), the CNN baseline nothing (mode_policy.nn.cnn.denoiser). Denoisers with a
sampling cache (MoDE's experts, Mixture-of-Transformers' context) derive from ``CachedSamplingDenoiser``,
whose ``sample_actions`` takes ``use_cache`` and binds the schedule through their ``bind``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from mode_policy.diffusion.preconditioning import EDMPreconditioning, expand_like
from mode_policy.diffusion.samplers import Inpainting, sample
from mode_policy.io import atomic_write, load_safetensors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class DenoiserLoss:
    """total = diffusion + load_balance_weight * load_balance + router_z_loss_weight * z_loss.

    expert_fraction: (layers, routed experts) share of assignments per expert, detached (empty if dense).
    """

    total: torch.Tensor
    diffusion: torch.Tensor
    load_balance: torch.Tensor
    z_loss: torch.Tensor
    expert_fraction: torch.Tensor


class EDMDenoiser(nn.Module):
    """Base class; ``config_class`` is the subclass's config dataclass (interface fields: action_dim,
    chunk_size, obs_dim, num_obs_tokens, goal_dim, num_goal_tokens, sigma_data)."""

    config_class: ClassVar[type]

    def __init__(self, config: Any, network: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.preconditioning = EDMPreconditioning(config.sigma_data)
        self.network = network

    def _network(
        self, scaled_action: torch.Tensor, c_noise: torch.Tensor, obs: torch.Tensor, goal: torch.Tensor, **kw
    ) -> tuple[torch.Tensor, list]:
        """F(c_in x, c_noise | obs, goal) -> (output (batch, chunk, action_dim), per-layer router stats)."""
        raise NotImplementedError

    # Denoising --------------------------------------------------------------------------------------
    def forward(
        self,
        noisy_action: torch.Tensor,
        sigma: torch.Tensor | float,
        obs: torch.Tensor,
        goal: torch.Tensor,
        **network_options: Any,
    ) -> torch.Tensor:
        """D(x; sigma): the denoised action chunk (batch, chunk, action_dim).

        sigma: a scalar shared by the batch (for MoDE: one routing for every token) or (batch,).
        obs: (batch, obs_dim) or (batch, obs_tokens, obs_dim); goal: (batch, goal_dim) or
        (batch, goal_tokens, goal_dim).
        """
        obs, goal = self._check_inputs(noisy_action, obs, goal)
        sigma = self._as_sigma(sigma, noisy_action)
        coefficients = self.preconditioning.coefficients(sigma)
        scaled = expand_like(coefficients.c_in, noisy_action) * noisy_action
        output, _ = self._network(scaled, coefficients.c_noise.reshape(-1), obs, goal, **network_options)
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
        """EDM loss in F space plus the router losses (zeros for models without routers).

        action: clean (batch, chunk, action_dim); sigma: (batch,) noise levels, e.g. from
        ``mode_policy.diffusion.LogLogisticSigma``; action_mask: optional (batch, chunk), 1 for real
        actions and 0 for padding past an episode's end.
        """
        obs, goal = self._check_inputs(action, obs, goal)
        sigma = self._as_sigma(sigma, action)
        if noise is None:
            noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
        noisy = action + expand_like(sigma, action) * noise
        coefficients = self.preconditioning.coefficients(sigma)
        output, stats = self._network(
            expand_like(coefficients.c_in, action) * noisy,
            coefficients.c_noise.reshape(-1),
            obs,
            goal,
            need_stats=True,
            generator=generator,
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
        return self._add_router_losses(diffusion, stats)

    def _add_router_losses(self, diffusion: torch.Tensor, stats: list) -> DenoiserLoss:
        zero = diffusion.new_zeros(())
        return DenoiserLoss(diffusion, diffusion, zero, zero, diffusion.new_zeros(0, 0).detach())

    # Sampling ---------------------------------------------------------------------------------------
    @property
    def sampling_cache(self) -> str | None:
        """What sampling can reuse between model evaluations, when ``sample_actions`` takes ``use_cache``:
        ``"experts"`` (MoDE: each step's experts, known before the observation), ``"context"``
        (Mixture-of-Transformers: the context tokens' keys and values of a chunk's steps), None (none)."""
        return None

    def bind(self, obs: torch.Tensor, goal: torch.Tensor) -> Callable[..., torch.Tensor]:
        """A k-diffusion-style ``model(x, sigma)`` for ``mode_policy.diffusion.sample``."""
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
        noise: torch.Tensor | None = None,
        inpaint: Inpainting | None = None,
    ) -> torch.Tensor:
        """Sample an action chunk (batch, chunk, action_dim) from noise at sigmas[0].

        noise: optional standard normal start (batch, chunk_size, action_dim), scaled by sigmas[0] like
        the noise otherwise drawn from ``generator`` (which still drives a stochastic sampler's noise).
        inpaint: entries of the (normalised) chunk to hold, see ``mode_policy.diffusion.Inpainting``.
        """
        return self._sample(self.bind(obs, goal), obs.shape[0], sigmas, method, generator, noise, inpaint)

    def _sample(
        self,
        model: Callable[..., torch.Tensor],
        batch: int,
        sigmas: torch.Tensor,
        method: str,
        generator: torch.Generator | None,
        noise: torch.Tensor | None = None,
        inpaint: Inpainting | None = None,
    ) -> torch.Tensor:
        """Run ``model`` through the sampler from ``noise`` (standard normal, (batch, chunk, action_dim)),
        drawn from ``generator`` when None; returns (batch, chunk, action_dim)."""
        reference = next(self.network.parameters())  # the device and dtype to sample on
        shape = (batch, self.config.chunk_size, self.config.action_dim)
        sigmas = torch.as_tensor(sigmas, dtype=reference.dtype, device=reference.device)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=reference.device, dtype=reference.dtype)
        else:
            noise = self._checked_noise(noise, shape).to(device=reference.device, dtype=reference.dtype)
        x = noise * sigmas[0]
        return sample(model, x, sigmas, method=method, generator=generator, inpaint=inpaint)

    def _checked_noise(self, noise: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        config = self.config
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(
                f"noise must be a standard normal tensor of shape (batch={shape[0]}, "
                f"chunk_size={config.chunk_size}, action_dim={config.action_dim}), got {got}"
            )
        if not noise.is_floating_point() or not bool(torch.isfinite(noise).all()):
            raise ValueError(f"noise must hold finite floating-point values, got dtype {noise.dtype}")
        return noise

    # Bookkeeping ------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Total parameters and those an input actually runs through (equal unless experts sit idle)."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "active": total}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json and model.safetensors into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu"):
        directory = Path(directory)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(
                f"no {WEIGHTS_FILE} in {directory}; point at a directory written by save_pretrained"
            )
        model = cls(cls.config_class.load(directory / CONFIG_FILE))
        state = load_safetensors(weights, fix="restore it, or save the denoiser again", device=str(device))
        expected = model.state_dict()
        hint = "was config.json edited after saving?"
        wrong_shape = [n for n, t in state.items() if n in expected and t.shape != expected[n].shape]
        if wrong_shape:
            raise ValueError(
                f"{weights} does not match {directory / CONFIG_FILE}: {wrong_shape[:5]} have other shapes "
                f"than the config gives (size mismatch); {hint}"
            )
        missing, unexpected = model.load_state_dict(state, strict=False)
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
        """Shape checks with messages that name the config field to change; returns token-shaped obs, goal."""
        config = self.config
        name = type(config).__name__
        expected_action = (config.chunk_size, config.action_dim)
        if action.dim() != 3 or tuple(action.shape[1:]) != expected_action:
            raise ValueError(
                f"action chunk must have shape (batch, chunk_size={config.chunk_size}, "
                f"action_dim={config.action_dim}), got {tuple(action.shape)}; set {name}.chunk_size "
                "and action_dim to match your data"
            )
        batch = action.shape[0]
        obs = _as_tokens(obs, "obs", batch, config.num_obs_tokens, config.obs_dim, name, "num_obs_tokens")
        goal = _as_tokens(
            goal, "goal", batch, config.num_goal_tokens, config.goal_dim, name, "num_goal_tokens"
        )
        return obs, goal

    @staticmethod
    def _as_sigma(sigma: torch.Tensor | float, action: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=action.dtype, device=action.device)
        if sigma.numel() == 1:
            return sigma.reshape(())
        if sigma.shape != (action.shape[0],):
            raise ValueError(
                f"sigma must be a scalar or have shape (batch,) = ({action.shape[0]},), "
                f"got {tuple(sigma.shape)}"
            )
        return sigma


class CachedSamplingDenoiser(EDMDenoiser):
    """An EDM denoiser with a sampling cache (``sampling_cache`` not None when the config allows it):
    ``sample_actions`` takes ``use_cache``. Subclasses extend ``bind(obs, goal, sigmas=None)``: given the
    schedule it returns a ``model(x, sigma, step)`` that reuses the cached work of each sampler step, and
    without it ``EDMDenoiser.bind``'s ``model(x, sigma)``. MoDE caches its experts
    (mode_policy.nn.denoiser), Mixture-of-Transformers its context (mode_policy.nn.mot.denoiser); denoisers
    without a cache (the CNN) derive from EDMDenoiser and refuse ``use_cache``."""

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
        noise: torch.Tensor | None = None,
        inpaint: Inpainting | None = None,
    ) -> torch.Tensor:
        """Sample an action chunk (batch, chunk, action_dim); with ``use_cache`` (and a config that has a
        cache, e.g. not token routing, not bidirectional MoT) every step runs from the sampling cache.
        ``noise`` (standard normal, (batch, chunk, action_dim)) replaces the start drawn from
        ``generator``; ``inpaint`` holds entries of the chunk (``mode_policy.diffusion.Inpainting``), as in
        ``EDMDenoiser.sample_actions``."""
        model = self.bind(obs, goal, sigmas if use_cache and self.sampling_cache else None)
        return self._sample(model, obs.shape[0], sigmas, method, generator, noise, inpaint)


def _as_tokens(
    tensor: torch.Tensor, name: str, batch: int, tokens: int, dim: int, config_name: str, tokens_field: str
) -> torch.Tensor:
    dim_field = tokens_field.replace("num_", "").replace("_tokens", "_dim")  # num_obs_tokens -> obs_dim
    if tensor.dim() == 2 and tokens == 1:
        tensor = tensor.unsqueeze(1)
    if tensor.dim() != 3 or tuple(tensor.shape) != (batch, tokens, dim):
        raise ValueError(
            f"{name} must have shape (batch={batch}, {tokens_field}={tokens}, {dim_field}={dim}), got "
            f"{tuple(tensor.shape)}; set {config_name}.{tokens_field} and {dim_field} to match your data"
        )
    return tensor
