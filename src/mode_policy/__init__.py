"""mode-policy: multitask imitation learning with Mixture-of-Denoising-Experts diffusion policies.

The names below load on first use, so that importing a light submodule (the environment workers, the
data reader, the command line) does not import torch.
"""

from mode_policy.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ExpertCache": "mode_policy.nn.expert_cache",
    "ExpertCacheError": "mode_policy.nn.expert_cache",
    "MoDEConfig": "mode_policy.nn.config",
    "MoDEDenoiser": "mode_policy.nn.denoiser",
}
__all__ = [*sorted(_EXPORTS), "__version__"]
__getattr__ = lazy_exports(globals(), _EXPORTS)
