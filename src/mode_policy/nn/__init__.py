"""Network building blocks: attention, the mixture-of-experts layer, denoisers and their config."""

from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.denoiser import DenoiserLoss, MoDEDenoiser
from mode_policy.nn.expert_cache import ExpertCache, ExpertCacheError
from mode_policy.nn.transformer import MoDETransformer

__all__ = ["DenoiserLoss", "ExpertCache", "ExpertCacheError", "MoDEConfig", "MoDEDenoiser", "MoDETransformer"]
