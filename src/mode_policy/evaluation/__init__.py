"""Evaluation: seeded rollouts, success rates with intervals, inference timing.

``evaluate`` loads on first use: the environment worker processes import this package and need no torch.
"""

from mode_policy.lazy import lazy_exports

_EXPORTS = {
    "evaluate": "mode_policy.evaluation.rollout",
    "summarize": "mode_policy.evaluation.stats",
    "wilson_interval": "mode_policy.evaluation.stats",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(globals(), _EXPORTS)
