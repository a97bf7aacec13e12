"""The VDD objective (Zhou et al., NeurIPS 2024, arXiv 2406.12538, Sec. 3): one E-step + M-step per batch.

Distillation minimises KL(pi_student(a|s) || pi_teacher(a|s)). With the responsibilities of the previous
parameters, q~(z|a,s) = q_old(a|s,z) q_old(z|s) / q_old(a|s), it is bounded above by

    U = E_s sum_z q(z|s) [ E_{q(a|s,z)}[ log q(a|s,z) - log pi(a|s) - log q~(z|a,s) ] + log q(z|s) ],

tight when q~ is the current posterior (E-step). The bound decomposes per expert (M-step, experts): each
expert z maximises

    J_z(s) = E_{a ~ q(a|s,z)}[ log pi(a|s) + log q~(z|a,s) ] + H(q(a|s,z)).

log pi is unknown, but its gradient is the teacher's score: with reparameterised samples a = mu_z + L_z eps,
grad_theta E[log pi(a)] = E[score(a)^T da/dtheta], so the surrogate ``score(a).detach() . a`` has the right
gradient. score(a) = (D(a; sigma) - a) / sigma^2 is the score of the teacher's marginal at a small sigma
(Tweedie); a few small sigmas are used, one per sample, stratified (their average in expectation).
log q~ uses the detached (old) parameters but the differentiable samples: it pushes an expert's samples
away from where other experts are responsible. Experts are weighted by the detached gating, as in the bound.

Score estimator. With a = mu + L eps the score splits into (D(a) - mu) / sigma^2 and the Gaussian part
-L eps / sigma^2, whose contribution to the gradient is known in closed form: E[-L eps / sigma^2] = 0 for
mu and E[-(L eps) eps^T / sigma^2] = -L / sigma^2 for L, the gradient of -|L|_F^2 / (2 sigma^2).
``score_estimator="centred"`` (default) uses that closed form instead of its one-sample estimate: the same
expected gradient as the paper's ``"plain"`` estimator, without the noise -L eps / sigma^2 that otherwise
dominates the pull on the means once an expert sits near its mode (|L eps| >> |mu - mode|).

M-step, gating: refit q(z|s) to the responsibilities q~(z|a,s) averaged over actions a of the teacher's
distribution at s (soft cross-entropy). Those actions are the demonstration chunks of the batch (what VDD's
reference code uses: the data the teacher was trained on) or fresh teacher samples (``gating_targets``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mode_policy.policies.vdd.mixture import MixtureParams

# (points (N, d) normalised, flat) -> (D(a; sigma) - a (N, d), sigma (N,)), no grad.
ScoreFunction = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
SCORE_ESTIMATORS = ("centred", "plain")


@dataclass
class VDDLoss:
    """total = experts + gating (disjoint parameters: the gating head sees detached features).

    logs: detached scalars: ``objective`` (-sum_z q(z|s) J_z, the expert surrogate; lower is better),
    ``score_term``, ``log_responsibility``, ``entropy`` (expert means), ``gating_ce``, ``gating_entropy``
    (mean H(q(z|s)), nats), ``teacher_residual`` (RMS of D(a; sigma) - a over sample dims: how far the
    student's samples sit from where the teacher would move them).
    """

    total: torch.Tensor
    experts: torch.Tensor
    gating: torch.Tensor
    logs: dict[str, torch.Tensor]


def vdd_loss(
    params: MixtureParams,
    score_fn: ScoreFunction,
    gating_actions: torch.Tensor,
    *,
    samples_per_expert: int = 1,
    score_estimator: str = "centred",
    generator: torch.Generator | None = None,
) -> VDDLoss:
    """One E/M step's losses for a batch of B states.

    params: the student's mixture at the batch states (means (B, K, d), scale, log_weights (B, K)).
    score_fn: the teacher's score at those states, for points laid out (B * K * V, d) in (B, K, V) order.
    score_estimator: "centred" (closed-form Gaussian part, lower variance) or "plain" (as the paper).
    gating_actions: (B, M, d) actions from the teacher's distribution at each state (normalised, flat).
    """
    B, K, d = params.means.shape
    V = samples_per_expert
    old = params.detach()  # E-step: responsibilities from the parameters before this update
    weights = old.log_weights.exp()  # (B, K)

    samples = params.rsample(V, generator)  # (B, K, V, d)
    residual, sigma = score_fn(samples.detach().reshape(B * K * V, d))
    residual = residual.reshape(B, K, V, d)  # D(a; sigma) - a
    inverse_variance = sigma.reshape(B, K, V).square().reciprocal()  # 1 / sigma^2 of each sample
    # Only the gradients of these score terms are meaningful, (B, K, V).
    if score_estimator == "plain":
        score_term = (residual * inverse_variance[..., None] * samples).sum(-1)
    elif score_estimator == "centred":
        offset = samples.detach() - old.means[:, :, None]  # L eps
        pull = (residual + offset) * inverse_variance[..., None]  # (D(a) - mu) / sigma^2
        score_term = (pull * samples).sum(-1) - 0.5 * inverse_variance * params.scale_norm_sq()[..., None]
    else:
        raise ValueError(f"score_estimator must be one of {list(SCORE_ESTIMATORS)}, got {score_estimator!r}")
    # log q~(z = k | a_{k,v}, s): each sample under the responsibilities of its own expert.
    log_resp = old.log_responsibilities(samples.reshape(B, K * V, d)).reshape(B, K, V, K)
    own = log_resp.diagonal(dim1=1, dim2=3)  # (B, V, K)
    own = own.permute(0, 2, 1)  # (B, K, V)
    entropy = params.entropy()  # (B, K)
    objective = (score_term + own).mean(-1) + entropy  # J_z(s), (B, K)
    experts = -(weights * objective).sum(-1).mean()

    with torch.no_grad():
        targets = old.log_responsibilities(gating_actions).exp().mean(1)  # (B, K)
    gating = -(targets * params.log_weights).sum(-1).mean()
    logs = {
        "objective": experts.detach(),
        "score_term": score_term.detach().mean(),
        "log_responsibility": own.detach().mean(),
        "entropy": entropy.detach().mean(),
        "gating_ce": gating.detach(),
        "gating_entropy": -(weights * old.log_weights).sum(-1).mean(),
        "teacher_residual": residual.square().mean().sqrt(),
    }
    return VDDLoss(experts + gating, experts, gating, logs)
