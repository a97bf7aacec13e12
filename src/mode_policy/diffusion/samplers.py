"""Samplers that turn a trained denoiser into actions (k-diffusion conventions).

Call :func:`sample` with

* ``model``: the denoiser, ``model(x, sigma) -> denoised``, the estimate of the clean data, shaped like ``x``;
* ``x``: the start, pure noise already scaled by ``sigmas[0]`` (see :func:`initial_noise`), any shape;
* ``sigmas``: a strictly decreasing 1-D schedule that ends in exactly 0, shape ``(steps + 1,)``
  (see :func:`mode_policy.diffusion.make_schedule`).

Model calling protocol
----------------------
The model is called as ``model(x, sigma)`` with ``sigma`` a 0-dim tensor shared by the whole batch: the
entry ``sigmas[j]``, cast to ``x``'s dtype and device. If the model's signature (for an ``nn.Module``, its
``forward``) has an explicit parameter named ``step``, it is called as ``model(x, sigma, step=j)`` where
``j`` is the index of that noise level in ``sigmas``; a ``**kwargs`` catch-all does not count. This lets a
model cache per-noise-level work (e.g. MoDE's expert routing) by sampler step instead of by a float.
Heun evaluates at ``j`` and then at ``j + 1``. With churn (``s_churn > 0``) the first evaluation of a step
is at the raised level ``sigma_hat = sigmas[j] * (1 + gamma)`` but still carries ``step=j``; ``gamma``
depends only on ``j`` and the options, so a step-keyed cache stays consistent. The model is never evaluated
at ``sigma = 0``.

Methods (see ``SAMPLERS``): ``"ddim"`` (MoDE's default), ``"euler"``, ``"heun"``, ``"dpmpp_2m"`` and
``"euler_ancestral"``. Gradient mode is left to the caller, so the samplers can be differentiated through.

Inpainting
----------
``sample(..., inpaint=Inpainting(known, mask))`` holds the entries where ``mask`` is True at ``known``
(clean values, shaped like ``x``) and samples the rest conditioned on them (e.g. the actions of a chunk
already committed to). With ``eps = x / sigmas[0]`` the start noise direction:

* the start state on the mask becomes ``known + sigmas[0] * eps``;
* every model input on the mask is ``known + sigma * eps`` at that evaluation's ``sigma`` (the raised
  ``sigma_hat`` under churn, ``sigmas[j + 1]`` for Heun's second evaluation): the known part, re-noised to
  the level the model expects and with the same noise direction throughout, is imposed;
* every model output (the denoised estimate) on the mask is replaced by ``known``.

Why: with the denoised estimate equal to ``known`` on the mask, the deterministic samplers (ddim, euler,
heun, dpmpp_2m) move the masked state exactly along ``known + sigma * eps`` (each of their updates is an
affine combination of x and the denoised estimates that maps ``known + sigma_j * eps`` to
``known + sigma_{j+1} * eps``), so imposing the input agrees with the sampler's own trajectory and the
unmasked entries see a consistent, progressively less noisy view of the known part. The last step returns
the denoised estimate, so the result equals ``known`` on the mask (up to float rounding). Stochastic
settings (euler_ancestral, churn) add fresh noise the imposed input does not carry, so there the
conditioning is an approximation (the result on the mask is still ``known``). Without ``inpaint``, or
with an all-False mask, sampling is unchanged, bit for bit.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

Model = Callable[..., torch.Tensor]
StepCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Inpainting:
    """What :func:`sample` holds fixed (see "Inpainting" in the module docstring).

    known: the clean values to hold, shaped like ``x`` (entries outside ``mask`` are ignored).
    mask: bool tensor broadcastable to ``x``'s shape; True where ``known`` is held.
    """

    known: torch.Tensor
    mask: torch.Tensor


def initial_noise(
    shape: Sequence[int] | int,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Start point for :func:`sample`: standard normal noise of ``shape`` times ``sigmas[0]``.

    ``dtype`` defaults to that of ``sigmas`` (torch's default dtype if ``sigmas`` is not floating) and
    ``device`` to that of ``sigmas``.
    """
    if dtype is None:
        dtype = sigmas.dtype if sigmas.is_floating_point() else torch.get_default_dtype()
    device = sigmas.device if device is None else device
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    # torch requires the generator and the output to share a device, so draw there and move.
    draw_device = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, dtype=dtype, device=draw_device).to(device)
    return noise * float(sigmas[0])


