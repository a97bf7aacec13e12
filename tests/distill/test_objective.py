"""The VDD expert objective's gradient: both score estimators match the closed form on a Gaussian teacher."""

import pytest
import torch

from mode_policy.distill.objective import vdd_loss
from mode_policy.policies.vdd.mixture import MixtureParams

D = 3
MODE = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
TEACHER_STD = 0.05
SIGMA = 0.1


def gaussian_teacher(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher N(MODE, TEACHER_STD^2 I): its ideal denoiser at SIGMA, as a ScoreFunction."""
    shrink = TEACHER_STD**2 / (TEACHER_STD**2 + SIGMA**2)
    denoised = MODE + shrink * (points - MODE)
    return denoised - points, torch.full((len(points),), SIGMA, dtype=points.dtype)


def one_expert(mean, scale_tril) -> MixtureParams:
    """A single full-covariance expert at a single state, with leaf tensors to take gradients of."""
    return MixtureParams(mean[None, None], scale_tril[None, None], torch.zeros(1, 1, dtype=torch.float64))


def start_point():
    mean = torch.tensor([0.35, -0.1, 0.45], dtype=torch.float64, requires_grad=True)
    scale_tril = torch.tensor(
        [[0.08, 0.0, 0.0], [0.01, 0.06, 0.0], [-0.02, 0.01, 0.09]], dtype=torch.float64, requires_grad=True
    )
    return mean, scale_tril


def expert_gradient(estimator: str, samples: int, seed: int):
    mean, scale_tril = start_point()
    params = one_expert(mean, scale_tril)
    loss = vdd_loss(
        params, gaussian_teacher, torch.zeros(1, 1, D, dtype=torch.float64), samples_per_expert=samples,
        score_estimator=estimator, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    loss.experts.backward()
    return mean.grad, scale_tril.grad.tril()


def closed_form_gradient():
    """d/d(mu, L) of -(E_q[log p_sigma(a)] + H(q)) with p_sigma = N(MODE, s^2 I), s^2 = TEACHER_STD^2+SIGMA^2:
    (mu - MODE) / s^2 and L / s^2 - diag(1 / L_ii)."""
    mean, scale_tril = start_point()
    variance = TEACHER_STD**2 + SIGMA**2
    grad_scale = scale_tril.detach() / variance - torch.diag(1 / scale_tril.detach().diagonal())
    return (mean.detach() - MODE) / variance, grad_scale


@pytest.mark.parametrize("estimator", ["plain", "centred"])
def test_both_estimators_are_unbiased(estimator):
    want_mean, want_scale = closed_form_gradient()
    got_mean, got_scale = expert_gradient(estimator, samples=200_000, seed=0)
    # Monte Carlo error of the plain estimator at 200k samples is ~1% of these gradients' scale.
    assert torch.allclose(got_mean, want_mean, atol=0.02 * want_mean.abs().max()), (got_mean, want_mean)
    assert torch.allclose(got_scale, want_scale, atol=0.02 * want_scale.abs().max()), (got_scale, want_scale)


def test_centred_estimator_has_much_lower_variance_on_the_means():
    draws = {name: torch.stack([expert_gradient(name, 1, seed)[0] for seed in range(200)]) for name in
             ("plain", "centred")}  # fmt: skip
    spread = {name: grads.var(0).sum().item() for name, grads in draws.items()}
    # Near the mode the plain estimator's mean gradient is dominated by -L eps / sigma^2; centred drops it.
    assert spread["centred"] < 0.1 * spread["plain"], spread


def test_unknown_estimator_is_named():
    mean, scale_tril = start_point()
    with pytest.raises(ValueError, match="score_estimator must be one of"):
        vdd_loss(one_expert(mean, scale_tril), gaussian_teacher, torch.zeros(1, 1, D, dtype=torch.float64),
                 score_estimator="exact")  # fmt: skip
