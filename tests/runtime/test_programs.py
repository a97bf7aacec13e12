"""Chunk programs (what export and compile take) equal their policy's sampler, for every family member."""

from __future__ import annotations

import pytest
import torch

from mode_policy.messages import ModePolicyWarning
from mode_policy.nn.moe.experts import SelectedExperts
from tests.policies.common import TASKS
from tests.runtime.common import VARIANTS, observations, variant_policy


def run_program(policy, program, obs: dict, seed: int = 5) -> torch.Tensor:
    """The program on ``obs`` with the noise the policy would draw from a generator of ``seed``."""
    inputs = policy._observation(obs, history=True)
    tasks = obs["task"]
    noise = program.draw_noise(len(tasks), torch.Generator().manual_seed(seed))
    index = torch.tensor([policy.config.tasks.index(t) for t in tasks])
    with torch.no_grad():
        return program(*program.inputs(inputs, policy._goal(tasks), noise, index))


@pytest.mark.parametrize("name", VARIANTS)
def test_a_program_equals_its_policy(name):
    policy = variant_policy(name)
    obs = observations(policy.config)
    expected = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    actual = run_program(policy, policy.chunk_program(), obs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["sigma", "task", "sigma_goal"])
def test_fused_experts_equal_the_cached_ones(name):
    policy = variant_policy(name)
    obs = observations(policy.config)
    expected = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    actual = run_program(policy, policy.chunk_program(fuse_experts=True), obs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_a_program_keeps_only_the_experts_some_step_uses():
    policy = variant_policy("sigma")
    program = policy.chunk_program()
    cache = policy.denoiser.cache_experts(policy.config.sampling_sigmas())
    for layer, block in enumerate(program.policy.denoiser.network.blocks):
        used = sorted({e for step in cache.expert_ids() for e in step[layer]})
        assert isinstance(block.moe.experts, SelectedExperts) and block.moe.router is None
        assert block.moe.experts.expert_ids == used
    assert isinstance(policy.denoiser.network.blocks[0].moe.experts, torch.nn.Module)
    assert policy.denoiser.network.blocks[0].moe.router is not None  # the policy itself is untouched


@pytest.mark.parametrize("name", ["task", "sigma_goal"])
def test_a_goal_routed_program_of_one_task(name):
    policy = variant_policy(name)
    obs = observations(policy.config)
    obs["task"] = [TASKS[1]] * len(obs["task"])
    program = policy.chunk_program(task=TASKS[1])
    assert not program.takes_task_index  # its experts are that task's: the goal is an input
    expected = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(run_program(policy, program, obs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_a_mot_program_encodes_its_context_once_per_chunk(attention):
    """Under causal attention the program runs the context tokens once per chunk and only the action tokens
    at each step, so the whole network never runs; bidirectional attention has no cache and runs it."""
    policy = variant_policy("mot", attention=attention)
    obs = observations(policy.config)
    whole = policy.predict_action_chunk(
        obs, generator=torch.Generator().manual_seed(5), use_expert_cache=False
    )
    program = policy.chunk_program()
    assert program._context_cache == (attention == "causal")
    whole_network_runs = []
    program.policy.denoiser.network.register_forward_hook(lambda *args: whole_network_runs.append(1))
    torch.testing.assert_close(run_program(policy, program, obs), whole, atol=1e-5, rtol=0)
    assert len(whole_network_runs) == (0 if attention == "causal" else policy.config.num_inference_steps)


@pytest.mark.parametrize("name", ["sigma", "token", "cnn", "mot", "vdd_mean"])
def test_a_task_for_a_program_that_serves_every_task_is_refused(name):
    with pytest.raises(ValueError, match="leave the task"):
        variant_policy(name).chunk_program(task=TASKS[0])


def test_a_stochastic_sampler_is_refused():
    policy = variant_policy("sigma")
    policy.config.sampler = "euler_ancestral"
    with pytest.raises(ValueError, match="draws noise at every step"):
        policy.chunk_program()


# torch.compile ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["sigma_goal", "token", "mot"])  # task-index gates; routers; MoT's context
def test_compiled_policy_equals_eager_and_compiles_once(name):
    policy = variant_policy(name, steps=3, depth=1)
    obs = observations(policy.config)
    eager = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert policy.compile() is policy and policy._compiled is not None

    def graphs() -> int:
        return torch._dynamo.utils.counters["stats"]["unique_graphs"]

    assert graphs() == 1  # one graph for the 3 sampler steps
    compiled = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    for batch in (3, 2, 5, 1):  # a second batch size compiles once more (then dynamic), never per call
        policy.predict_action_chunk(observations(policy.config, batch=batch))
    assert graphs() == 2


def test_changed_weights_fall_back_to_eager_with_a_warning(monkeypatch):
    policy = variant_policy("sigma")
    obs = observations(policy.config)

    def fake_compile(program, **options):  # the compiled program's wrapper, without the compiler
        return program

    monkeypatch.setattr(torch, "compile", fake_compile)
    policy.compile()
    before = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        policy.denoiser.network.head.bias.add_(1.0)
    with pytest.warns(ModePolicyWarning, match="weights changed after compile"):
        after = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    eager = variant_policy("sigma")
    with torch.no_grad():
        eager.denoiser.network.head.bias.add_(1.0)
    expected = eager.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(after, expected, atol=0, rtol=0)
    assert not torch.equal(before, after)


def test_a_machine_that_cannot_compile_stays_eager(monkeypatch):
    policy = variant_policy("sigma")
    obs = observations(policy.config)
    expected = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))

    def broken_compile(program, **options):
        def run(*inputs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(ModePolicyWarning, match="stays eager"):
        policy.compile()
    assert policy._compiled is None
    again = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(again, expected, atol=0, rtol=0)
