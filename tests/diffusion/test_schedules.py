from __future__ import annotations

import math

import pytest
import torch

from mode_policy.diffusion.schedules import (
    SCHEDULES,
    exponential_schedule,
    karras_schedule,
    linear_schedule,
    make_schedule,
)

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("steps", [1, 2, 5, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_schedule_shape_order_and_exact_endpoints(name: str, steps: int, dtype: torch.dtype) -> None:
    sigmas = make_schedule(name, steps, SIGMA_MIN, SIGMA_MAX, dtype=dtype)

    assert sigmas.shape == (steps + 1,)
    assert sigmas.dtype == dtype
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert sigmas[-1].item() == 0.0
    # Endpoints are written in exactly, so they equal the requested values after rounding to dtype.
    assert sigmas[0].item() == torch.tensor(SIGMA_MAX, dtype=dtype).item()
    if steps > 1:
        assert sigmas[-2].item() == torch.tensor(SIGMA_MIN, dtype=dtype).item()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_single_step_goes_straight_from_sigma_max_to_zero(name: str) -> None:
    sigmas = make_schedule(name, 1, 1.0, 80.0, dtype=torch.float64)
    assert sigmas.tolist() == [80.0, 0.0]
    # sigma_min == sigma_max is fine when there is only one noise level.
    assert make_schedule(name, 1, 3.0, 3.0).tolist() == [3.0, 0.0]


def test_exponential_schedule_is_log_linear() -> None:
    sigmas = exponential_schedule(10, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    log_steps = sigmas[:-1].log().diff()
    expected_step = (math.log(SIGMA_MIN) - math.log(SIGMA_MAX)) / 9
    torch.testing.assert_close(log_steps, torch.full_like(log_steps, expected_step), rtol=1e-12, atol=1e-12)


def test_exponential_schedule_matches_mode_release_config() -> None:
    # MoDE's released configs: 5 steps from 80 to 1, a constant ratio of (1/80) ** (1/4) between levels.
    sigmas = exponential_schedule(5, 1.0, 80.0, dtype=torch.float64)
    expected = [80.0 * (1.0 / 80.0) ** (i / 4) for i in range(5)] + [0.0]
    torch.testing.assert_close(sigmas, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_schedule_is_linear_in_sigma_to_the_one_over_rho(rho: float) -> None:
    sigmas = karras_schedule(12, SIGMA_MIN, SIGMA_MAX, rho, dtype=torch.float64)
    root_steps = (sigmas[:-1] ** (1 / rho)).diff()
    expected_step = (SIGMA_MIN ** (1 / rho) - SIGMA_MAX ** (1 / rho)) / 11
    torch.testing.assert_close(root_steps, torch.full_like(root_steps, expected_step), rtol=1e-10, atol=1e-12)


def test_karras_with_rho_one_is_the_linear_schedule_and_make_schedule_passes_rho() -> None:
    karras = karras_schedule(8, 0.5, 20.0, rho=1.0, dtype=torch.float64)
    torch.testing.assert_close(karras, linear_schedule(8, 0.5, 20.0, dtype=torch.float64), rtol=1e-12, atol=0)
    via_name = make_schedule("karras", 8, 0.5, 20.0, rho=1.0, dtype=torch.float64)
    torch.testing.assert_close(via_name, karras, rtol=0, atol=0)
    # Higher rho spends more of the steps at low noise.
    assert karras_schedule(8, 0.5, 20.0, rho=7.0)[4] < karras[4]


def test_linear_schedule_is_evenly_spaced() -> None:
    sigmas = linear_schedule(6, 1.0, 11.0, dtype=torch.float64)
    assert sigmas.tolist() == [11.0, 9.0, 7.0, 5.0, 3.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, r"steps must be an integer >= 1"),
        ({"steps": 2.5}, r"steps must be an integer >= 1"),
        ({"steps": True}, r"steps must be an integer >= 1"),
        ({"sigma_min": 0.0}, r"sigma_min must be a positive finite"),
        ({"sigma_min": -1.0}, r"sigma_min must be a positive finite"),
        ({"sigma_max": math.inf}, r"sigma_max must be a positive finite"),
        ({"sigma_min": 80.0, "sigma_max": 1.0}, r"sigma_min must be <= sigma_max.*swap"),
        ({"sigma_min": 5.0, "sigma_max": 5.0}, r"use steps=1 or a smaller sigma_min"),
        ({"dtype": torch.int64}, r"dtype must be a floating-point dtype"),
    ],
)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_bad_arguments_raise_helpful_value_errors(name: str, kwargs: dict, message: str) -> None:
    arguments = {"steps": 10, "sigma_min": 1.0, "sigma_max": 80.0} | kwargs
    dtype = arguments.pop("dtype", torch.float32)
    with pytest.raises(ValueError, match=message):
        make_schedule(name, **arguments, dtype=dtype)


def test_karras_rejects_non_positive_rho() -> None:
    with pytest.raises(ValueError, match=r"rho must be a positive finite number"):
        make_schedule("karras", 10, 1.0, 80.0, rho=0.0)


def test_unknown_schedule_name_lists_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown schedule 'cosine'; valid choices: exponential, karras, linear"
    ):
        make_schedule("cosine", 10, 1.0, 80.0)


def test_levels_that_collide_after_the_cast_are_reported() -> None:
    # 1000 levels between 1.0 and 1.001 are distinct in float64 but not in float16 (spacing ~1e-3).
    with pytest.raises(ValueError, match=r"not strictly decreasing in torch.float16.*torch.float64"):
        linear_schedule(1000, 1.0, 1.001, dtype=torch.float16)
