"""Inpainting in the EDM samplers: held entries stay on ``known``, the rest is sampled conditioned on them."""

from __future__ import annotations

import pytest
import torch

from mode_policy.diffusion import Inpainting, make_schedule
from mode_policy.diffusion.samplers import SAMPLERS, initial_noise, sample

DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m")
BATCH, CHUNK, DIM = 3, 8, 2
SIGMAS = make_schedule("exponential", 6, sigma_min=0.05, sigma_max=20.0)


def gaussian_denoiser(coupled: bool = True):
    """The exact denoiser of data ~ N(0, C) over the chunk axis: D(x; s) = C (C + s^2 I)^-1 x. With
    ``coupled`` C correlates the timesteps (the held ones then inform the rest), else C is diagonal."""
    t = torch.arange(CHUNK, dtype=torch.float64)
    cov = torch.exp(-(t[:, None] - t[None, :]).abs() / 3) if coupled else torch.diag(1 + t / CHUNK)

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = float(sigma) ** 2
        gain = cov @ torch.linalg.inv(cov + s2 * torch.eye(CHUNK, dtype=torch.float64))
        return torch.einsum("ts,bsd->btd", gain.to(x.dtype), x)

    return model


def start(seed: int = 0) -> torch.Tensor:
    return initial_noise((BATCH, CHUNK, DIM), SIGMAS, generator=torch.Generator().manual_seed(seed))


