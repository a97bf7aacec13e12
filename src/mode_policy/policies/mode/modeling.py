"""MoDEPolicy: normaliser + frozen language encoder + MoDE denoiser + sampler, as one policy.

policy = MoDEPolicy(MoDEPolicyConfig(language_encoder="onehot", tasks=dataset.tasks), dataset.stats)
loss, logs = policy.compute_loss(batch)              # batch as in .notes/CONTRACT.md (raw values)
policy.eval(); policy.reset()
action = policy.select_action({"observation.state": state, "task": [instruction]})   # (1, action_dim)
policy.save_pretrained("run/policy"); policy = MoDEPolicy.from_pretrained("run/policy")

Observation tokens are the ``n_obs_steps`` normalised states (one token each); with ``config.image_keys``
every step instead gives one token per camera (a FiLM-ResNet conditioned on the instruction embedding,
images scaled to [0, 1] then ImageNet-standardised, random-shift augmented in training) plus, when
``use_state``, a linear projection of the normalised state to the same size. The goal token is the
instruction embedding. Goal dropout (``config.denoiser.goal_dropout``, 0.1 by default) is applied inside
the denoiser's transformer to the projected goal token in training, as in the reference code, so it is
not applied again here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from mode_policy.diffusion.samplers import Inpainting
from mode_policy.keys import ACTION_IS_PAD_KEY, ACTION_KEY, STATE_KEY
from mode_policy.nn.encoders.language import LanguageEncoder
from mode_policy.nn.encoders.vision import VisionEncoder, random_shift
from mode_policy.nn.registry import denoiser_class_for
from mode_policy.policies.base import ChunkingPolicy
from mode_policy.policies.inputs import image_input, instructions
from mode_policy.policies.mode.configuration import MoDEPolicyConfig
from mode_policy.policies.mode.program import DiffusionChunk
from mode_policy.policies.program import CompiledProgram, NoiseSpec, compile_program
from mode_policy.policies.registry import register_policy

# Parameter names by group (MoDE and MoT transformers; the CNN's U-Net has its own names, none of these).
PARAMETER_GROUPS = {
    "router": (".moe.router.",),
    "experts": (".moe.experts.", ".moe.shared_expert.", ".moe.dense.", ".ffn.", ".ffn_norm.", ".moe_norm."),
    "attention": (".attn.", ".attn_norm.", ".qkv.", ".proj.", ".q_norm.", ".k_norm."),
    "encoders": ("vision.", "state_proj.", "network.goal_proj.", "network.obs_proj.", "network.action_proj.",
                 "network.sigma_embedding.", "network.position"),
}  # fmt: skip


@register_policy("mode")
class MoDEPolicy(ChunkingPolicy):
    """A language-conditioned MoDE diffusion policy over state observations.

    config: the policy config (validated again here). dataset_stats: LeRobot stats.json layout
    ``{feature: {"mean", "std", "min", "max"}}`` (e.g. ``LeRobotDataset.stats``); needed to train, not to
    load (``from_pretrained`` restores them). language_encoder: an already built encoder to use instead of
    building ``config.language_encoder`` (e.g. to share one MiniLM between policies); its ``dim`` must
    match. The encoder is not an ``nn.Module``: its weights are never saved, and it stays on the CPU
    (its cached embeddings are moved to the policy's device).
    """

    config_class = MoDEPolicyConfig
    supports_per_dataset_stats = True  # compute_loss normalises through batch_normalizer

    def __init__(
        self,
        config: MoDEPolicyConfig,
        dataset_stats: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        language_encoder: LanguageEncoder | None = None,
    ) -> None:
        super().__init__(config)
        self._init_language(language_encoder)
        language_encoder = self.language_encoder
        if config.denoiser.goal_dim != language_encoder.dim:
            # CLIP (or a custom MiniLM path): the size is only known from the checkpoint.
            config = replace(config, denoiser=replace(config.denoiser, goal_dim=language_encoder.dim))
            self.config = config
        self._init_normalization(dataset_stats)  # image-only policies neither read nor normalise the state
        self.denoiser = denoiser_class_for(config.denoiser)(config.denoiser)
        if config.image_keys:  # absent for state-only policies: their weights stay exactly as before
            self.vision = VisionEncoder(
                len(config.image_keys),
                language_encoder.dim if config.vision_film else 0,
                config.vision_feature_dim,
                backbone=config.vision_backbone,
                norm=config.vision_norm,
                pool=config.vision_pool,
                shared=config.vision_shared,
                num_keypoints=config.vision_num_keypoints,
                pretrained_path=config.vision_pretrained_path,
            )
            if config.use_state:
                self.state_proj = nn.Linear(config.state_dim, config.vision_feature_dim)
        self.sigma_distribution = config.sigma_distribution()
        self._compiled: CompiledProgram | None = None  # set by compile()

    # Properties -----------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """The denoiser's total and active parameters (the frozen language encoder is not counted)."""
        return self.denoiser.parameter_counts()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by what they do, for fine-tuning with frozen groups (``train(freeze=[...])``): the
        routers, the experts (feed-forward), attention, and the encoders (vision, state, goal, observation
        and action projections, phi(sigma), positions). Groups this policy's denoiser lacks are left out."""
        groups: dict[str, list[nn.Parameter]] = {name: [] for name in PARAMETER_GROUPS}
        for name, param in self.named_parameters():
            for group, patterns in PARAMETER_GROUPS.items():
                if any(pattern in name for pattern in patterns):
                    groups[group].append(param)
                    break
        return {group: params for group, params in groups.items() if params}

    # Training -------------------------------------------------------------------------------------------
    def compute_loss(
        self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Diffusion loss (plus the router losses) on a batch of raw values.

        batch: ``observation.state`` (B, n_obs_steps, state_dim), ``action`` (B, chunk_size, action_dim),
        ``task`` list[str] of length B, optional ``action_is_pad`` (B, chunk_size): padded actions are left
        out of the loss. ``observation_is_pad`` needs no handling: padded states repeat a real frame.
        With per-dataset stats, ``dataset_index`` (B,) int64 says whose stats normalise each row
        (``batch_normalizer``).
        Returns the scalar loss to minimise and detached logs: ``loss``, ``diffusion``, ``load_balance``,
        ``z_loss`` (scalars) and ``expert_fraction`` (layers, routed experts).
        """
        config = self.config
        state = None
        if config.use_state:
            state = self._tensor(
                batch, STATE_KEY, (config.n_obs_steps, config.state_dim), "(B, n_obs_steps, state_dim)"
            )
        action = self._tensor(
            batch,
            ACTION_KEY,
            (config.chunk_size, config.action_dim),
            "(B, chunk_size, action_dim)",
            None if state is None else state.shape[0],
        )
        batch_size = action.shape[0]
        images = self._images(batch, batch_size, augment=self.training, generator=generator)
        tasks = instructions(batch, batch_size)
        mask = None
        if batch.get(ACTION_IS_PAD_KEY) is not None:
            is_pad = torch.as_tensor(batch[ACTION_IS_PAD_KEY], device=self.device)
            if tuple(is_pad.shape) != (batch_size, config.chunk_size):
                raise ValueError(
                    f"batch['action_is_pad'] must have shape (B={batch_size}, "
                    f"chunk_size={config.chunk_size}), got {tuple(is_pad.shape)}"
                )
            mask = ~is_pad.bool()
        goal = self._goal(tasks)  # (B, goal_dim)
        normalizer = self.batch_normalizer(batch)
        obs = self._obs_tokens(state, images, goal, normalizer)  # (B, obs tokens, obs_dim)
        target = normalizer.normalize(ACTION_KEY, action)  # (B, chunk_size, action_dim)
        sigma = self.sigma_distribution.sample(
            (batch_size,), generator=generator, device=self.device, dtype=self.dtype
        )
        losses = self.denoiser.loss(target, obs, goal, sigma=sigma, action_mask=mask, generator=generator)
        logs = {
            "loss": losses.total.detach(),
            "diffusion": losses.diffusion.detach(),
            "load_balance": losses.load_balance.detach(),
            "z_loss": losses.z_loss.detach(),
            "expert_fraction": losses.expert_fraction.detach(),
        }
        return losses.total, logs

    # Inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action_chunk(
        self,
        obs: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
        use_expert_cache: bool | None = None,
        noise: Any = None,
        prefix: Any = None,
    ) -> torch.Tensor:
        """Sample a chunk of actions in the data's units: (B, chunk_size, action_dim).

        obs: ``observation.state`` (B, n_obs_steps, state_dim), or (B, state_dim) when n_obs_steps == 1;
        ``task``: list[str] of length B (a single string is used for every row). Runs in eval mode
        whatever the module's mode (deterministic routing, no dropout). ``use_expert_cache``: run the
        cached experts of each sampler step, or for Mixture-of-Transformers encode the context once per
        chunk (None: ``config.use_expert_cache``); ignored by denoisers that have no cache (token routing,
        the CNN). ``generator`` (on the policy's device) makes the draw
        reproducible.

        noise: optional standard normal start of the sampler, (B, chunk_size, action_dim) array or tensor,
        used instead of drawing it from ``generator`` (``torch.randn`` with the generator and that shape
        gives the same chunk); each row depends only on its own noise. prefix: optional (B, k,
        action_dim) with 1 <= k <= chunk_size, the actions already committed for the chunk's first k
        timesteps, in the data's units: they are held while sampling (inpainting,
        ``mode_policy.diffusion.Inpainting``) and the rest of the chunk is sampled to continue them; the
        chunk's first k actions then equal ``prefix`` up to float rounding (and the clamp to the data
        range when actions are min_max normalised and ``config.clip_sample``). A compiled policy
        (``compile()``) takes ``noise`` as its program's input, and samples eagerly when given ``prefix``.
        """
        config = self.config
        inputs = self._observation(obs, history=True)  # {key: (B, n_obs_steps, ...)}, checked
        batch = next(iter(inputs.values())).shape[0]
        tasks = instructions(obs, batch)
        if noise is not None:
            noise = self._chunk_input(noise, "noise", batch)  # (B, chunk_size, action_dim)
        inpaint = None if prefix is None else self._prefix_inpainting(prefix, batch)
        use_cache = config.use_expert_cache if use_expert_cache is None else use_expert_cache
        with self._eval_mode():
            goal = self._goal(tasks)
            compiled = None
            if self._compiled is not None and use_cache and inpaint is None:
                compiled = self._compiled.chunk(self, inputs, goal, tasks, generator, noise)
            if compiled is not None:
                return self._checked_actions(compiled)
            sigmas = config.sampling_sigmas(dtype=self.dtype, device=self.device)
            options = {"use_cache": use_cache} if self.denoiser.sampling_cache else {}
            state = inputs.get(STATE_KEY)  # (B, n_obs_steps, state_dim) or None (image-only)
            images = {key: inputs[key] for key in config.image_keys}  # (B, n_obs_steps, 3, H, W)
            actions = self.denoiser.sample_actions(
                self._obs_tokens(state, images, goal), goal, sigmas, method=config.sampler,
                generator=generator, noise=noise, inpaint=inpaint, **options,
            )  # (B, chunk_size, action_dim), normalised  # fmt: skip
        return self._checked_actions(self._to_data_units(actions))

    @property
    def noise_spec(self) -> NoiseSpec:
        """The random numbers one chunk takes per row: the sampler's standard normal start."""
        return NoiseSpec("normal", (self.config.chunk_size, self.config.action_dim))

    # Programs: export and compile -------------------------------------------------------------------
    def chunk_program(self, *, task: str | None = None, fuse_experts: bool = False) -> DiffusionChunk:
        """This policy's whole chunk as one module (``mode_policy.policies.mode.program``): the sampler
        unrolled, each step's experts baked in. ``task``: the one instruction a goal-routed program is for
        (without it, the program takes a task index into ``config.tasks``)."""
        goal = None if task is None else self._goal([task])[0]
        with self._eval_mode():
            return DiffusionChunk(self, goal=goal, fuse_experts=fuse_experts)

    def compile(self, **options: Any) -> MoDEPolicy:
        """Run the cached chunk under ``torch.compile`` (one graph per schedule; ``options`` go to
        torch.compile, default ``mode="reduce-overhead"`` on CUDA: CUDA graphs). The program is a snapshot:
        when the weights change afterwards, predictions fall back to the eager sampler. Without a working
        compiler the policy stays eager, with a warning. Returns the policy."""
        self._compiled = compile_program(self, self.chunk_program(), **options)
        return self

    # Helpers ---------------------------------------------------------------------------------------------
    def _obs_tokens(
        self,
        state: torch.Tensor | None,
        images: dict[str, torch.Tensor],
        goal: torch.Tensor,
        normalizer: Any = None,
    ) -> torch.Tensor:
        """Raw state (B, T, state_dim) and camera images (B, T, 3, H, W) -> (B, tokens, obs_dim).

        State only: the normalised states, one token per step (unchanged from the state-only policy).
        With cameras: per step [camera_1, ..., camera_n, state], each ``vision_feature_dim`` wide.
        normalizer: what normalises the state (default ``self.normalizer``; a training batch's
        ``batch_normalizer``).
        """
        config = self.config
        normalizer = self.normalizer if normalizer is None else normalizer
        if not config.image_keys:
            return normalizer.normalize(STATE_KEY, state)
        batch, steps = next(iter(images.values())).shape[:2]
        stacked = torch.stack([images[key] for key in config.image_keys], dim=2)  # (B, T, cams, 3, H, W)
        stacked = self.vision.normalize(stacked.flatten(0, 1))  # (B*T, cams, 3, H, W)
        cond = goal.repeat_interleave(steps, dim=0) if config.vision_film else None
        tokens = self.vision(stacked, cond).reshape(batch, steps, len(config.image_keys), -1)
        if state is not None:
            state_token = self.state_proj(normalizer.normalize(STATE_KEY, state))  # (B, T, F)
            tokens = torch.cat([tokens, state_token.unsqueeze(2)], dim=2)
        return tokens.flatten(1, 2)

    def _images(
        self,
        batch: Mapping[str, Any],
        batch_size: int,
        *,
        augment: bool,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training images (B, n_obs_steps, 3, H, W) per camera on the device; random shift if ``augment``."""
        config = self.config
        images = {}
        for key in config.image_keys:
            value = image_input(batch, key, config.n_obs_steps, config.image_hw, history=True)
            if value.shape[0] != batch_size:
                raise ValueError(f"{key!r} has batch size {value.shape[0]}, the actions have {batch_size}")
            value = value.to(self.device)
            if augment and config.image_shift > 0:
                flat = random_shift(value.flatten(0, 1), config.image_shift, generator=generator)
                value = flat.reshape(value.shape)
            images[key] = value
        return images

    def _chunk_input(self, value: Any, name: str, batch: int) -> torch.Tensor:
        """``noise`` (B, chunk_size, action_dim) or ``prefix`` (B, k, action_dim), 1 <= k <= chunk_size,
        as a finite tensor on the policy's device and dtype; one ValueError line naming ``name`` if not."""
        config = self.config
        if name == "prefix":
            expected = (
                f"(B={batch}, k, action_dim={config.action_dim}) with 1 <= k <= "
                f"chunk_size={config.chunk_size} (the chunk's first k actions, in the data's units)"
            )
        else:
            expected = (
                f"(B={batch}, chunk_size={config.chunk_size}, action_dim={config.action_dim}) "
                "(standard normal)"
            )
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{name} must be an array of shape {expected} ({error})") from None
        steps = range(1, config.chunk_size + 1) if name == "prefix" else (config.chunk_size,)
        ends = (batch, config.action_dim)
        if tensor.dim() != 3 or (tensor.shape[0], tensor.shape[2]) != ends or tensor.shape[1] not in steps:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}")
        if tensor.dtype == torch.bool or tensor.is_complex():
            raise ValueError(f"{name} must hold real numbers of shape {expected}, got dtype {tensor.dtype}")
        tensor = tensor.to(device=self.device, dtype=self.dtype)
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contains NaN or inf values; pass finite values of shape {expected}")
        return tensor

    def _prefix_inpainting(self, prefix: Any, batch: int) -> Inpainting:
        """The sampler's Inpainting for a checked prefix (B, k, action_dim) in the data's units: its
        normalised values held on the chunk's first k timesteps."""
        config = self.config
        prefix = self._chunk_input(prefix, "prefix", batch)
        k = prefix.shape[1]
        known = prefix.new_zeros(batch, config.chunk_size, config.action_dim)
        known[:, :k] = self.normalizer.normalize(ACTION_KEY, prefix)
        mask = torch.zeros(1, config.chunk_size, 1, dtype=torch.bool, device=prefix.device)
        mask[:, :k] = True
        return Inpainting(known, mask)

    def _tensor(
        self,
        batch: Mapping[str, Any],
        key: str,
        tail: tuple[int, ...],
        described: str,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """batch[key] as a tensor on the policy's device and dtype, checked to be (B, *tail)."""
        if key not in batch:
            raise KeyError(
                f"batch has no {key!r}; expected {key!r} of shape {described}, got keys {sorted(batch)}"
            )
        value = torch.as_tensor(batch[key])
        if (
            value.dim() != 1 + len(tail)
            or tuple(value.shape[1:]) != tail
            or (batch_size is not None and value.shape[0] != batch_size)
        ):
            expected = ", ".join(str(n) for n in ("B" if batch_size is None else batch_size, *tail))
            raise ValueError(
                f"{key!r} must have shape {described} = ({expected}), got {tuple(value.shape)}; check "
                "MoDEPolicyConfig (state_dim, action_dim, n_obs_steps, chunk_size) against the data"
            )
        return value.to(device=self.device, dtype=self.dtype)
