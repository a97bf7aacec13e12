"""The expert cache: equal outputs, keyed by step, rebuilt when weights change, refuses token routing."""

import copy

import pytest
import torch

from mode_policy import ExpertCacheError
from mode_policy.diffusion import exponential_schedule, sample
from tests.conftest import random_inputs, tiny_denoiser

SIGMAS = exponential_schedule(6, sigma_min=0.05, sigma_max=80.0, dtype=torch.float64)


def uncached_and_cached(denoiser, x, obs, goal, sigmas=SIGMAS):
    cache = denoiser.cache_experts(sigmas)
    for step in range(cache.num_steps):
        uncached = denoiser(x, sigmas[step], obs, goal)
        cached = denoiser(x, sigmas[step], obs, goal, cached_step=cache.step(step))
        yield step, uncached, cached


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize(
    "variant", [{}, {"shared_expert": True, "num_experts": 5, "top_k": 3}, {"residual": "reference"}]
)
def test_cached_equals_uncached_at_every_step(batch, variant):
    denoiser = tiny_denoiser(**variant).eval()
    x, obs, goal = random_inputs(denoiser.config, batch)
    for _, uncached, cached in uncached_and_cached(denoiser, x * 10, obs, goal):
        torch.testing.assert_close(cached, uncached, atol=1e-12, rtol=1e-12)


def test_cached_equals_uncached_in_float32():
    denoiser = tiny_denoiser(dtype=torch.float32).eval()
    x, obs, goal = random_inputs(denoiser.config, 7, dtype=torch.float32)
    sigmas = SIGMAS.float()
    for _, uncached, cached in uncached_and_cached(denoiser, x, obs, goal, sigmas):
        torch.testing.assert_close(cached, uncached, atol=2e-5, rtol=2e-5)


def test_routing_changes_across_steps_so_the_cache_is_not_trivial():
    # Guard for the tests above: with one routing for every step they would prove little.
    denoiser = tiny_denoiser(num_experts=8, top_k=2).eval()
    routes = denoiser.cache_experts(exponential_schedule(20, 1e-3, 80.0, dtype=torch.float64)).expert_ids()
    assert len({tuple(step) for step in routes}) > 1


def test_sampling_with_and_without_cache_is_identical():
    denoiser = tiny_denoiser().eval()
    _, obs, goal = random_inputs(denoiser.config, 7)
    for method in ("ddim", "heun", "dpmpp_2m"):
        cached = denoiser.sample_actions(
            obs, goal, SIGMAS, method=method, generator=torch.Generator().manual_seed(0)
        )
        uncached = denoiser.sample_actions(
            obs, goal, SIGMAS, method=method, generator=torch.Generator().manual_seed(0), use_cache=False
        )
        torch.testing.assert_close(cached, uncached, atol=1e-10, rtol=1e-10)


def test_cache_is_rebuilt_after_an_optimizer_step():
    denoiser = tiny_denoiser()
    cache = denoiser.cache_experts(SIGMAS)
    builds = cache.builds
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=0.5)
    action, obs, goal = random_inputs(denoiser.config, 4)
    denoiser.train()
    denoiser.loss(action, obs, goal, sigma=torch.rand(4, dtype=torch.float64) + 0.1).total.backward()
    optimizer.step()
    denoiser.eval()
    for _, uncached, cached in uncached_and_cached(denoiser, action, obs, goal):
        torch.testing.assert_close(cached, uncached, atol=1e-12, rtol=1e-12)
    assert cache.builds == builds + 1


def test_cache_follows_load_state_dict_and_data_swaps():
    denoiser = tiny_denoiser().eval()
    other = tiny_denoiser().eval()  # different random weights, different routing
    x, obs, goal = random_inputs(denoiser.config, 3)
    model = denoiser.bind(obs, goal, SIGMAS)
    denoiser.load_state_dict(other.state_dict())
    expected = other(x, SIGMAS[2], obs, goal)
    torch.testing.assert_close(model(x, SIGMAS[2], step=2), expected, atol=1e-12, rtol=1e-12)

    # An EMA-style swap through .data bypasses version counters; binding checks the contents.
    ema = copy.deepcopy(tiny_denoiser().eval())
    for target, source in zip(denoiser.parameters(), ema.parameters(), strict=True):
        target.data.copy_(source.data)
    model = denoiser.bind(obs, goal, SIGMAS)
    torch.testing.assert_close(
        model(x, SIGMAS[2], step=2), ema(x, SIGMAS[2], obs, goal), atol=1e-12, rtol=1e-12
    )


def test_cache_is_keyed_by_step_not_by_sigma_value():
    denoiser = tiny_denoiser().eval()
    cache = denoiser.cache_experts(SIGMAS)
    with pytest.raises(ExpertCacheError, match="outside this expert cache"):
        cache.step(len(SIGMAS) - 1)  # the trailing 0 is never evaluated
    other_schedule = exponential_schedule(6, sigma_min=0.1, sigma_max=80.0, dtype=torch.float64)
    assert not cache.matches(other_schedule)
    assert denoiser.cache_experts(other_schedule) is not cache  # a new schedule gets a new cache
    assert denoiser.cache_experts(other_schedule) is denoiser.cache_experts(other_schedule.clone())


def test_cache_refuses_token_routing():
    denoiser = tiny_denoiser(router_input="token").eval()
    with pytest.raises(ExpertCacheError, match="depend on each token"):
        denoiser.cache_experts(SIGMAS)
    _, obs, goal = random_inputs(denoiser.config, 2)
    # Sampling still works: it simply routes at every step.
    assert denoiser.sample_actions(obs, goal, SIGMAS).shape == (2, 4, 2)


def test_cache_refuses_training_mode():
    denoiser = tiny_denoiser()
    cache = denoiser.cache_experts(SIGMAS)
    with pytest.raises(ExpertCacheError, match=r"\.eval\(\)"):
        cache.step(0)


def test_cache_memory_is_small_and_holds_no_expert_copies():
    denoiser = tiny_denoiser(width=64, depth=4).eval()
    cache = denoiser.cache_experts(exponential_schedule(10, 0.05, 80.0, dtype=torch.float64))
    weight_bytes = sum(p.numel() * p.element_size() for p in denoiser.parameters())
    assert cache.memory_bytes() < 0.1 * weight_bytes
    expert_shapes = {tuple(p.shape[1:]) for name, p in denoiser.named_parameters() if "experts" in name}
    for step in cache._steps:
        assert tuple(step.sigma_embedding.shape) == (1, 64)
        assert tuple(step.sigma_embedding.shape[1:]) not in expert_shapes


def test_sample_passes_steps_to_the_bound_model():
    denoiser = tiny_denoiser().eval()
    _, obs, goal = random_inputs(denoiser.config, 2)
    seen = []
    bound = denoiser.bind(obs, goal, SIGMAS)

    def model(x, sigma, step):
        seen.append(step)
        return bound(x, sigma, step)

    sample(model, torch.randn(2, 4, 2, dtype=torch.float64) * SIGMAS[0], SIGMAS, method="ddim")
    assert seen == list(range(len(SIGMAS) - 1))
