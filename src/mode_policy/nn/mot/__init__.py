"""Mixture-of-Transformers (the ``"mot"`` denoiser kind): weights per token group, global attention."""

from mode_policy.nn.mot.config import MoTConfig
from mode_policy.nn.mot.denoiser import MoTDenoiser

__all__ = ["MoTConfig", "MoTDenoiser"]
