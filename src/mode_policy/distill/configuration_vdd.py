"""VDDPolicyConfig: a one-step Gaussian-mixture student distilled from a diffusion policy (VDD).

config = VDDPolicyConfig.from_teacher(teacher.config, num_experts=4)
config.save("run/policy/config.json"); VDDPolicyConfig.load("run/policy/config.json")

The observation/action layout, language encoder and normalisation are copied from the teacher (the student
reads exactly what the teacher reads); the rest describes the mixture: ``num_experts`` Gaussian experts over
the whole flattened action chunk (``chunk_size * action_dim`` dimensions), their covariance form, the MLP
trunk, and how an action is chosen at inference. ``policy_type: "vdd"`` in config.json tells loaders
(``mode_policy.evaluation.loading``) which class to build; MoDE configs have no such key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mode_policy.config_io import JSONConfig, check_positive_int, read_config_json
from mode_policy.keys import ACTION_KEY, STATE_KEY
from mode_policy.nn.encoders.language import known_embedding_dim
from mode_policy.policies.configuration_mode import (
    default_normalization,
    validate_language,
    validate_normalization,
)

POLICY_TYPE = "vdd"
COVARIANCES = ("full", "diagonal")
# "mean": sample an expert from the gating, act with its mean (what VDD's released agent does by default).
# "greedy": the mean of the most likely expert (deterministic). "sample": a full draw from the mixture.
ACTION_MODES = ("mean", "greedy", "sample")
# Fields that describe what the policy reads and writes; they must equal the teacher's.
INTERFACE_FIELDS = (
    "state_dim",
    "action_dim",
    "n_obs_steps",
    "chunk_size",
    "language_encoder",
    "language_encoder_path",
    "tasks",
    "normalization_mapping",
)


@dataclass
class VDDPolicyConfig(JSONConfig):
    """A mixture-of-Gaussian-experts policy pi(a|s) = sum_z q(z|s) N(a; mu_z(s), L_z(s) L_z(s)^T).

    Defaults: 4 experts with full (lower-triangular Cholesky) covariances over the 40-d Meta-World chunk
    (10 x 4), a 3-layer width-256 MLP trunk shared by the experts, and a gating head on the trunk's
    (detached) features, as in VDD's reference agent.
    """

    policy_type: str = POLICY_TYPE
    # Observation and action layout (copied from the teacher).
    state_dim: int = 39
    action_dim: int = 4
    n_obs_steps: int = 1
    chunk_size: int = 10
    n_action_steps: int = 5
    language_encoder: str = "minilm"
    language_encoder_path: str | None = None
    tasks: list[str] = field(default_factory=list)
    normalization_mapping: dict[str, str] = field(default_factory=default_normalization)
    clip_sample: bool = True
    # The mixture.
    num_experts: int = 4
    covariance: str = "full"  # "full" (Cholesky, softplus diagonal) or "diagonal" (faster)
    hidden_dim: int = 256
    depth: int = 3  # trunk layers
    init_std: float = 0.5  # initial expert standard deviation, in the normalised action space
    min_std: float = 1e-3  # floor added to the softplus diagonal: keeps log-densities finite
    action_mode: str = "mean"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; messages name the field and the fix."""
        if self.policy_type != POLICY_TYPE:
            raise ValueError(f'VDDPolicyConfig.policy_type must be "{POLICY_TYPE}", got {self.policy_type!r}')
        for name in ("state_dim", "action_dim", "n_obs_steps", "chunk_size", "n_action_steps"):
            check_positive_int("VDDPolicyConfig", name, getattr(self, name))
        for name in ("num_experts", "hidden_dim", "depth"):
            check_positive_int("VDDPolicyConfig", name, getattr(self, name))
        if self.n_action_steps > self.chunk_size:
            raise ValueError(
                f"VDDPolicyConfig.n_action_steps ({self.n_action_steps}) cannot exceed chunk_size "
                f"({self.chunk_size}); lower n_action_steps"
            )
        validate_language("VDDPolicyConfig", self.language_encoder, self.tasks, self.language_encoder_path)
        validate_normalization("VDDPolicyConfig", self.normalization_mapping, (STATE_KEY, ACTION_KEY))
        if self.covariance not in COVARIANCES:
            raise ValueError(
                f"VDDPolicyConfig.covariance must be one of {list(COVARIANCES)}, got {self.covariance!r}"
            )
        if self.action_mode not in ACTION_MODES:
            raise ValueError(
                f"VDDPolicyConfig.action_mode must be one of {list(ACTION_MODES)}, got {self.action_mode!r}"
            )
        for name in ("init_std", "min_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"VDDPolicyConfig.{name} must be a positive number, got {value!r}")
        if not self.init_std > self.min_std:
            raise ValueError(
                f"VDDPolicyConfig.init_std ({self.init_std}) must exceed min_std ({self.min_std})"
            )
        if not isinstance(self.clip_sample, bool):
            raise ValueError(f"VDDPolicyConfig.clip_sample must be true or false, got {self.clip_sample!r}")

    # Derived --------------------------------------------------------------------------------------------
    @property
    def flat_action_dim(self) -> int:
        """Dimensions of one expert Gaussian: the whole chunk, flattened (chunk_size * action_dim)."""
        return self.chunk_size * self.action_dim

    @property
    def goal_dim(self) -> int | None:
        """Size of the instruction embedding, when known without loading the encoder."""
        return known_embedding_dim(self.language_encoder, self.tasks, self.language_encoder_path)

    @property
    def use_expert_cache(self) -> bool:
        """Always False: a one-step student has no sampler schedule to cache (read by ``evaluate``)."""
        return False

    @use_expert_cache.setter
    def use_expert_cache(self, value: bool) -> None:
        del value  # evaluate() toggles it for MoDE policies; nothing to do here

    # Construction from a teacher -------------------------------------------------------------------------
    @classmethod
    def from_teacher(cls, teacher_config: Any, **overrides: Any) -> VDDPolicyConfig:
        """The student of a MoDE policy config: its interface fields, n_action_steps, then ``overrides``."""
        values = {name: getattr(teacher_config, name) for name in INTERFACE_FIELDS}
        values["tasks"] = list(values["tasks"])
        values["normalization_mapping"] = dict(values["normalization_mapping"])
        values["n_action_steps"] = teacher_config.n_action_steps
        values["clip_sample"] = teacher_config.clip_sample
        for key in overrides:
            if key in INTERFACE_FIELDS:
                raise ValueError(
                    f"VDDPolicyConfig.{key} is copied from the teacher (the student must read what the "
                    "teacher reads); do not override it"
                )
        values.update(overrides)
        return cls.from_dict(values)

    # Serialisation ----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> VDDPolicyConfig:
        values = read_config_json(path, "VDDPolicy", "save_pretrained()")
        if values.get("policy_type") != POLICY_TYPE:
            raise ValueError(
                f"{path} is not a VDD student (policy_type is {values.get('policy_type')!r}, expected "
                f'"{POLICY_TYPE}"); load MoDE policies with MoDEPolicy.from_pretrained or '
                "mode_policy.evaluation.loading.load_policy"
            )
        try:
            return cls.from_dict(values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
