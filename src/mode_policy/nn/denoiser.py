"""MoDEDenoiser: EDM preconditioning around the MoDE transformer, with its loss, expert cache and IO.

denoiser = MoDEDenoiser(MoDEConfig(obs_dim=39, goal_dim=384))
loss = denoiser.loss(action_chunk, obs, goal, sigma=LogLogisticSigma().sample(batch)).total
...
sigmas = exponential_schedule(10, sigma_min=0.05, sigma_max=80)
actions = denoiser.eval().sample_actions(obs, goal, sigmas)   # expert-cached by default
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mode_policy.diffusion.preconditioning import EDMPreconditioning, expand_like
from mode_policy.diffusion.samplers import sample
from mode_policy.io import atomic_write
from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.expert_cache import ExpertCache
from mode_policy.nn.transformer import CachedStep, MoDETransformer

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


class MoDEDenoiser(nn.Module):
    def __init__(self, config: MoDEConfig) -> None:
        super().__init__()
        self.config = config
        self.preconditioning = EDMPreconditioning(config.sigma_data)
        self.network = MoDETransformer(config)
        self._expert_cache: ExpertCache | None = None

    # Denoising --------------------------------------------------------------------------------------
    def forward(
        self,
        noisy_action: torch.Tensor,
        sigma: torch.Tensor | float,
        obs: torch.Tensor,
        goal: torch.Tensor,
        *,
        cached_step: CachedStep | None = None,
    ) -> torch.Tensor:
        """D(x; sigma): the denoised action chunk (batch, chunk, action_dim).

        sigma: a scalar shared by the batch (fast path: one routing for every token) or (batch,).
        obs: (batch, obs_dim) or (batch, obs_tokens, obs_dim); goal: (batch, goal_dim) or
        (batch, goal_tokens, goal_dim).
        """
        obs, goal = self._check_inputs(noisy_action, obs, goal)
        sigma = self._as_sigma(sigma, noisy_action)
        coefficients = self.preconditioning.coefficients(sigma)
        scaled = expand_like(coefficients.c_in, noisy_action) * noisy_action
        output, _ = self.network(scaled, coefficients.c_noise.reshape(-1), obs, goal, cached_step=cached_step)
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
        """EDM loss in F space plus the router losses.

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
        output, stats = self.network(
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
        zero = diffusion.new_zeros(())
        load_balance = torch.stack([s.load_balance_loss for s in stats]).mean() if stats else zero
        z_loss = torch.stack([s.z_loss for s in stats]).mean() if stats else zero
        total = (
            diffusion
            + self.config.load_balance_weight * load_balance
            + self.config.router_z_loss_weight * z_loss
        )
        fractions = torch.stack([s.expert_fraction for s in stats]) if stats else diffusion.new_zeros(0, 0)
        return DenoiserLoss(total, diffusion, load_balance, z_loss, fractions)

    # Sampling ---------------------------------------------------------------------------------------
    def cache_experts(self, sigmas: torch.Tensor) -> ExpertCache:
        """The expert cache for this sampler schedule (reused while the schedule is the same)."""
        if self._expert_cache is None or not self._expert_cache.matches(sigmas):
            self._expert_cache = ExpertCache(self.network, sigmas)
        return self._expert_cache

    def clear_expert_cache(self) -> None:
        self._expert_cache = None

    def bind(
        self,
        obs: torch.Tensor,
        goal: torch.Tensor,
        sigmas: torch.Tensor | None = None,
        *,
        use_cache: bool = True,
    ) -> Callable[..., torch.Tensor]:
        """A k-diffusion-style ``model(x, sigma[, step])`` for ``mode_policy.diffusion.sample``.

        With ``use_cache`` (needs ``sigmas``, the schedule you will sample with) the model takes the
        sampler's ``step`` and runs the cached experts of that step.
        """
        if not use_cache:
            return lambda x, sigma: self(x, sigma, obs, goal)
        if sigmas is None:
            raise ValueError("bind(use_cache=True) needs the sampler schedule: pass sigmas=...")
        cache = self.cache_experts(sigmas)
        cache.refresh(check_contents=True)
        if not cache.uses_goal:

            def model(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
                return self(x, sigma, obs, goal, cached_step=cache.step(step))

            return model

        # Goal-routed: samples that share a goal share a table; each group runs its own experts.
        goal_rows = goal if goal.dim() == 3 else goal.unsqueeze(1)  # (batch, goal_tokens, goal_dim)
        unique_goals, group_of = torch.unique(goal_rows.flatten(1), dim=0, return_inverse=True)
        keys = [cache.add_goal(row.view_as(goal_rows[0])) for row in unique_goals]
        if len(keys) == 1:
            return lambda x, sigma, step: self(x, sigma, obs, goal, cached_step=cache.step(step, keys[0]))
        members = [torch.nonzero(group_of == g).flatten() for g in range(len(keys))]

        def grouped_model(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
            out = torch.empty_like(x)
            for key, rows in zip(keys, members, strict=True):
                cached = cache.step(step, key)
                out[rows] = self(x[rows], sigma, obs[rows], goal[rows], cached_step=cached)
            return out

        return grouped_model

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
        """Sample an action chunk (batch, chunk, action_dim) from noise at sigmas[0]."""
        reference = self.network.head.weight
        batch = obs.shape[0]
        shape = (batch, self.config.chunk_size, self.config.action_dim)
        sigmas = torch.as_tensor(sigmas, dtype=reference.dtype, device=reference.device)
        x = (
            torch.randn(shape, generator=generator, device=reference.device, dtype=reference.dtype)
            * sigmas[0]
        )
        model = self.bind(obs, goal, sigmas, use_cache=use_cache and self.config.cacheable)
        return sample(model, x, sigmas, method=method, generator=generator)

    # Bookkeeping ------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Total parameters, and those a token actually runs through (unchosen routed experts excluded)."""
        total = sum(p.numel() for p in self.parameters())
        config = self.config
        idle = 0
        if not config.is_dense:
            per_expert = 3 * config.width * config.expert_hidden
            idle = config.depth * (config.routed_experts - config.routed_top_k) * per_expert
        return {"total": total, "active": total - idle}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json and model.safetensors into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> MoDEDenoiser:
        directory = Path(directory)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(
                f"no {WEIGHTS_FILE} in {directory}; point at a directory written by save_pretrained"
            )
        model = cls(MoDEConfig.load(directory / CONFIG_FILE))
        state = load_file(str(weights), device=str(device))
        expected = model.state_dict()
        wrong_shape = [n for n, t in state.items() if n in expected and t.shape != expected[n].shape]
        if wrong_shape:
            raise ValueError(
                f"{weights} does not match {directory / CONFIG_FILE}: {wrong_shape[:5]} have other shapes "
                "than the config gives; was config.json edited after saving?"
            )
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match {directory / CONFIG_FILE}: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}; was config.json edited after saving?"
            )
        return model.to(device)

    # Input checks -----------------------------------------------------------------------------------
    def _check_inputs(
        self, action: torch.Tensor, obs: torch.Tensor, goal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape checks with messages that name the config field to change; returns token-shaped obs, goal."""
        config = self.config
        expected_action = (config.chunk_size, config.action_dim)
        if action.dim() != 3 or tuple(action.shape[1:]) != expected_action:
            raise ValueError(
                f"action chunk must have shape (batch, chunk_size={config.chunk_size}, "
                f"action_dim={config.action_dim}), got {tuple(action.shape)}; set MoDEConfig.chunk_size "
                "and action_dim to match your data"
            )
        batch = action.shape[0]
        obs = _as_tokens(
            obs, "obs", batch, config.num_obs_tokens, config.obs_dim, "num_obs_tokens", "obs_dim"
        )
        goal = _as_tokens(
            goal, "goal", batch, config.num_goal_tokens, config.goal_dim, "num_goal_tokens", "goal_dim"
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


def _as_tokens(
    tensor: torch.Tensor, name: str, batch: int, tokens: int, dim: int, tokens_field: str, dim_field: str
) -> torch.Tensor:
    if tensor.dim() == 2 and tokens == 1:
        tensor = tensor.unsqueeze(1)
    if tensor.dim() != 3 or tuple(tensor.shape) != (batch, tokens, dim):
        raise ValueError(
            f"{name} must have shape (batch={batch}, {tokens_field}={tokens}, {dim_field}={dim}), got "
            f"{tuple(tensor.shape)}; set MoDEConfig.{tokens_field} and {dim_field} to match your data"
        )
    return tensor
