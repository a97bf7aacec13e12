"""MAC counting sees every matmul, the experts included."""

import torch

from mode_policy.diffusion import exponential_schedule
from mode_policy.nn.flops import analytic_chunk_macs, count_chunk_macs
from tests.conftest import tiny_denoiser

SIGMAS = exponential_schedule(4, 0.05, 80.0)


def test_counted_macs_equal_the_closed_form_including_experts():
    for overrides in (
        {},
        {"shared_expert": True, "num_experts": 5, "top_k": 3},
        {"num_experts": 1, "top_k": 1},
    ):
        denoiser = tiny_denoiser(dtype=torch.float32, **overrides)
        for cached in (True, False):
            counted = count_chunk_macs(denoiser, SIGMAS, batch_size=3, use_cache=cached)
            expected = analytic_chunk_macs(denoiser.config, batch_size=3, model_evaluations=4, cached=cached)
            assert counted.macs == sum(expected.values()), (overrides, cached, counted.by_operator, expected)
            assert expected["experts"] > 0.5 * counted.macs  # the experts are most of the work here


def test_doubling_expert_width_adds_exactly_the_expert_macs():
    small = count_chunk_macs(tiny_denoiser(dtype=torch.float32, expert_hidden_mult=2), SIGMAS, use_cache=True)
    large = count_chunk_macs(tiny_denoiser(dtype=torch.float32, expert_hidden_mult=4), SIGMAS, use_cache=True)
    config = tiny_denoiser().config
    tokens = config.sequence_length
    expert_macs_per_hidden_unit = (
        config.depth * config.top_k * tokens * 3 * config.width * 4
    )  # x 4 evaluations
    assert large.macs - small.macs == expert_macs_per_hidden_unit * 2 * config.width


def test_attention_scores_are_counted_on_cpu():
    counted = count_chunk_macs(tiny_denoiser(dtype=torch.float32), SIGMAS, use_cache=True)
    assert any("scaled_dot_product" in op and macs > 0 for op, macs in counted.by_operator.items())


def test_heun_counts_its_extra_evaluations():
    denoiser = tiny_denoiser(dtype=torch.float32)
    ddim = count_chunk_macs(denoiser, SIGMAS, method="ddim")
    heun = count_chunk_macs(denoiser, SIGMAS, method="heun")
    assert heun.model_evaluations == 7 and ddim.model_evaluations == 4
    assert heun.macs * 4 == ddim.macs * 7
