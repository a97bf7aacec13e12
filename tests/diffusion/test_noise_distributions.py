from __future__ import annotations

import math

import pytest
import torch

from mode_policy.diffusion.noise_distributions import (
    SIGMA_DISTRIBUTIONS,
    LogLogisticSigma,
    LogNormalSigma,
    make_sigma_distribution,
)

DRAWS = 200_000
# Tolerances are 5 Monte-Carlo standard errors: a correct sampler fails a given check with probability < 1e-6,
# while e.g. a wrong scale or a clamped (instead of truncated) tail shifts the statistic by far more.
STANDARD_ERRORS = 5.0


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logistic_quantile(p: float, loc: float, scale: float) -> float:
    return loc + scale * math.log(p / (1 - p))


def _logistic_cdf(value: float, loc: float, scale: float) -> float:
    return 1 / (1 + math.exp(-(value - loc) / scale))


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def _normal_pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def test_loglogistic_defaults_are_modes() -> None:
    distribution = LogLogisticSigma()
    assert (distribution.loc, distribution.scale) == (math.log(0.5), 0.5)
    assert (distribution.sigma_min, distribution.sigma_max) == (1e-3, 80.0)


def test_loglogistic_median_and_spread_match_the_logistic_in_log_space() -> None:
    # Bounds so wide that the truncated mass (~1e-20) is irrelevant: this is the untruncated distribution.
    distribution = LogLogisticSigma(loc=math.log(0.5), scale=0.5, sigma_min=1e-15, sigma_max=1e15)
    log_sigma = distribution.sample(DRAWS, generator=_generator(), dtype=torch.float64).log()
    quartiles = torch.quantile(log_sigma, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()

    # Standard error of the sample p-quantile: sqrt(p (1 - p) / n) / density; the logistic density at its
    # p-quantile is p (1 - p) / scale.
    def quantile_error(p: float) -> float:
        return STANDARD_ERRORS * math.sqrt(p * (1 - p) / DRAWS) * distribution.scale / (p * (1 - p))

    assert math.exp(quartiles[1]) == pytest.approx(0.5, rel=quantile_error(0.5))
    # Interquartile range of a logistic is 2 * scale * ln(3); the two quartile errors add at worst.
    assert quartiles[2] - quartiles[0] == pytest.approx(2 * 0.5 * math.log(3), abs=2 * quantile_error(0.25))


def test_loglogistic_default_truncation_holds_and_is_exact() -> None:
    samples = LogLogisticSigma().sample((400, 500), generator=_generator())
    assert samples.shape == (400, 500)
    assert samples.dtype == torch.float32
    # Rounding is monotone, so float32 draws stay within the float32-rounded bounds.
    assert samples.min().item() >= torch.tensor(1e-3).item()
    assert samples.max().item() <= 80.0


def test_loglogistic_narrow_truncation_is_inverse_cdf_exact_not_clamped() -> None:
    # [0.6, 2.0] lies entirely above the median 0.5, so clamping would pile ~58% of the draws on 0.6.
    distribution = LogLogisticSigma(loc=math.log(0.5), scale=0.5, sigma_min=0.6, sigma_max=2.0)
    samples = distribution.sample(DRAWS, generator=_generator(1), dtype=torch.float64)
    assert samples.min().item() >= 0.6
    assert samples.max().item() <= 2.0
    assert (samples == 0.6).sum().item() == 0

    low = _logistic_cdf(math.log(0.6), distribution.loc, distribution.scale)
    high = _logistic_cdf(math.log(2.0), distribution.loc, distribution.scale)
    midpoint = 1.0
    expected_below = (_logistic_cdf(math.log(midpoint), distribution.loc, distribution.scale) - low) / (
        high - low
    )
    observed_below = (samples < midpoint).double().mean().item()
    binomial_error = math.sqrt(expected_below * (1 - expected_below) / DRAWS)
    assert observed_below == pytest.approx(expected_below, abs=STANDARD_ERRORS * binomial_error)


def test_lognormal_log_mean_and_std_match_its_parameters() -> None:
    distribution = LogNormalSigma(p_mean=-1.2, p_std=1.2)
    log_sigma = distribution.sample(DRAWS, generator=_generator(2), dtype=torch.float64).log()
    # Standard errors of a normal sample's mean and standard deviation: std / sqrt(n), std / sqrt(2 n).
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=STANDARD_ERRORS * 1.2 / math.sqrt(DRAWS))
    assert log_sigma.std().item() == pytest.approx(1.2, abs=STANDARD_ERRORS * 1.2 / math.sqrt(2 * DRAWS))


