"""Training-time distributions of the noise level ``sigma``.

Each training example gets a noise level drawn from one of these distributions and the denoiser learns to
recover the clean action from ``a + sigma * eps``. MoDE trains with a truncated log-logistic distribution
(:class:`LogLogisticSigma`, its default); EDM (Karras et al. 2022) uses a log-normal one
(:class:`LogNormalSigma`).

Truncation is exact: a uniform variable restricted to ``[cdf(sigma_min), cdf(sigma_max)]`` is pushed
through the inverse CDF, as in the MoDE reference code. Clamping instead would pile probability mass on the
bounds, and rejection sampling would make the cost random. The arithmetic runs in float64 and is cast to
the requested dtype at the end, so the bounds also hold after rounding.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import torch

Shape = tuple[int, ...] | int


class SigmaDistribution(Protocol):
    """What training code needs from a noise-level distribution."""

    def sample(
        self,
        shape: Shape,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class LogLogisticSigma:
    """``sigma = exp(L)`` with ``L ~ Logistic(loc, scale)``, truncated exactly to ``[sigma_min, sigma_max]``.

    The untruncated median is ``exp(loc)``. The defaults are MoDE's (median 0.5, sigma in [1e-3, 80]).
    """

    loc: float = math.log(0.5)
    scale: float = 0.5
    sigma_min: float = 1e-3
    sigma_max: float = 80.0

    def __post_init__(self) -> None:
        _check_finite("loc", self.loc)
        _check_positive("scale", self.scale, hint="it is the spread of log(sigma)")
        _check_bounds(self.sigma_min, self.sigma_max, required=True)
        low, high = self._cdf_bounds()
        if not low < high:
            raise ValueError(
                f"[sigma_min, sigma_max] = [{self.sigma_min}, {self.sigma_max}] has (numerically) zero "
                f"probability under a log-logistic with loc={self.loc}, scale={self.scale}; "
                "widen the bounds or move loc (the median is exp(loc)) inside them"
            )

    def _cdf_bounds(self) -> tuple[float, float]:
        """CDF of ``log(sigma)`` at the two truncation bounds (the logistic CDF is the sigmoid)."""
        return (
            _sigmoid((math.log(self.sigma_min) - self.loc) / self.scale),
            _sigmoid((math.log(self.sigma_max) - self.loc) / self.scale),
        )

    def sample(
        self,
        shape: Shape,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw noise levels of the given ``shape``, all within ``[sigma_min, sigma_max]``.

        ``device=None`` means the generator's device (or torch's default device without a generator).
        """
        _check_dtype(dtype)
        low, high = self._cdf_bounds()
        uniform = low + (high - low) * _uniform(shape, generator, device)
        log_sigma = self.loc + self.scale * torch.logit(uniform)
        # The clamp only absorbs float rounding of exp(logit(.)); it moves no probability mass.
        return log_sigma.exp().to(dtype).clamp_(min=self.sigma_min, max=self.sigma_max)


