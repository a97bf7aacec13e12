from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from mode_policy.diffusion.samplers import SAMPLERS, initial_noise, model_evaluations, sample
from mode_policy.diffusion.schedules import make_schedule
from tests.diffusion.gmm import GaussianMixture

# Unequal weights and well-separated means: the closest pair of means is 7.2 apart, >= 4.5 standard
# deviations of either component from the midpoint, so nearest-mean assignment mislabels ~1e-6 of samples.
MIXTURE = GaussianMixture.create(
    weights=[0.5, 0.3, 0.2], means=[[-4.0, 0.0], [4.0, 0.0], [0.0, 6.0]], stds=[0.5, 0.8, 0.3]
)
SIGMA_MAX = 80.0
DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m")
STOCHASTIC_SETTINGS = [("euler", {"s_churn": 1.0}), ("heun", {"s_churn": 1.0}), ("euler_ancestral", {})]

RECOVERY_SAMPLES = 20_000
# Each statistic must lie within 5 Monte-Carlo standard errors of the truth: a sampler that solves the ODE
# exactly fails one of the 15 checks with probability < 1e-5, while wrong coefficients are off by tens of SEs.
RECOVERY_STANDARD_ERRORS = 5.0
# Karras steps (rho = 7, sigma down to 0.002) at which the discretisation bias is below ~2 standard errors.
# The first-order methods need ~5x more steps than the second-order ones for that.
RECOVERY_STEPS = {"ddim": 250, "euler": 250, "heun": 50, "dpmpp_2m": 50}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    # The mixture denoiser is many small ops: intra-op threads gain nothing, and on a busy 2-core machine
    # they spin while waiting for the other core, which made these tests ~30x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _schedule(steps: int, name: str = "karras", sigma_min: float = 0.002) -> torch.Tensor:
    return make_schedule(name, steps, sigma_min, SIGMA_MAX, dtype=torch.float64)


def _start(count: int, seed: int) -> torch.Tensor:
    return initial_noise((count, MIXTURE.dim), _schedule(1), generator=_generator(seed))


class RecordingModel:
    """The mixture denoiser, recording every call's sigma, step and output."""

    def __init__(self) -> None:
        self.sigmas: list[torch.Tensor] = []
        self.steps: list[int] = []
        self.outputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        self.sigmas.append(sigma)
        self.steps.append(step)
        self.outputs.append(MIXTURE.denoise(x, sigma))
        return self.outputs[-1]


