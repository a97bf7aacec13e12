"""Policies: config + normalizer + encoders + denoiser + sampler."""

from mode_policy.policies.configuration_mode import MoDEPolicyConfig
from mode_policy.policies.modeling_mode import MoDEPolicy
from mode_policy.policies.normalizer import NORMALIZATION_MODES, Normalizer

__all__ = ["NORMALIZATION_MODES", "MoDEPolicy", "MoDEPolicyConfig", "Normalizer"]
