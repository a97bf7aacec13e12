"""Evaluation: seeded rollouts, success rates with intervals, inference timing."""