@pytest.fixture(scope="module")
def noisy_marginal_start() -> torch.Tensor:
    # Start from the exact noisy marginal p(x; 80) = data + 80 * noise, not N(0, 80^2): the mixture's mean
    # offset of ~0.01 * 80 would otherwise bias the weights by ~1.4 standard errors at 20k samples.
    generator = _generator(0)
    clean, _ = MIXTURE.sample(RECOVERY_SAMPLES, generator)
    return clean + SIGMA_MAX * torch.randn(clean.shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_sampler_recovers_mixture_weights_means_and_variances(
    method: str, noisy_marginal_start: torch.Tensor
) -> None:
    samples = sample(MIXTURE.denoise, noisy_marginal_start, _schedule(RECOVERY_STEPS[method]), method)
    labels = MIXTURE.nearest_component(samples)
    z = RECOVERY_STANDARD_ERRORS

    weights = torch.bincount(labels, minlength=3).double() / RECOVERY_SAMPLES
    weight_errors = (MIXTURE.weights * (1 - MIXTURE.weights) / RECOVERY_SAMPLES).sqrt()
    torch.testing.assert_close(weights, MIXTURE.weights, rtol=0, atol=float(z * weight_errors.min()))
    for k in range(3):
        component = samples[labels == k]
        count = len(component)
        mean_tolerance = z * MIXTURE.stds[k].item() / math.sqrt(count)
        torch.testing.assert_close(component.mean(0), MIXTURE.means[k], rtol=0, atol=mean_tolerance)
        # Relative standard error of a normal sample variance: sqrt(2 / (n - 1)).
        relative_variance = component.var(0) / MIXTURE.stds[k] ** 2
        variance_tolerance = z * math.sqrt(2 / (count - 1))
        torch.testing.assert_close(
            relative_variance, torch.ones(2, dtype=torch.float64), rtol=0, atol=variance_tolerance
        )


@pytest.fixture(scope="module")
def ode_problem() -> tuple[torch.Tensor, torch.Tensor, float]:
    """Start noise (2000, 2), its exact probability-flow ODE solution and the reference's own error."""
    start = _start(2000, seed=1)
    reference = sample(MIXTURE.denoise, start, _schedule(1000, "exponential", 0.05), "heun")
    half_resolution = sample(MIXTURE.denoise, start, _schedule(500, "exponential", 0.05), "heun")
    return start, reference, _rms(half_resolution - reference)


def _rms(difference: torch.Tensor) -> float:
    return difference.norm(dim=-1).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("steps", [5, 10])
def test_dpmpp_2m_is_closer_than_ddim_to_the_exact_ode_solution(
    steps: int, ode_problem: tuple[torch.Tensor, torch.Tensor, float]
) -> None:
    start, reference, reference_error = ode_problem
    sigmas = _schedule(steps, "exponential", 0.05)
    ddim_error = _rms(sample(MIXTURE.denoise, start, sigmas, "ddim") - reference)
    dpmpp_error = _rms(sample(MIXTURE.denoise, start, sigmas, "dpmpp_2m") - reference)
    # The comparison is only meaningful if the reference is far more accurate than both solvers.
    assert reference_error < 1e-3 * dpmpp_error
    assert dpmpp_error < ddim_error


def test_dpmpp_2m_matches_a_transcription_of_k_diffusion() -> None:
    def k_diffusion_dpmpp_2m(model, x, sigmas):  # k_diffusion.sampling.sample_dpmpp_2m, minus callbacks
        s_in = x.new_ones([x.shape[0]])
        old_denoised = None
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in)
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            if old_denoised is None or sigmas[i + 1] == 0:
                x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
            else:
                r = (t - -sigmas[i - 1].log()) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
                x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
            old_denoised = denoised
        return x

    def batched_sigma_denoiser(x, sigma):
        return MIXTURE.denoise(x, sigma[0])

    start, sigmas = _start(500, seed=2), _schedule(7, "exponential", 0.05)
    expected = k_diffusion_dpmpp_2m(batched_sigma_denoiser, start, sigmas)
    torch.testing.assert_close(
        sample(MIXTURE.denoise, start, sigmas, "dpmpp_2m"), expected, rtol=1e-12, atol=1e-12
    )


