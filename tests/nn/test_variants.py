"""The routing family: every variant trains, saves, reloads and samples; caching per variant; conversions."""

from dataclasses import asdict

import pytest
import torch

from mode_policy import ExpertCacheError, MoDEConfig, MoDEDenoiser
from mode_policy.diffusion import LogLogisticSigma, exponential_schedule
from mode_policy.nn.variants import dense_config_like, extract_task_model, split_into_stages
from tests.conftest import random_inputs, tiny_config, tiny_denoiser

SIGMAS = exponential_schedule(6, sigma_min=0.05, sigma_max=80.0, dtype=torch.float64)

VARIANTS = {
    "mode": {},
    "mode_shared": {"shared_expert": True, "num_experts": 5, "top_k": 3},
    "token": {"router_input": "token", "shared_expert": True, "num_experts": 5, "top_k": 3},
    "task": {"router_input": "task"},
    "sigma_goal": {"router_input": "sigma_goal"},
    "stage": {"router_input": "stage", "stage_boundaries": [2.0, 0.3], "num_experts": 3, "top_k": 1},
    "dense_active": asdict(dense_config_like(tiny_config(), "active")),  # the fields, as constructor kwargs
    "dense_total": asdict(dense_config_like(tiny_config(), "total")),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_trains_saves_reloads_and_predicts(name, tmp_path):
    denoiser = tiny_denoiser(dtype=torch.float32, **VARIANTS[name])
    action, obs, goal = random_inputs(denoiser.config, 16, dtype=torch.float32)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-3)
    for _ in range(3):
        losses = denoiser.loss(action, obs, goal, sigma=LogLogisticSigma().sample(16))
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        assert torch.isfinite(losses.total)
    denoiser.eval().save_pretrained(tmp_path)
    reloaded = MoDEDenoiser.from_pretrained(tmp_path).eval()
    first = denoiser.sample_actions(obs, goal, SIGMAS.float(), generator=torch.Generator().manual_seed(0))
    second = reloaded.sample_actions(obs, goal, SIGMAS.float(), generator=torch.Generator().manual_seed(0))
    assert first.shape == (16, denoiser.config.chunk_size, denoiser.config.action_dim)
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_dense_baselines_match_active_and_total_expert_parameters():
    config = tiny_config()
    mode = MoDEDenoiser(config)
    routers = sum(p.numel() for b in mode.network.blocks for p in b.moe.router.parameters())
    active = MoDEDenoiser(dense_config_like(config, "active")).parameter_counts()["total"]
    total = MoDEDenoiser(dense_config_like(config, "total")).parameter_counts()["total"]
    assert active == mode.parameter_counts()["active"] - routers
    assert total == mode.parameter_counts()["total"] - routers


def test_token_routing_cannot_be_cached_and_says_so():
    denoiser = tiny_denoiser(router_input="token").eval()
    assert not denoiser.config.cacheable
    with pytest.raises(ExpertCacheError, match="depend on each token"):
        denoiser.cache_experts(SIGMAS)


@pytest.mark.parametrize("name", ["task", "sigma_goal", "stage"])
@pytest.mark.parametrize("shared_goal", [True, False])
def test_cached_sampling_equals_uncached_for_goal_and_stage_routing(name, shared_goal):
    denoiser = tiny_denoiser(**VARIANTS[name]).eval()
    _, obs, goal = random_inputs(denoiser.config, 7)
    if shared_goal:
        goal = goal[:1].expand_as(goal).clone()
    else:
        goal[3:5] = goal[0]  # three samples share a task, the rest differ
    cached = denoiser.sample_actions(obs, goal, SIGMAS, generator=torch.Generator().manual_seed(0))
    uncached = denoiser.sample_actions(
        obs, goal, SIGMAS, generator=torch.Generator().manual_seed(0), use_cache=False
    )
    torch.testing.assert_close(cached, uncached, atol=1e-10, rtol=1e-10)


def test_goal_cache_is_keyed_per_goal_and_rebuilt_after_an_optimizer_step():
    denoiser = tiny_denoiser(router_input="task", num_experts=8, top_k=2).eval()
    *_, goal = random_inputs(denoiser.config, 2)
    cache = denoiser.cache_experts(SIGMAS)
    keys = [cache.add_goal(goal[0]), cache.add_goal(goal[1]), cache.add_goal(goal[0].clone())]
    assert keys[0] == keys[2] != keys[1]
    # Task routing ignores sigma: every step of one goal uses the same experts.
    assert len({tuple(step) for step in cache.expert_ids(keys[0])}) == 1
    builds = cache.builds
    optimizer = torch.optim.SGD(denoiser.parameters(), lr=1.0)
    for parameter in denoiser.network.goal_proj.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    cache.step(0, keys[0])
    assert cache.builds == builds + 1


