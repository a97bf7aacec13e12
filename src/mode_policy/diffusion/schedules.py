"""Sampling schedules: the decreasing noise levels a sampler walks through.

Every schedule returns a 1-D tensor of shape ``(steps + 1,)``: ``steps`` strictly decreasing positive noise
levels from ``sigma_max`` down to ``sigma_min``, followed by an exact ``0`` (the final step lands on the
clean estimate). With ``steps == 1`` the schedule is ``[sigma_max, 0]``. Values are computed in float64 and
the endpoints are written in exactly, then the result is cast to ``dtype``.

MoDE samples with the exponential (log-linear) schedule: 10 steps in the paper, 5 steps with
``sigma_min=1.0, sigma_max=80`` in its released configs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch


def exponential_schedule(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Log-linear noise levels: ``log(sigma)`` is evenly spaced from ``log(sigma_max)`` to ``log(sigma_min)``.

    Returns shape ``(steps + 1,)``, ending in 0.
    """
    steps = _check_schedule_args(steps, sigma_min, sigma_max, dtype)
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64)
    return _finish(log_sigmas.exp(), sigma_min, sigma_max, dtype, device)


def karras_schedule(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """EDM schedule (Karras et al. 2022, eq. 5): ``sigma ** (1 / rho)`` is evenly spaced.

    Larger ``rho`` concentrates steps at low noise; ``rho = 1`` is the linear schedule and ``rho -> inf``
    approaches the exponential one. Returns shape ``(steps + 1,)``, ending in 0.
    """
    steps = _check_schedule_args(steps, sigma_min, sigma_max, dtype)
    if not (isinstance(rho, numbers.Real) and math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a positive finite number (EDM uses 7.0), got {rho!r}")
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    max_root, min_root = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return _finish((max_root + ramp * (min_root - max_root)) ** rho, sigma_min, sigma_max, dtype, device)


def linear_schedule(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise levels evenly spaced from ``sigma_max`` to ``sigma_min``. Returns shape ``(steps + 1,)``."""
    steps = _check_schedule_args(steps, sigma_min, sigma_max, dtype)
    sigmas = torch.linspace(sigma_max, sigma_min, steps, dtype=torch.float64)
    return _finish(sigmas, sigma_min, sigma_max, dtype, device)


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "exponential": exponential_schedule,
    "karras": karras_schedule,
    "linear": linear_schedule,
}


def make_schedule(
    name: str,
    steps: int,
    sigma_min: float,
    sigma_max: float,
    *,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Build the schedule called ``name`` (``"exponential"``, ``"karras"`` or ``"linear"``).

    ``rho`` is used only by ``"karras"``. Returns shape ``(steps + 1,)``, strictly decreasing, ending in 0.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid choices: {', '.join(sorted(SCHEDULES))}")
    if name == "karras":
        return karras_schedule(steps, sigma_min, sigma_max, rho, dtype=dtype, device=device)
    return SCHEDULES[name](steps, sigma_min, sigma_max, dtype=dtype, device=device)


def _check_schedule_args(steps: int, sigma_min: float, sigma_max: float, dtype: torch.dtype) -> int:
    # bool is an Integral too, but steps=True is certainly a mistake.
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (the number of denoising steps), got {steps!r}")
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite noise level, got {value!r}")
    if sigma_min > sigma_max:
        raise ValueError(
            f"sigma_min must be <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}; "
            "did you swap them?"
        )
    if sigma_min == sigma_max and steps > 1:
        raise ValueError(
            f"sigma_min == sigma_max == {sigma_min} gives no strictly decreasing schedule with "
            f"{steps} steps; use steps=1 or a smaller sigma_min"
        )
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype (e.g. torch.float32), got {dtype}")
    return int(steps)


def _finish(
    sigmas: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    """Pin the endpoints of the float64 ``sigmas`` (steps,), append 0 and cast; returns (steps + 1,)."""
    # exp(log(x)) and (x ** (1/rho)) ** rho are off by an ulp or so; users compare against sigma_min/max.
    sigmas[0] = sigma_max
    if sigmas.numel() > 1:
        sigmas[-1] = sigma_min
    schedule = torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype=dtype, device=device)
    # Levels that are distinct in float64 can collide after the cast (e.g. many steps in float16).
    if not bool((schedule[1:] < schedule[:-1]).all()):
        raise ValueError(
            f"the schedule is not strictly decreasing in {dtype} ({sigmas.numel()} steps between "
            f"{sigma_min} and {sigma_max}); use fewer steps or a wider dtype such as torch.float64"
        )
    return schedule