def test_euler_without_churn_coincides_with_ddim_and_ancestral_with_eta_zero_too() -> None:
    start, sigmas = _start(500, seed=3), _schedule(8, "exponential", 0.05)
    ddim = sample(MIXTURE.denoise, start, sigmas, "ddim")
    torch.testing.assert_close(sample(MIXTURE.denoise, start, sigmas, "euler"), ddim, rtol=1e-12, atol=1e-12)
    ancestral = sample(MIXTURE.denoise, start, sigmas, "euler_ancestral", eta=0.0)
    torch.testing.assert_close(ancestral, ddim, rtol=1e-12, atol=1e-12)
    # Churn confined to a noise range the schedule never visits changes nothing either.
    confined = sample(
        MIXTURE.denoise, start, sigmas, "euler", s_churn=1.0, s_tmin=100.0, generator=_generator(0)
    )
    torch.testing.assert_close(confined, ddim, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_final_step_returns_the_last_denoised_estimate_exactly(method: str) -> None:
    model = RecordingModel()
    result = sample(model, _start(100, seed=4), _schedule(6), method, generator=_generator(0))
    # The last model call is the one at sigmas[-2], whose step lands on sigma 0.
    assert model.steps[-1] == 5
    assert torch.equal(result, model.outputs[-1])


@pytest.mark.parametrize(("method", "options"), STOCHASTIC_SETTINGS)
def test_stochastic_sampling_is_reproducible_with_a_generator(method: str, options: dict) -> None:
    start, sigmas = _start(200, seed=5), _schedule(6)

    def run(seed: int) -> torch.Tensor:
        return sample(MIXTURE.denoise, start, sigmas, method, generator=_generator(seed), **options)

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.allclose(first, run(1))
    deterministic = sample(MIXTURE.denoise, start, sigmas, "heun" if method == "heun" else "ddim")
    assert not torch.allclose(first, deterministic)


def test_step_keyword_receives_the_schedule_index_of_sigma() -> None:
    sigmas = _schedule(4)
    ddim_model, heun_model = RecordingModel(), RecordingModel()
    sample(ddim_model, _start(10, seed=6), sigmas, "ddim")
    sample(heun_model, _start(10, seed=6), sigmas, "heun")

    assert ddim_model.steps == [0, 1, 2, 3]
    # Heun evaluates at j and at j + 1, except for the final (Euler) step into sigma 0.
    assert heun_model.steps == [0, 1, 1, 2, 2, 3, 3]
    for model in (ddim_model, heun_model):
        for step, sigma in zip(model.steps, model.sigmas, strict=True):
            assert sigma.dim() == 0
            assert sigma.dtype == torch.float64
            assert sigma.item() == sigmas[step].item()


def test_churn_raises_the_first_evaluation_sigma_but_keeps_the_step_index() -> None:
    sigmas, model = _schedule(4), RecordingModel()
    sample(model, _start(10, seed=6), sigmas, "euler", s_churn=1.0, generator=_generator(0))
    assert model.steps == [0, 1, 2, 3]
    gamma = 1.0 / 4  # min(s_churn / steps, sqrt(2) - 1)
    observed = torch.stack(model.sigmas)
    torch.testing.assert_close(observed, sigmas[:-1] * (1 + gamma), rtol=1e-15, atol=0)


class ModuleWithStep(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, *, step: int) -> torch.Tensor:
        self.steps.append(step)
        return MIXTURE.denoise(x, sigma)


class NoSignature:
    """A callable that inspect.signature cannot describe (like some C extensions)."""

    __signature__ = "not a signature"

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return MIXTURE.denoise(x, sigma)


def test_models_without_an_explicit_step_parameter_are_called_with_x_and_sigma_only() -> None:
    start, sigmas = _start(10, seed=7), _schedule(3)
    expected = sample(RecordingModel(), start, sigmas, "heun")

    def catch_all(x: torch.Tensor, sigma: torch.Tensor, **kwargs: int) -> torch.Tensor:
        assert not kwargs, "a **kwargs catch-all is not an explicit step parameter"
        return MIXTURE.denoise(x, sigma)

    for model in (lambda x, sigma: MIXTURE.denoise(x, sigma), catch_all, NoSignature()):
        torch.testing.assert_close(sample(model, start, sigmas, "heun"), expected, rtol=0, atol=0)
    module = ModuleWithStep()
    torch.testing.assert_close(sample(module, start, sigmas, "heun"), expected, rtol=0, atol=0)
    assert module.steps == [0, 1, 1, 2, 2]


@pytest.mark.parametrize("method", sorted(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_number_of_model_calls_equals_model_evaluations(method: str, steps: int) -> None:
    calls: list[float] = []

    def counting_model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(sigma.item())
        return MIXTURE.denoise(x, sigma)

    sample(counting_model, _start(10, seed=8), _schedule(steps), method, generator=_generator(0))
    assert len(calls) == model_evaluations(method, steps)
    assert 0.0 not in calls
    assert model_evaluations(method, steps) == (2 * steps - 1 if method == "heun" else steps)


@pytest.mark.parametrize("method", sorted(SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_keeps_the_dtype_of_x_and_the_model_sees_sigma_in_it(method: str, dtype: torch.dtype) -> None:
    seen: list[torch.dtype] = []

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(sigma.dtype)
        assert x.dtype == dtype
        return MIXTURE.denoise(x, sigma)

    start = _start(20, seed=9).to(dtype)
    result = sample(model, start, _schedule(4).float(), method, generator=_generator(0))
    assert result.dtype == dtype
    assert set(seen) == {dtype}
    assert bool(torch.isfinite(result).all())


def test_callback_reports_every_step_and_progress_bar_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    sigmas, reports = _schedule(4), []
    result = sample(
        MIXTURE.denoise, _start(10, seed=10), sigmas, "dpmpp_2m", callback=reports.append, progress=True
    )

    assert [info["step"] for info in reports] == [0, 1, 2, 3]
    assert all(set(info) == {"step", "sigma", "sigma_next", "x", "denoised"} for info in reports)
    assert [info["sigma"] for info in reports] == sigmas[:-1].tolist()
    assert [info["sigma_next"] for info in reports] == sigmas[1:].tolist()
    # x is the state after the step, so the last report holds the result (and, at sigma 0, the denoised).
    assert reports[-1]["x"] is result
    assert torch.equal(reports[-1]["denoised"], result)
    assert "sampling (dpmpp_2m)" in capsys.readouterr().err


def test_gradients_flow_through_sampling_when_the_caller_enables_them() -> None:
    scale = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    result = sample(
        lambda x, sigma: scale * MIXTURE.denoise(x, sigma), _start(10, seed=11), _schedule(3), "heun"
    )
    result.sum().backward()
    assert scale.grad is not None and scale.grad.item() != 0.0
    with torch.no_grad():
        assert not sample(
            lambda x, s: scale * x / (1 + s**2), _start(10, seed=11), _schedule(3)
        ).requires_grad


def test_initial_noise_is_scaled_standard_normal_and_reproducible() -> None:
    sigmas = _schedule(5)
    noise = initial_noise((50_000, 2), sigmas, generator=_generator(12))
    assert noise.shape == (50_000, 2)
    assert noise.dtype == torch.float64
    # Standard error of a normal sample std is std / sqrt(2 n); allow 5 of them.
    assert noise.std().item() == pytest.approx(SIGMA_MAX, abs=5 * SIGMA_MAX / math.sqrt(2 * noise.numel()))
    assert torch.equal(noise, initial_noise((50_000, 2), sigmas, generator=_generator(12)))
    assert initial_noise(7, sigmas, dtype=torch.float32).shape == (7,)
    assert initial_noise(7, sigmas, dtype=torch.float32).dtype == torch.float32


_VALID_X = torch.zeros(4, 2)
_VALID_SIGMAS = torch.tensor([80.0, 1.0, 0.0])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"sigmas": torch.tensor([80.0, 80.0, 0.0])},
            r"strictly decreasing, but sigmas\[0\]=80.0 <= sigmas\[1\]=80.0",
        ),
        ({"sigmas": torch.tensor([1.0, 80.0, 0.0])}, r"strictly decreasing.*make_schedule"),
        ({"sigmas": torch.tensor([80.0, 1.0])}, r"end in exactly 0.*got last entry 1.0.*make_schedule"),
        ({"sigmas": torch.tensor([80.0, math.nan, 0.0])}, r"sigmas must be finite"),
        ({"sigmas": torch.tensor([[80.0, 0.0]])}, r"1-D with at least 2 entries.*shape \(1, 2\)"),
        ({"sigmas": torch.tensor([0.0])}, r"1-D with at least 2 entries"),
        ({"sigmas": [80.0, 0.0]}, r"sigmas must be a 1-D torch.Tensor, got list"),
        ({"x": torch.tensor([[0.0, math.nan]])}, r"x contains NaN or inf.*initial_noise"),
        ({"x": torch.zeros(4, 2, dtype=torch.int64)}, r"x must be a floating-point tensor"),
        (
            {"method": "ddpm"},
            r"unknown sampling method 'ddpm'; valid methods: ddim, dpmpp_2m, euler, euler_ancestral, heun",
        ),
        (
            {"method": "ddim", "s_churn": 1.0},
            r"'ddim' got unknown option\(s\) \['s_churn'\]; its valid options: none",
        ),
        (
            {"method": "euler", "eta": 1.0},
            r"'euler' got unknown option\(s\) \['eta'\].*s_churn, s_tmin, s_tmax, s_noise",
        ),
        ({"method": "euler", "s_churn": -1.0}, r"s_churn must be >= 0"),
        ({"method": "heun", "s_tmin": 5.0, "s_tmax": 1.0}, r"need s_tmin <= s_tmax"),
        (
            {"method": "euler_ancestral", "eta": "1"},
            r"option eta='1' of method 'euler_ancestral' must be a number",
        ),
        (
            {"model": lambda x, sigma: x[0]},
            r"model must return the denoised estimate with x's shape \(4, 2\), got \(2,\)",
        ),
    ],
)
def test_invalid_inputs_raise_helpful_value_errors(arguments: dict, message: str) -> None:
    arguments = {"model": lambda x, sigma: x, "x": _VALID_X, "sigmas": _VALID_SIGMAS} | arguments
    with pytest.raises(ValueError, match=message):
        sample(**arguments)


def test_model_evaluations_rejects_unknown_methods_and_bad_step_counts() -> None:
    with pytest.raises(ValueError, match=r"unknown sampling method 'rk4'"):
        model_evaluations("rk4", 5)
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1"):
        model_evaluations("heun", 0)
