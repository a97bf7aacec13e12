"""Policies: config + normaliser + encoders + model + sampler, one registered class per policy type.

- ``mode`` (MoDEPolicy): a diffusion policy whose denoiser is any registered kind (MoDE and its routing
  family, the CNN baseline);
- ``vdd`` (VDDPolicy): a one-step Gaussian mixture of experts distilled from a diffusion policy.

``load_policy(path)`` builds whichever type a saved folder's config.json names; ``register_policy(name)``
adds a type (docs/ARCHITECTURE.md).
"""

from mode_policy.policies.base import ChunkingPolicy
from mode_policy.policies.config import PolicyConfig
from mode_policy.policies.mode.configuration import MoDEPolicyConfig
from mode_policy.policies.mode.modeling import MoDEPolicy
from mode_policy.policies.normalizer import NORMALIZATION_MODES, Normalizer, PerDatasetStats
from mode_policy.policies.registry import POLICIES, get_policy_class, load_policy, register_policy
from mode_policy.policies.vdd.configuration import VDDPolicyConfig
from mode_policy.policies.vdd.modeling import VDDPolicy

__all__ = [
    "NORMALIZATION_MODES",
    "POLICIES",
    "ChunkingPolicy",
    "MoDEPolicy",
    "MoDEPolicyConfig",
    "Normalizer",
    "PerDatasetStats",
    "PolicyConfig",
    "VDDPolicy",
    "VDDPolicyConfig",
    "get_policy_class",
    "load_policy",
    "register_policy",
]