def sample(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    method: str = "ddim",
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    inpaint: Inpainting | None = None,
    **options: float,
) -> torch.Tensor:
    """Integrate from ``x`` at noise level ``sigmas[0]`` down to ``sigmas[-1] == 0``; returns ``x``'s shape.

    ``method`` is a key of ``SAMPLERS``; ``options`` are that method's keyword options (e.g. ``s_churn``
    for ``"euler"``/``"heun"``, ``eta`` for ``"euler_ancestral"``). ``generator`` drives the noise of the
    stochastic settings. ``callback(info)`` runs after every step with ``info`` keys ``step`` (index j),
    ``sigma`` and ``sigma_next`` (Python floats ``sigmas[j]``, ``sigmas[j + 1]``), ``x`` (the state after
    the step, at ``sigma_next``) and ``denoised`` (the model's estimate at the start of the step).
    ``progress=True`` shows a tqdm bar. ``inpaint`` holds the entries of its ``mask`` at its ``known``
    values and samples the rest conditioned on them (see "Inpainting" in the module docstring). The result
    has ``x``'s dtype and device.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampling method {method!r}; valid methods: {', '.join(sorted(SAMPLERS))}")
    sampler = SAMPLERS[method]
    _check_options(method, sampler, options)
    _check_x(x)
    sigma_values = _checked_sigmas(sigmas)
    denoise = _Denoiser(model, sigmas.detach().to(device=x.device, dtype=x.dtype))
    held = _checked_inpainting(inpaint, x)
    if held is not None:  # an all-False mask holds nothing: sample exactly as without
        known, mask = held
        eps = x / denoise.sigmas[0]  # the start noise direction
        denoise.hold(known, mask, eps)
        x = torch.where(mask, known + denoise.sigmas[0] * eps, x)
    steps = len(sigma_values) - 1
    with tqdm(total=steps, disable=not progress, desc=f"sampling ({method})", leave=False) as bar:

        def report(step: int, state: torch.Tensor, denoised: torch.Tensor) -> None:
            bar.update(1)
            if callback is not None:
                callback(
                    {
                        "step": step,
                        "sigma": sigma_values[step],
                        "sigma_next": sigma_values[step + 1],
                        "x": state,
                        "denoised": denoised,
                    }
                )

        return sampler(denoise, x, sigma_values, generator=generator, report=report, **options)


def model_evaluations(method: str, steps: int) -> int:
    """How many times :func:`sample` calls the model for a schedule of ``steps`` steps (``steps + 1`` sigmas).

    Heun needs two evaluations per step except the last (an Euler step into sigma 0); the others need one.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampling method {method!r}; valid methods: {', '.join(sorted(SAMPLERS))}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return 2 * steps - 1 if method == "heun" else steps


class _Report(Protocol):
    def __call__(self, step: int, state: torch.Tensor, denoised: torch.Tensor) -> None: ...


class _Denoiser:
    """Calls the user's model following the protocol in the module docstring."""

    def __init__(self, model: Model, sigmas: torch.Tensor) -> None:
        self.model = model
        self.sigmas = sigmas  # (steps + 1,) in x's dtype and device: what the model sees
        self.pass_step = _has_step_parameter(model)
        self.held: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (known, mask, eps)

    def hold(self, known: torch.Tensor, mask: torch.Tensor, eps: torch.Tensor) -> None:
        """Inpaint: impose ``known + sigma * eps`` on the inputs and ``known`` on the outputs at ``mask``."""
        self.held = (known, mask, eps)

    def __call__(self, x: torch.Tensor, step: int, sigma_scale: float = 1.0) -> torch.Tensor:
        """Denoise ``x`` at noise level ``sigmas[step] * sigma_scale``; returns ``x``'s shape."""
        sigma = self.sigmas[step] if sigma_scale == 1.0 else self.sigmas[step] * sigma_scale
        if self.held is not None:
            known, mask, eps = self.held
            x = torch.where(mask, known + sigma * eps, x)
        denoised = self.model(x, sigma, step=step) if self.pass_step else self.model(x, sigma)
        if not isinstance(denoised, torch.Tensor) or denoised.shape != x.shape:
            got = tuple(denoised.shape) if isinstance(denoised, torch.Tensor) else type(denoised).__name__
            raise ValueError(
                f"the model must return the denoised estimate with x's shape {tuple(x.shape)}, got {got}"
            )
        if self.held is not None:
            denoised = torch.where(mask, known, denoised)
        return denoised


def _has_step_parameter(model: Model) -> bool:
    # nn.Module.__call__ has a (*args, **kwargs) signature; the real parameters are on forward.
    target = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return False
    parameter = parameters.get("step")
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


