"""Evaluation: seeded rollouts, success rates with intervals, inference timing."""

from mode_policy.evaluation.rollout import evaluate
from mode_policy.evaluation.stats import summarize, wilson_interval

__all__ = ["evaluate", "summarize", "wilson_interval"]
