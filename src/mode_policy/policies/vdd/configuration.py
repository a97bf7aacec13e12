"""VDDPolicyConfig: a one-step Gaussian-mixture student distilled from a diffusion policy (VDD).

config = VDDPolicyConfig.from_teacher(teacher.config, num_experts=4)
config.save("run/policy/config.json"); VDDPolicyConfig.load("run/policy/config.json")

The observation/action layout, language encoder and normalisation (the PolicyConfig fields) are copied
from the teacher: the student reads exactly what the teacher reads. The rest describes the mixture:
``num_experts`` Gaussian experts over the whole flattened action chunk (``chunk_size * action_dim``
dimensions), their covariance form, the MLP trunk, and how an action is chosen at inference.
config.json says ``"type": "vdd"`` (students saved before the tag say ``"policy_type": "vdd"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mode_policy.config_io import check_positive_int
from mode_policy.policies.config import PolicyConfig
from mode_policy.policies.vdd.mixture import ACTION_MODES

COVARIANCES = ("full", "diagonal")
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
class VDDPolicyConfig(PolicyConfig):
    """A mixture-of-Gaussian-experts policy pi(a|s) = sum_z q(z|s) N(a; mu_z(s), L_z(s) L_z(s)^T).

    Defaults: 4 experts with full (lower-triangular Cholesky) covariances over the 40-d Meta-World chunk
    (10 x 4), a 3-layer width-256 MLP trunk shared by the experts, and a gating head on the trunk's
    (detached) features, as in VDD's reference agent.
    """

    describe: ClassVar[str] = "VDD student"

    # The mixture.
    num_experts: int = 4
    covariance: str = "full"  # "full" (Cholesky, softplus diagonal) or "diagonal" (faster)
    hidden_dim: int = 256
    depth: int = 3  # trunk layers
    init_std: float = 0.5  # initial expert standard deviation, in the normalised action space
    min_std: float = 1e-3  # floor added to the softplus diagonal: keeps log-densities finite
    action_mode: str = "mean"

    def validate(self) -> None:
        """Check every field; messages name the field and the fix."""
        super().validate()
        for name in ("num_experts", "hidden_dim", "depth"):
            check_positive_int("VDDPolicyConfig", name, getattr(self, name))
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

    # Derived --------------------------------------------------------------------------------------------
    @property
    def flat_action_dim(self) -> int:
        """Dimensions of one expert Gaussian: the whole chunk, flattened (chunk_size * action_dim)."""
        return self.chunk_size * self.action_dim

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
