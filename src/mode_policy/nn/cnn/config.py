"""Configuration of the CNN Diffusion Policy baseline: a typed dataclass, validated, saved as JSON.

The interface fields (``action_dim`` ... ``num_goal_tokens``, ``sigma_data``, ``goal_dropout``) mean the
same as in :class:`mode_policy.nn.config.MoDEConfig`, so a policy can swap one denoiser for the other.
The saved JSON carries ``"kind": "cnn"`` so that a loader can tell a CNN checkpoint from a MoDE one
(``mode_policy.nn.registry``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from mode_policy.config_io import TaggedConfig, check_known_keys, check_positive_int
from mode_policy.nn.config import INTERFACE_FIELDS, MoDEConfig


@dataclass
class CNNDenoiserConfig(TaggedConfig):
    """Chi et al. (2023) Diffusion Policy's 1-D temporal U-Net with FiLM conditioning, under EDM.

    ``down_dims``: channels of each U-Net level (the first level keeps the chunk's length, each further
    level halves it). Diffusion Policy's paper default is (256, 512, 1024); (128, 256, 512) here suits
    state-only benchmarks. The chunk is padded internally (zeros at its end, cropped from the output) up
    to a multiple of ``downsample_factor = 2 ** (len(down_dims) - 1)``, so any ``chunk_size`` works;
    ``padded_chunk_size`` is the length the convolutions see.

    Conditioning: EDM's ``c_noise = ln(sigma) / 4`` goes through fixed sinusoidal features and an MLP to a
    ``cond_embed_dim`` vector, which is concatenated with the flattened observation tokens and goal tokens
    into the global condition that every residual block turns into a FiLM scale and bias.
    ``goal_dropout``: dropout on the goal features in training (as MoDE drops its goal token's features).
    """

    describe: ClassVar[str] = "CNN denoiser"

    tag_key: ClassVar[str] = "kind"

    # Interface: what goes in and comes out (same meaning as MoDEConfig).
    action_dim: int = 4
    chunk_size: int = 10
    obs_dim: int = 39
    num_obs_tokens: int = 1
    goal_dim: int = 384
    num_goal_tokens: int = 1
    # U-Net.
    down_dims: tuple[int, ...] = (128, 256, 512)
    kernel_size: int = 5
    n_groups: int = 8
    cond_embed_dim: int = 256
    goal_dropout: float = 0.1
    # Diffusion.
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        positive = [
            *INTERFACE_FIELDS,
            "kernel_size",
            "n_groups",
            "cond_embed_dim",
        ]
        for name in positive:
            check_positive_int("CNNDenoiserConfig", name, getattr(self, name))
        if isinstance(self.down_dims, int) or not isinstance(self.down_dims, (list, tuple)):
            raise ValueError(
                f"CNNDenoiserConfig.down_dims must be a non-empty list of channel counts, e.g. "
                f"(128, 256, 512), got {self.down_dims!r}"
            )
        self.down_dims = tuple(self.down_dims)
        if not self.down_dims:
            raise ValueError("CNNDenoiserConfig.down_dims must hold at least one level, e.g. (128, 256, 512)")
        for level, channels in enumerate(self.down_dims):
            check_positive_int("CNNDenoiserConfig", f"down_dims[{level}]", channels)
            if channels % self.n_groups:
                raise ValueError(
                    f"CNNDenoiserConfig.down_dims[{level}] = {channels} must be divisible by n_groups "
                    f"({self.n_groups}) for GroupNorm; use multiples of {self.n_groups} or lower n_groups"
                )
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"CNNDenoiserConfig.kernel_size must be odd so that convolutions keep the chunk length, "
                f"got {self.kernel_size}; try {self.kernel_size + 1}"
            )
        if self.cond_embed_dim % 2:
            raise ValueError(
                "CNNDenoiserConfig.cond_embed_dim must be even (sin and cos halves), "
                f"got {self.cond_embed_dim}"
            )
        if not 0.0 <= self.goal_dropout < 1.0:
            raise ValueError(f"CNNDenoiserConfig.goal_dropout must be in [0, 1), got {self.goal_dropout}")
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise ValueError(f"CNNDenoiserConfig.sigma_data must be > 0, got {self.sigma_data}")

    # Derived quantities -------------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """How much the deepest U-Net level shortens the chunk: ``2 ** (len(down_dims) - 1)``."""
        return 2 ** (len(self.down_dims) - 1)

    @property
    def padded_chunk_size(self) -> int:
        """``chunk_size`` rounded up to a multiple of ``downsample_factor``: what the convolutions see."""
        factor = self.downsample_factor
        return -(-self.chunk_size // factor) * factor

    @property
    def global_cond_dim(self) -> int:
        """Flattened observation and goal features, the non-noise part of the FiLM condition."""
        return self.num_obs_tokens * self.obs_dim + self.num_goal_tokens * self.goal_dim

    # Serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields (``down_dims`` as a list, as JSON has it) and ``"kind": "cnn"``."""
        values = super().to_dict()
        values["down_dims"] = list(self.down_dims)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CNNDenoiserConfig:
        """Build from ``to_dict`` output; a MoDE transformer's fields are pointed out as such."""
        own = {f.name for f in fields(cls)} | {cls.tag_key}
        if set(values) - own and set(values) - own <= {f.name for f in fields(MoDEConfig)}:
            hint = (
                " (they are MoDEConfig fields: this looks like a MoDE transformer config; load it with "
                "MoDEDenoiser.from_pretrained or mode_policy.nn.load_denoiser)"
            )
            check_known_keys(cls, values, extra=(cls.tag_key,), hint=hint)
        return super().from_dict(values)
