"""Network building blocks: attention, the mixture-of-experts layer, denoisers (by kind) and their configs."""

from mode_policy.nn.cnn import CNNDenoiser, CNNDenoiserConfig
from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.denoiser import DenoiserLoss, MoDEDenoiser
from mode_policy.nn.expert_cache import ExpertCache, ExpertCacheError, can_cache_experts
from mode_policy.nn.mot import MoTConfig, MoTDenoiser
from mode_policy.nn.registry import DENOISERS, denoiser_config_from_dict, load_denoiser
from mode_policy.nn.transformer import MoDETransformer

__all__ = [
    "DENOISERS",
    "CNNDenoiser",
    "CNNDenoiserConfig",
    "DenoiserLoss",
    "ExpertCache",
    "ExpertCacheError",
    "MoDEConfig",
    "MoDEDenoiser",
    "MoDETransformer",
    "MoTConfig",
    "MoTDenoiser",
    "can_cache_experts",
    "denoiser_config_from_dict",
    "load_denoiser",
]