def test_extracted_task_model_is_smaller_and_computes_the_same():
    denoiser = tiny_denoiser(router_input="task", num_experts=6, top_k=2).eval()
    _, obs, goal = random_inputs(denoiser.config, 5)
    goal[:] = goal[0]
    task_model = extract_task_model(denoiser, goal[0]).eval()
    config = denoiser.config
    expert_params = 3 * config.width * config.expert_hidden
    router_params = sum(p.numel() for b in denoiser.network.blocks for p in b.moe.router.parameters())
    removed = config.depth * (config.num_experts - config.top_k) * expert_params + router_params
    fixed_weights = config.depth * config.top_k
    assert task_model.parameter_counts()["total"] == denoiser.parameter_counts()["total"] - removed
    assert sum(b.numel() for b in task_model.buffers()) >= fixed_weights
    x = torch.randn(5, config.chunk_size, config.action_dim, dtype=torch.float64)
    for sigma in (0.05, 1.0, 30.0):
        torch.testing.assert_close(task_model(x, sigma, obs, goal), denoiser(x, sigma, obs, goal))


def test_extraction_refuses_models_that_are_not_task_routed():
    with pytest.raises(ValueError, match=r"change with sigma"):
        extract_task_model(tiny_denoiser(router_input="sigma_goal"), torch.zeros(3))
    with pytest.raises(ValueError, match="router_input='task'"):
        extract_task_model(tiny_denoiser(), torch.zeros(3))


def test_stage_routing_uses_the_right_expert_on_each_side_of_a_boundary():
    denoiser = tiny_denoiser(**VARIANTS["stage"]).eval()  # boundaries 2.0 and 0.3 -> stages 0, 1, 2
    sigmas = torch.tensor([80.0, 2.0001, 1.9999, 0.3001, 0.2999, 0.01], dtype=torch.float64)
    routes = denoiser.cache_experts(torch.cat([sigmas, sigmas.new_zeros(1)])).expert_ids()
    assert [step[0] for step in routes] == [(0,), (0,), (1,), (1,), (2,), (2,)]
    # The uncached path agrees, per sample in one batch.
    context = denoiser.network.route_context(None, sigmas.log() / 4, None)
    assert context.tolist() == [0, 0, 1, 1, 2, 2]


def test_stage_split_of_a_dense_model_computes_the_same_then_trains_per_stage():
    dense = tiny_denoiser(**VARIANTS["dense_active"]).eval()
    staged = split_into_stages(dense, [1.0]).eval()
    x, obs, goal = random_inputs(dense.config, 4)
    for sigma in (0.1, 1.0, 10.0):
        torch.testing.assert_close(staged(x, sigma, obs, goal), dense(x, sigma, obs, goal))
    # Fine-tuning at low sigma only moves the low-noise stage's expert.
    staged.train()
    staged.loss(x, obs, goal, sigma=torch.full((4,), 0.1, dtype=torch.float64)).total.backward()
    grad = staged.network.blocks[0].moe.experts.w_in.grad
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0


def test_stage_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="stage_boundaries"):
        MoDEConfig(router_input="stage")
    with pytest.raises(ValueError, match="num_experts=3, top_k=1"):
        MoDEConfig(router_input="stage", stage_boundaries=[2.0, 0.3])
    with pytest.raises(ValueError, match="strictly decreasing"):
        MoDEConfig(router_input="stage", stage_boundaries=[0.3, 2.0], num_experts=3, top_k=1)


@pytest.mark.parametrize("name", ["mode", "token", "stage", "task"])
def test_expert_usage_is_measured_per_step_and_plotted(name, tmp_path):
    from mode_policy.nn.usage import expert_usage, plot_expert_usage

    denoiser = tiny_denoiser(**VARIANTS[name]).eval()
    _, obs, goal = random_inputs(denoiser.config, 3)
    usage = expert_usage(denoiser, obs, goal, SIGMAS)
    experts = denoiser.network.blocks[0].moe.experts.num_experts
    assert usage.shape == (len(SIGMAS) - 1, denoiser.config.depth, experts)
    torch.testing.assert_close(usage.sum(-1), torch.ones(usage.shape[:2]))
    if name in ("mode", "stage"):  # one routing per step: usage equals the cache's choice
        routes = denoiser.cache_experts(SIGMAS).expert_ids()
        for step, layers in enumerate(routes):
            for layer, ids in enumerate(layers):
                assert set(torch.nonzero(usage[step, layer]).flatten().tolist()) == set(ids)
    png = plot_expert_usage(usage, SIGMAS, tmp_path / "usage.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
