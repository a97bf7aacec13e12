"""A tiny served policy for the serving tests (all on 127.0.0.1, port chosen by the OS)."""

from __future__ import annotations

import numpy as np

from tests.runtime.common import variant_policy

TOKEN = "test-token-7f3a"


def served_policy(name: str = "sigma"):
    return variant_policy(name, steps=3)


def observation(policy, seed: int = 0) -> dict[str, np.ndarray]:
    """One sample of the protocol: the state (state_dim,) float32."""
    rng = np.random.default_rng(seed)
    return {"observation.state": rng.standard_normal(policy.config.state_dim).astype(np.float32)}