# Each sampler takes (denoise, x, sigmas, *, generator, report, **its options) with ``sigmas`` the validated
# schedule as Python floats (step coefficients are computed in float64 whatever x's dtype), calls
# ``report(j, x_after_step, denoised)`` once per step and returns the final x.


def _sample_ddim(
    denoise: _Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    *,
    generator: torch.Generator | None,
    report: _Report,
) -> torch.Tensor:
    """DPM-Solver-1 in sigma space, as MoDE uses it: ``x <- (s'/s) x + (1 - s'/s) D(x; s)``."""
    del generator  # deterministic
    for j, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        denoised = denoise(x, j)
        ratio = sigma_next / sigma
        x = denoised if sigma_next == 0 else ratio * x + (1.0 - ratio) * denoised
        report(j, x, denoised)
    return x


def _sample_euler(
    denoise: _Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    *,
    generator: torch.Generator | None,
    report: _Report,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """EDM/k-diffusion Euler on ``dx/dsigma = (x - D(x; sigma)) / sigma`` with optional churn."""
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    for j, sigma_next in enumerate(sigmas[1:]):
        x, sigma_hat = _churn(x, sigmas, j, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoise(x, j, sigma_hat / sigmas[j])
        # The last step to sigma 0 lands on D exactly (the Euler update equals it up to rounding).
        x = denoised if sigma_next == 0 else x + (x - denoised) * ((sigma_next - sigma_hat) / sigma_hat)
        report(j, x, denoised)
    return x


def _sample_heun(
    denoise: _Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    *,
    generator: torch.Generator | None,
    report: _Report,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """EDM Algorithm 2: Heun's second-order method with optional churn; the step into sigma 0 is Euler."""
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    for j, sigma_next in enumerate(sigmas[1:]):
        x, sigma_hat = _churn(x, sigmas, j, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoise(x, j, sigma_hat / sigmas[j])
        if sigma_next == 0:
            x = denoised
        else:
            dt = sigma_next - sigma_hat
            slope = (x - denoised) / sigma_hat
            x_euler = x + slope * dt
            slope_next = (x_euler - denoise(x_euler, j + 1)) / sigma_next
            x = x + (slope + slope_next) * (dt / 2)
        report(j, x, denoised)
    return x


def _sample_dpmpp_2m(
    denoise: _Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    *,
    generator: torch.Generator | None,
    report: _Report,
) -> torch.Tensor:
    """DPM-Solver++(2M) as k-diffusion's ``sample_dpmpp_2m``, in log-SNR time ``t = -log(sigma)``.

    The first step and the step into sigma 0 are first order (identical to ddim); the others extrapolate the
    denoised estimate linearly in ``t`` from the current and the previous step.
    """
    del generator  # deterministic
    old_denoised: torch.Tensor | None = None
    for j, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        denoised = denoise(x, j)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)  # t_next - t
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = (math.log(sigmas[j - 1]) - math.log(sigma)) / h  # h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
        report(j, x, denoised)
    return x


def _sample_euler_ancestral(
    denoise: _Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    *,
    generator: torch.Generator | None,
    report: _Report,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """k-diffusion's ancestral Euler: a deterministic step to ``sigma_down``, then fresh noise ``sigma_up``.

    ``eta = 0`` is ddim; ``eta = 1`` injects the full DDPM-like ancestral noise.
    """
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be >= 0 (0 is deterministic, 1 the full ancestral noise), got {eta}")
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(
            f"s_noise must be >= 0 (it scales the injected noise; 1.0 is standard), got {s_noise}"
        )
    for j, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        denoised = denoise(x, j)
        if sigma_next == 0:
            x = denoised
        else:
            sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
            sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
            x = x + (x - denoised) * ((sigma_down - sigma) / sigma)
            if sigma_up > 0:
                x = x + _randn_like(x, generator) * (s_noise * sigma_up)
        report(j, x, denoised)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": _sample_ddim,
    "euler": _sample_euler,
    "heun": _sample_heun,
    "dpmpp_2m": _sample_dpmpp_2m,
    "euler_ancestral": _sample_euler_ancestral,
}


def _churn(
    x: torch.Tensor,
    sigmas: list[float],
    j: int,
    generator: torch.Generator | None,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> tuple[torch.Tensor, float]:
    """EDM's stochastic churn: raise the noise level of ``x`` from ``sigmas[j]`` to ``sigma_hat``."""
    sigma = sigmas[j]
    gamma = min(s_churn / (len(sigmas) - 1), math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma == 0:
        return x, sigma  # no noise drawn, so the generator is untouched
    sigma_hat = sigma * (1 + gamma)
    return x + _randn_like(x, generator) * (s_noise * math.sqrt(sigma_hat**2 - sigma**2)), sigma_hat


def _check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
    if not (math.isfinite(s_churn) and s_churn >= 0):
        raise ValueError(f"s_churn must be >= 0 (0 disables churn; EDM tunes it per dataset), got {s_churn}")
    if math.isnan(s_tmin) or math.isnan(s_tmax) or s_tmin > s_tmax:
        raise ValueError(
            f"need s_tmin <= s_tmax (the sigma range where churn applies), got {s_tmin}, {s_tmax}"
        )
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(
            f"s_noise must be >= 0 (it scales the injected noise; 1.0 is standard), got {s_noise}"
        )


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(x)
    # torch requires the generator and the output to share a device, so draw there and move.
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
    return noise.to(x.device)


def _check_options(method: str, sampler: Callable[..., torch.Tensor], options: dict[str, Any]) -> None:
    accepted = [
        parameter.name
        for parameter in inspect.signature(sampler).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name not in ("generator", "report")
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none"
        raise ValueError(f"method {method!r} got unknown option(s) {unknown}; its valid options: {valid}")
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"option {name}={value!r} of method {method!r} must be a number")


def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor (noise times sigmas[0]), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    with torch.no_grad():
        finite = bool(torch.isfinite(x).all())
    if not finite:
        raise ValueError(
            "x contains NaN or inf; start from finite noise, "
            "e.g. mode_policy.diffusion.samplers.initial_noise(shape, sigmas)"
        )


def _checked_inpainting(
    inpaint: Inpainting | None, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(known in x's dtype and device, mask broadcast to x's shape), or None when nothing is held."""
    if inpaint is None:
        return None
    shape = tuple(x.shape)
    if not isinstance(inpaint, Inpainting):
        raise ValueError(
            f"inpaint must be mode_policy.diffusion.Inpainting(known, mask) or None, got "
            f"{type(inpaint).__name__}"
        )
    known, mask = inpaint.known, inpaint.mask
    if not isinstance(known, torch.Tensor) or tuple(known.shape) != shape:
        got = tuple(known.shape) if isinstance(known, torch.Tensor) else type(known).__name__
        raise ValueError(
            f"Inpainting.known must be a tensor of x's shape {shape} (the clean values to hold), got {got}"
        )
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = f"dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"Inpainting.mask must be a bool tensor (True = held), got {got}; pass mask.bool()")
    try:
        broadcast = torch.broadcast_shapes(tuple(mask.shape), shape)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(shape):
        raise ValueError(
            f"Inpainting.mask of shape {tuple(mask.shape)} does not broadcast to x's shape {shape}; pass a "
            "mask of x's shape or one with size-1 dimensions where it is shared"
        )
    mask = mask.to(x.device).expand(shape)
    if not bool(mask.any()):
        return None
    known = known.to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        finite = bool(torch.isfinite(known[mask]).all())
    if not finite:
        raise ValueError("Inpainting.known contains NaN or inf where mask is True; hold finite values")
    return known.masked_fill(~mask, 0.0), mask  # entries outside the mask are ignored, whatever they hold


def _checked_sigmas(sigmas: torch.Tensor) -> list[float]:
    """Validate the schedule (steps + 1,) and return it as Python floats."""
    fix = "build it with mode_policy.diffusion.make_schedule(...)"
    if not isinstance(sigmas, torch.Tensor):
        raise ValueError(f"sigmas must be a 1-D torch.Tensor, got {type(sigmas).__name__}; {fix}")
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"sigmas must be 1-D with at least 2 entries (steps + 1), got shape {tuple(sigmas.shape)}; {fix}"
        )
    values = sigmas.detach().to(device="cpu", dtype=torch.float64).tolist()
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"sigmas must be finite, got {values}; {fix}")
    if values[-1] != 0:
        raise ValueError(
            f"sigmas must end in exactly 0 (the clean estimate), got last entry {values[-1]}; {fix}"
        )
    if not values[0] > 0:
        raise ValueError(f"sigmas[0] must be > 0, got {values[0]}; {fix}")
    for j, (sigma, sigma_next) in enumerate(itertools.pairwise(values)):
        if not sigma_next < sigma:
            raise ValueError(
                f"sigmas must be strictly decreasing, but sigmas[{j}]={sigma} <= "
                f"sigmas[{j + 1}]={sigma_next}; {fix}"
            )
    return values