def prefix_inpainting(k: int = 3, seed: int = 1) -> Inpainting:
    known = torch.randn(BATCH, CHUNK, DIM, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(1, CHUNK, 1, dtype=torch.bool)
    mask[:, :k] = True
    return Inpainting(known, mask)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_result_holds_known_and_conditions_the_rest(method):
    x, inpaint = start(), prefix_inpainting()
    model = gaussian_denoiser()
    plain = sample(model, x, SIGMAS, method)
    held = sample(model, x, SIGMAS, method, inpaint=inpaint)
    mask = inpaint.mask.expand_as(x)
    torch.testing.assert_close(held[mask], inpaint.known[mask], rtol=0, atol=1e-5)
    # The model couples the timesteps, so the held ones move the sampled rest.
    assert (held[~mask] - plain[~mask]).abs().max() > 1e-2


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_uncoupled_model_leaves_the_rest_as_plain_sampling(method):
    x, inpaint = start(), prefix_inpainting()
    model = gaussian_denoiser(coupled=False)
    plain = sample(model, x, SIGMAS, method)
    held = sample(model, x, SIGMAS, method, inpaint=inpaint)
    mask = inpaint.mask.expand_as(x)
    torch.testing.assert_close(held[~mask], plain[~mask], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(held[mask], inpaint.known[mask], rtol=0, atol=1e-5)


def recording(model):
    """``model`` that also keeps every (sigma, input) it is called with."""
    seen: list[tuple[float, torch.Tensor]] = []

    def wrapped(value: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append((float(sigma), value.clone()))
        return model(value, sigma)

    return wrapped, seen


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_masked_state_and_inputs_follow_known_plus_sigma_eps(method):
    x, inpaint = start(), prefix_inpainting()
    eps = x / SIGMAS[0]
    mask = inpaint.mask.expand_as(x)
    model, seen = recording(gaussian_denoiser())

    states: list[tuple[float, torch.Tensor]] = []
    sample(
        model, x, SIGMAS, method, inpaint=inpaint, callback=lambda i: states.append((i["sigma_next"], i["x"]))
    )
    assert seen and len(states) == len(SIGMAS) - 1
    for sigma, value in seen:  # every model input is known re-noised to its sigma on the mask
        torch.testing.assert_close(value[mask], (inpaint.known + sigma * eps)[mask], rtol=0, atol=1e-5)
    for sigma, state in states:  # and the sampler's own state stays on that curve
        torch.testing.assert_close(state[mask], (inpaint.known + sigma * eps)[mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("method", "extra"), [("euler", {"s_churn": 1.0}), ("heun", {"s_churn": 1.0})])
def test_churn_inputs_are_renoised_to_the_raised_sigma(method, extra):
    x, inpaint = start(), prefix_inpainting()
    eps = x / SIGMAS[0]
    mask = inpaint.mask.expand_as(x)
    model, seen = recording(gaussian_denoiser())

    generator = torch.Generator().manual_seed(3)
    result = sample(model, x, SIGMAS, method, inpaint=inpaint, generator=generator, **extra)
    assert any(all(abs(sigma - s) > 1e-6 for s in SIGMAS.tolist()) for sigma, _ in seen)  # churn ran
    for sigma, value in seen:
        torch.testing.assert_close(value[mask], (inpaint.known + sigma * eps)[mask], rtol=0, atol=1e-4)
    torch.testing.assert_close(result[mask], inpaint.known[mask], rtol=0, atol=1e-5)


def test_euler_ancestral_ends_on_known():
    x, inpaint = start(), prefix_inpainting()
    mask = inpaint.mask.expand_as(x)
    generator = torch.Generator().manual_seed(3)
    held = sample(gaussian_denoiser(), x, SIGMAS, "euler_ancestral", inpaint=inpaint, generator=generator)
    torch.testing.assert_close(held[mask], inpaint.known[mask], rtol=0, atol=1e-5)
    assert torch.isfinite(held).all()


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_no_inpainting_or_an_empty_mask_is_plain_sampling(method):
    x, model = start(), gaussian_denoiser()
    nothing = Inpainting(torch.full_like(x, float("nan")), torch.zeros(BATCH, CHUNK, DIM, dtype=torch.bool))
    plain = sample(model, x, SIGMAS, method, generator=torch.Generator().manual_seed(4))
    none = sample(model, x, SIGMAS, method, generator=torch.Generator().manual_seed(4), inpaint=None)
    empty = sample(model, x, SIGMAS, method, generator=torch.Generator().manual_seed(4), inpaint=nothing)
    assert torch.equal(none, plain)
    assert torch.equal(empty, plain)


def test_values_outside_the_mask_are_ignored():
    x, inpaint = start(), prefix_inpainting()
    mask = inpaint.mask.expand_as(x)
    junk = Inpainting(inpaint.known.masked_fill(~mask, float("nan")), inpaint.mask)
    model = gaussian_denoiser()
    assert torch.equal(sample(model, x, SIGMAS, inpaint=junk), sample(model, x, SIGMAS, inpaint=inpaint))


def test_full_mask_gives_known_and_step_keyed_models_still_get_their_step():
    x = start()
    known = torch.randn(BATCH, CHUNK, DIM, generator=torch.Generator().manual_seed(2))
    steps: list[int] = []

    def model(value: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        steps.append(step)
        return value * 0.5

    result = sample(model, x, SIGMAS, "ddim", inpaint=Inpainting(known, torch.ones((), dtype=torch.bool)))
    torch.testing.assert_close(result, known, rtol=0, atol=1e-5)
    assert steps == list(range(len(SIGMAS) - 1))


@pytest.mark.parametrize(
    ("inpaint", "message"),
    [
        (Inpainting(torch.zeros(BATCH, CHUNK, DIM + 1), torch.ones(1, dtype=torch.bool)), "known must be"),
        (Inpainting([[0.0]], torch.ones(1, dtype=torch.bool)), "known must be"),
        (
            Inpainting(torch.zeros(BATCH, CHUNK, DIM), torch.ones(1, CHUNK + 1, 1, dtype=torch.bool)),
            "broadcast",
        ),
        (Inpainting(torch.zeros(BATCH, CHUNK, DIM), torch.ones(2, 1, 1, dtype=torch.bool)), "broadcast"),
        (Inpainting(torch.zeros(BATCH, CHUNK, DIM), torch.ones(1, CHUNK, 1)), "bool tensor"),
        (Inpainting(torch.full((BATCH, CHUNK, DIM), float("nan")), torch.ones(1, dtype=torch.bool)), "NaN"),
        ((torch.zeros(BATCH, CHUNK, DIM), torch.ones(1, dtype=torch.bool)), "Inpainting"),
    ],
)
def test_bad_inpainting_is_refused_with_a_clear_message(inpaint, message):
    with pytest.raises(ValueError, match=message) as error:
        sample(gaussian_denoiser(), start(), SIGMAS, inpaint=inpaint)
    assert "\n" not in str(error.value)