@dataclass(frozen=True)
class LogNormalSigma:
    """``log(sigma) ~ Normal(p_mean, p_std)``, optionally truncated exactly to ``[sigma_min, sigma_max]``.

    The defaults are EDM's (``P_mean = -1.2``, ``P_std = 1.2``). Either bound may be ``None`` (no bound).
    """

    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float | None = None
    sigma_max: float | None = None

    def __post_init__(self) -> None:
        _check_finite("p_mean", self.p_mean)
        _check_positive("p_std", self.p_std, hint="it is the standard deviation of log(sigma)")
        _check_bounds(self.sigma_min, self.sigma_max, required=False)
        low, high = self._cdf_bounds()
        if not low < high:
            raise ValueError(
                f"[sigma_min, sigma_max] = [{self.sigma_min}, {self.sigma_max}] has (numerically) zero "
                f"probability under a log-normal with p_mean={self.p_mean}, p_std={self.p_std}; "
                "widen the bounds or move p_mean (the median is exp(p_mean)) inside them"
            )

    def _cdf_bounds(self) -> tuple[float, float]:
        """Standard-normal CDF of the standardised log-bounds; (0, 1) where a bound is absent."""
        low = 0.0 if self.sigma_min is None else _normal_cdf(self._standardise(self.sigma_min))
        high = 1.0 if self.sigma_max is None else _normal_cdf(self._standardise(self.sigma_max))
        return low, high

    def _standardise(self, sigma: float) -> float:
        return (math.log(sigma) - self.p_mean) / self.p_std

    def sample(
        self,
        shape: Shape,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw strictly positive noise levels of the given ``shape`` (within the bounds when given).

        ``device=None`` means the generator's device (or torch's default device without a generator).
        """
        _check_dtype(dtype)
        if self.sigma_min is None and self.sigma_max is None:
            normal = _standard_normal(shape, generator, device)
        else:
            low, high = self._cdf_bounds()
            normal = torch.special.ndtri(low + (high - low) * _uniform(shape, generator, device))
        sigma = (self.p_mean + self.p_std * normal).exp().to(dtype)
        # Without bounds, extreme draws could under/overflow to 0 or inf in a narrow dtype; the clamp keeps
        # the "strictly positive and finite" promise. With bounds it only absorbs float rounding.
        finfo = torch.finfo(dtype)
        lower = finfo.tiny if self.sigma_min is None else self.sigma_min
        upper = finfo.max if self.sigma_max is None else self.sigma_max
        return sigma.clamp_(min=lower, max=upper)


SIGMA_DISTRIBUTIONS: dict[str, type[LogLogisticSigma] | type[LogNormalSigma]] = {
    "loglogistic": LogLogisticSigma,
    "lognormal": LogNormalSigma,
}


def make_sigma_distribution(name: str, **kwargs: float | None) -> LogLogisticSigma | LogNormalSigma:
    """Build a training sigma distribution by name (``"loglogistic"`` or ``"lognormal"``).

    ``kwargs`` are the dataclass fields of the chosen distribution, e.g.
    ``make_sigma_distribution("lognormal", p_mean=-1.2, p_std=1.2)``.
    """
    if name not in SIGMA_DISTRIBUTIONS:
        raise ValueError(
            f"unknown sigma distribution {name!r}; valid choices: {', '.join(sorted(SIGMA_DISTRIBUTIONS))}"
        )
    cls = SIGMA_DISTRIBUTIONS[name]
    fields = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(
            f"{name!r} sigma distribution got unknown parameter(s) {unknown}; valid parameters: {fields}"
        )
    return cls(**kwargs)


def _uniform(
    shape: Shape, generator: torch.Generator | None, device: torch.device | str | None
) -> torch.Tensor:
    """Float64 U[0, 1) draws; drawn where the generator lives, since torch requires the devices to match."""
    draw_device = generator.device if generator is not None else device
    values = torch.rand(_as_shape(shape), generator=generator, device=draw_device, dtype=torch.float64)
    return values if device is None else values.to(device)


def _standard_normal(
    shape: Shape, generator: torch.Generator | None, device: torch.device | str | None
) -> torch.Tensor:
    """Float64 N(0, 1) draws, placed like :func:`_uniform`."""
    draw_device = generator.device if generator is not None else device
    values = torch.randn(_as_shape(shape), generator=generator, device=draw_device, dtype=torch.float64)
    return values if device is None else values.to(device)


def _as_shape(shape: Shape) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _sigmoid(z: float) -> float:
    # Two branches so that math.exp never overflows for bounds far in the tails.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    exp_z = math.exp(z)
    return exp_z / (1.0 + exp_z)


def _normal_cdf(z: float) -> float:
    # erfc keeps relative precision in the lower tail, where 0.5 * (1 + erf(.)) would cancel to 0.
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def _check_positive(name: str, value: float, *, hint: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0 and finite ({hint}), got {value}")


def _check_bounds(sigma_min: float | None, sigma_max: float | None, *, required: bool) -> None:
    for name, bound in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if bound is None:
            if required:
                raise ValueError(f"{name} is required for this distribution, got None")
            continue
        if not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"{name} must be a positive finite noise level, got {bound}")
    if sigma_min is not None and sigma_max is not None and not sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _check_dtype(dtype: torch.dtype) -> None:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype (e.g. torch.float32), got {dtype}")
