"""mode-policy: multitask imitation learning with Mixture-of-Denoising-Experts diffusion policies."""

from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.denoiser import MoDEDenoiser
from mode_policy.nn.expert_cache import ExpertCache, ExpertCacheError

__version__ = "0.1.0"

__all__ = ["ExpertCache", "ExpertCacheError", "MoDEConfig", "MoDEDenoiser", "__version__"]
