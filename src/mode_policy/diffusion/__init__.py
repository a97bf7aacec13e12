"""EDM diffusion maths: preconditioning, training sigma distributions, sampling schedules and samplers."""

from mode_policy.diffusion.noise_distributions import (
    LogLogisticSigma,
    LogNormalSigma,
    make_sigma_distribution,
)
from mode_policy.diffusion.preconditioning import EDMCoefficients, EDMPreconditioning
from mode_policy.diffusion.samplers import SAMPLERS, Inpainting, initial_noise, model_evaluations, sample
from mode_policy.diffusion.schedules import (
    exponential_schedule,
    karras_schedule,
    linear_schedule,
    make_schedule,
)

__all__ = [
    "SAMPLERS",
    "EDMCoefficients",
    "EDMPreconditioning",
    "Inpainting",
    "LogLogisticSigma",
    "LogNormalSigma",
    "exponential_schedule",
    "initial_noise",
    "karras_schedule",
    "linear_schedule",
    "make_schedule",
    "make_sigma_distribution",
    "model_evaluations",
    "sample",
]
