"""MoDEPolicy.predict_action_chunk with a given start ``noise`` and a committed action ``prefix``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mode_policy.nn import CNNDenoiserConfig, MoDEConfig
from tests.policies.common import ACTION_DIM, make_obs, tiny_policy, tiny_stats

CHUNK, BATCH, K = 8, 3, 4


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    denoiser = MoDEConfig(width=32, depth=2, heads=4, goal_dropout=0.0)
    return tiny_policy(chunk_size=CHUNK, n_action_steps=4, denoiser=denoiser).eval()


@pytest.fixture(scope="module")
def obs(policy):
    return make_obs(policy.config, batch=BATCH, seed=1)


def noise(seed: int = 5, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, CHUNK, ACTION_DIM, generator=torch.Generator().manual_seed(seed))


def prefix(seed: int = 7, k: int = K) -> torch.Tensor:
    """Actions inside the data range [min, max] of ``tiny_stats``."""
    stats = tiny_stats()["action"]
    low = torch.as_tensor(stats["min"], dtype=torch.float32)
    high = torch.as_tensor(stats["max"], dtype=torch.float32)
    unit = torch.rand(BATCH, k, ACTION_DIM, generator=torch.Generator().manual_seed(seed))
    return low + (high - low) * (0.05 + 0.9 * unit)


def row(obs: dict, i: int) -> dict:
    return {"observation.state": obs["observation.state"][i : i + 1], "task": [obs["task"][i]]}


@pytest.mark.parametrize("use_cache", [True, False])
def test_each_row_depends_only_on_its_own_noise(policy, obs, use_cache):
    n = noise()
    batched = policy.predict_action_chunk(obs, noise=n, use_expert_cache=use_cache)
    assert batched.shape == (BATCH, CHUNK, ACTION_DIM)
    for i in range(BATCH):
        single = policy.predict_action_chunk(row(obs, i), noise=n[i : i + 1], use_expert_cache=use_cache)
        torch.testing.assert_close(single[0], batched[i], rtol=0, atol=1e-5)


def test_noise_equals_the_generators_draw(policy, obs):
    drawn = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    given = policy.predict_action_chunk(obs, noise=noise(5))
    assert torch.equal(drawn, given)
    as_numpy = policy.predict_action_chunk(obs, noise=noise(5).numpy())
    assert torch.equal(as_numpy, given)
    assert not torch.allclose(policy.predict_action_chunk(obs, noise=noise(6)), given)


@pytest.mark.parametrize("use_cache", [True, False])
def test_prefix_is_held_and_the_rest_continues_it(policy, obs, use_cache):
    committed, n = prefix(), noise()
    chunk = policy.predict_action_chunk(obs, noise=n, prefix=committed, use_expert_cache=use_cache)
    assert chunk.shape == (BATCH, CHUNK, ACTION_DIM)
    torch.testing.assert_close(chunk[:, :K], committed, rtol=0, atol=1e-4)
    plain = policy.predict_action_chunk(obs, noise=n, use_expert_cache=use_cache)
    assert (chunk[:, K:] - plain[:, K:]).abs().max() > 1e-4  # the transformer attends across the chunk
    as_numpy = policy.predict_action_chunk(
        obs, noise=n.numpy(), prefix=committed.double().numpy(), use_expert_cache=use_cache
    )
    torch.testing.assert_close(as_numpy, chunk, rtol=0, atol=1e-5)


def test_prefix_with_the_cache_matches_without(policy, obs):
    committed, n = prefix(), noise()
    cached = policy.predict_action_chunk(obs, noise=n, prefix=committed, use_expert_cache=True)
    routed = policy.predict_action_chunk(obs, noise=n, prefix=committed, use_expert_cache=False)
    torch.testing.assert_close(cached, routed, rtol=1e-4, atol=1e-4)


def test_prefix_of_one_step_and_of_the_whole_chunk(policy, obs):
    one = prefix(k=1)
    torch.testing.assert_close(policy.predict_action_chunk(obs, prefix=one)[:, :1], one, rtol=0, atol=1e-4)
    whole = prefix(k=CHUNK)
    torch.testing.assert_close(policy.predict_action_chunk(obs, prefix=whole), whole, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "denoiser",
    [
        MoDEConfig(width=32, depth=2, heads=4, goal_dropout=0.0, router_input="task"),
        CNNDenoiserConfig(down_dims=(16, 32), cond_embed_dim=16, n_groups=4),
    ],
    ids=["goal_routed", "cnn"],
)
def test_prefix_with_other_denoisers(obs, denoiser):
    torch.manual_seed(0)
    other = tiny_policy(chunk_size=CHUNK, n_action_steps=4, denoiser=denoiser).eval()
    obs = dict(obs, task=["open the drawer", "push the puck", "open the drawer"])  # two expert groups
    committed, n = prefix(), noise()
    for use_cache in (True, False):
        chunk = other.predict_action_chunk(obs, noise=n, prefix=committed, use_expert_cache=use_cache)
        torch.testing.assert_close(chunk[:, :K], committed, rtol=0, atol=1e-4)


class _RecordingProgram:
    """Stands in for a compiled program: records the noise it is given and declines (None: eager)."""

    def __init__(self) -> None:
        self.noises: list = []

    def chunk(self, policy, observation, goal, tasks, generator, noise=None):
        self.noises.append(noise)
        return None


def test_the_compiled_program_gets_the_noise_and_a_prefix_goes_eager(policy, obs):
    n = noise()
    expected = policy.predict_action_chunk(obs, noise=n)
    with_prefix = policy.predict_action_chunk(obs, noise=n, prefix=prefix())
    policy._compiled = program = _RecordingProgram()
    try:
        assert torch.equal(policy.predict_action_chunk(obs, noise=n), expected)
        assert len(program.noises) == 1 and torch.equal(program.noises[0], torch.as_tensor(n))
        assert torch.equal(policy.predict_action_chunk(obs, prefix=prefix(), noise=n), with_prefix)
        assert len(program.noises) == 1  # a prefix is held by the eager sampler only
    finally:
        policy._compiled = None


def _nan(shape) -> torch.Tensor:
    value = torch.zeros(shape)
    value[0, 0, 0] = float("nan")
    return value


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise": torch.zeros(BATCH, CHUNK - 1, ACTION_DIM)}, r"noise must have shape \(B=3, chunk_size=8"),
        ({"noise": torch.zeros(BATCH + 1, CHUNK, ACTION_DIM)}, "noise must have shape"),
        ({"noise": torch.zeros(CHUNK, ACTION_DIM)}, "noise must have shape"),
        ({"noise": np.zeros((BATCH, CHUNK, ACTION_DIM + 1))}, "noise must have shape"),
        ({"noise": _nan((BATCH, CHUNK, ACTION_DIM))}, "noise contains NaN or inf"),
        ({"noise": "noise"}, "noise must be an array"),
        ({"prefix": torch.zeros(BATCH, 0, ACTION_DIM)}, r"prefix must have shape \(B=3, k, action_dim=2\)"),
        ({"prefix": torch.zeros(BATCH, CHUNK + 1, ACTION_DIM)}, r"1 <= k <= chunk_size=8"),
        ({"prefix": torch.zeros(BATCH, K, ACTION_DIM + 1)}, "prefix must have shape"),
        ({"prefix": torch.zeros(1, K, ACTION_DIM)}, "prefix must have shape"),
        ({"prefix": np.zeros((BATCH, ACTION_DIM))}, "prefix must have shape"),
        ({"prefix": _nan((BATCH, K, ACTION_DIM))}, "prefix contains NaN or inf"),
        ({"prefix": torch.zeros(BATCH, K, ACTION_DIM, dtype=torch.bool)}, "real numbers"),
    ],
)
def test_bad_noise_or_prefix_is_refused_in_one_line(policy, obs, kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        policy.predict_action_chunk(obs, **kwargs)
    assert "\n" not in str(error.value)