@pytest.mark.parametrize(("sigma_min", "sigma_max"), [(0.05, 2.0), (0.5, None), (None, 0.1)])
def test_lognormal_truncation_is_exact(sigma_min: float | None, sigma_max: float | None) -> None:
    distribution = LogNormalSigma(p_mean=-1.2, p_std=1.2, sigma_min=sigma_min, sigma_max=sigma_max)
    samples = distribution.sample(DRAWS, generator=_generator(3), dtype=torch.float64)
    assert samples.min().item() >= (sigma_min or 0.0) and samples.min().item() > 0
    assert samples.max().item() <= (sigma_max or math.inf)

    # Mean of log(sigma) for a normal truncated to [a, b] (standardised): mu + std (pdf(a) - pdf(b)) / mass.
    a = -math.inf if sigma_min is None else (math.log(sigma_min) + 1.2) / 1.2
    b = math.inf if sigma_max is None else (math.log(sigma_max) + 1.2) / 1.2
    mass = _normal_cdf(b) - _normal_cdf(a)
    pdf_a = 0.0 if math.isinf(a) else _normal_pdf(a)
    pdf_b = 0.0 if math.isinf(b) else _normal_pdf(b)
    expected_mean = -1.2 + 1.2 * (pdf_a - pdf_b) / mass
    log_sigma = samples.log()
    # The truncated std is below 1.2, so 1.2 / sqrt(n) over-estimates the standard error: a safe bound.
    assert log_sigma.mean().item() == pytest.approx(
        expected_mean, abs=STANDARD_ERRORS * 1.2 / math.sqrt(DRAWS)
    )


@pytest.mark.parametrize(
    "distribution", [LogLogisticSigma(), LogNormalSigma(), LogNormalSigma(sigma_min=0.01)]
)
def test_same_seed_same_samples_and_different_seed_different_samples(distribution) -> None:
    first = distribution.sample((64, 3), generator=_generator(7))
    again = distribution.sample((64, 3), generator=_generator(7))
    other = distribution.sample((64, 3), generator=_generator(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert bool((first > 0).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_samples_have_requested_dtype_and_stay_positive_and_bounded(dtype: torch.dtype) -> None:
    for distribution in (LogLogisticSigma(), LogNormalSigma(p_std=30.0)):
        samples = distribution.sample(10_000, generator=_generator(), dtype=dtype)
        assert samples.dtype == dtype
        assert samples.shape == (10_000,)
        assert bool((samples > 0).all())
        assert bool(torch.isfinite(samples).all())
    bounded = LogLogisticSigma().sample(10_000, generator=_generator(), dtype=dtype)
    assert bounded.min().item() >= torch.tensor(1e-3, dtype=dtype).item()
    assert bounded.max().item() <= 80.0


def test_make_sigma_distribution_builds_by_name() -> None:
    assert sorted(SIGMA_DISTRIBUTIONS) == ["loglogistic", "lognormal"]
    assert make_sigma_distribution("loglogistic") == LogLogisticSigma()
    assert make_sigma_distribution("lognormal", p_mean=0.0, sigma_max=10.0) == LogNormalSigma(
        p_mean=0.0, sigma_max=10.0
    )


def test_make_sigma_distribution_rejects_unknown_names_and_parameters() -> None:
    with pytest.raises(
        ValueError, match=r"unknown sigma distribution 'uniform'; valid choices: loglogistic, lognormal"
    ):
        make_sigma_distribution("uniform")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['p_mean'\].*'loc', 'scale'"):
        make_sigma_distribution("loglogistic", p_mean=0.0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LogLogisticSigma(scale=0.0), r"scale must be > 0"),
        (lambda: LogLogisticSigma(loc=math.nan), r"loc must be a finite number"),
        (lambda: LogLogisticSigma(sigma_min=0.0), r"sigma_min must be a positive finite"),
        (lambda: LogLogisticSigma(sigma_min=80.0, sigma_max=1.0), r"need 0 < sigma_min < sigma_max"),
        (lambda: LogLogisticSigma(sigma_min=1.0, sigma_max=1.0), r"need 0 < sigma_min < sigma_max"),
        (lambda: LogLogisticSigma(sigma_max=None), r"sigma_max is required"),
        (
            lambda: LogLogisticSigma(sigma_min=1e200, sigma_max=1e201),
            r"zero probability.*median is exp\(loc\)",
        ),
        (lambda: LogNormalSigma(p_std=-1.0), r"p_std must be > 0"),
        (lambda: LogNormalSigma(sigma_min=-0.1), r"sigma_min must be a positive finite"),
        (lambda: LogNormalSigma(sigma_min=2.0, sigma_max=1.0), r"need 0 < sigma_min < sigma_max"),
        (lambda: LogNormalSigma(sigma_min=1e100), r"zero probability.*median is exp\(p_mean\)"),
    ],
)
def test_invalid_parameters_raise_helpful_value_errors(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_non_floating_dtype_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"dtype must be a floating-point dtype"):
        LogNormalSigma().sample(4, dtype=torch.int64)
