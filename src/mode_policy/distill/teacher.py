"""The teacher side of distillation: load a diffusion policy, and turn its denoiser into a score function.

teacher = load_teacher("runs/mt10")                    # a MoDEPolicy (run dir, policy dir or shipped name)
score_fn = teacher_score(teacher.denoiser, obs, goal, sigmas=(0.05, 0.1, 0.2), repeats=K * V)

Everything here works in the teacher's normalised spaces: states normalised, actions in [-1, 1] (min_max),
the goal embedding from the teacher's language encoder. A teacher denoiser is anything with the signature
of ``MoDEDenoiser.forward``: ``D(x (N, chunk, action_dim), sigma: float, obs (N, n_obs, state_dim),
goal (N, goal_dim)) -> (N, chunk, action_dim)``, so an analytic ideal denoiser works as well (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mode_policy.policies.registry import load_policy_and_run
from mode_policy.policies.vdd.configuration import INTERFACE_FIELDS

Denoiser = Callable[[torch.Tensor, float, torch.Tensor, torch.Tensor], torch.Tensor]


class TeacherError(ValueError):
    """The teacher cannot be distilled (wrong kind of checkpoint, or it does not fit the student)."""


def load_teacher(teacher: Any, device: str | torch.device = "cpu") -> tuple[Any, Path | None]:
    """(diffusion policy in eval mode, its training run directory or None) from a policy object or a path.

    Accepts a policy object, a training run (``RUN/policy``), a ``save_pretrained`` directory or a shipped
    pretrained name, of any policy type that has a diffusion denoiser (``policy.denoiser``, the score a
    student learns from); a one-step student has none and is refused.
    """
    if isinstance(teacher, torch.nn.Module):
        policy, run_dir, where = teacher.eval(), None, "the policy object passed"
    elif isinstance(teacher, (str, Path)):
        try:
            policy, policy_dir, run_dir = load_policy_and_run(teacher, device=str(device))
        except FileNotFoundError as error:
            raise TeacherError(f"teacher {teacher}: {error}") from None
        except (ValueError, KeyError) as error:
            raise TeacherError(
                f"teacher {teacher} is not a MoDE diffusion policy that loads ({error}); pass a run written "
                "by `mode-policy train` or a MoDEPolicy.save_pretrained directory"
            ) from None
        where = str(policy_dir)
    else:
        raise TeacherError(
            f"teacher must be a diffusion policy or the path of a MoDE run / saved policy, got "
            f"{type(teacher).__name__}"
        )
    if not isinstance(getattr(policy, "denoiser", None), torch.nn.Module):
        raise TeacherError(
            f"{where} is a {policy.config.describe} (policy_type {policy.name!r}), not a diffusion policy: "
            "it has no denoiser whose score a student could learn; pass the MoDE run it was distilled from "
            "as --teacher"
        )
    return policy, run_dir


def check_student_fits(student_config: Any, teacher_config: Any) -> None:
    """Raise TeacherError naming every interface field (layout, encoder, normalisation) that differs."""
    diffs = [
        f"{name}: student {getattr(student_config, name)!r}, teacher {getattr(teacher_config, name)!r}"
        for name in INTERFACE_FIELDS
        if getattr(student_config, name) != getattr(teacher_config, name)
    ]
    if diffs:
        raise TeacherError(
            "the student does not read what the teacher reads (" + "; ".join(diffs) + "); build it with "
            "VDDPolicy.from_teacher(teacher) so encoders, normalisation and layout are the teacher's"
        )


def check_same_normalizer(student: Any, teacher: Any) -> None:
    """Raise TeacherError if the student's normalisation buffers are not the teacher's."""
    own, theirs = student.normalizer.state_dict(), teacher.normalizer.state_dict()
    if own.keys() != theirs.keys() or any(
        not torch.allclose(own[k].cpu(), theirs[k].cpu(), equal_nan=True) for k in own
    ):
        raise TeacherError(
            "the student's normalisation statistics differ from the teacher's; build the student with "
            "VDDPolicy.from_teacher(teacher) (it copies the teacher's stats)"
        )


def teacher_score(
    denoiser: Denoiser,
    obs: torch.Tensor,
    goal: torch.Tensor,
    *,
    sigmas: Sequence[float],
    repeats: int,
    action_shape: tuple[int, int],
    generator: torch.Generator | None = None,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The teacher's score at the states of a batch, for ``repeats`` points per state.

    obs (B, n_obs, state_dim) and goal (B, goal_dim), normalised. The returned function takes points
    (B * repeats, d) (state-major) and returns (D(a; sigma) - a (B * repeats, d), sigma (B * repeats,)),
    detached; the score is their ratio (D(a; sigma) - a) / sigma^2.
    Each point is scored at one of ``sigmas``, assigned by a random stratified permutation so that every
    sigma gets the same number of points; each sigma is one denoiser call with a scalar sigma (MoDE's fast
    path: one routing decision for the whole call).
    """
    obs_rows = obs.repeat_interleave(repeats, dim=0)
    goal_rows = goal.repeat_interleave(repeats, dim=0)

    @torch.no_grad()
    def score_fn(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = points.shape[0]
        x = points.reshape(n, *action_shape)
        order = torch.randperm(n, generator=generator, device=generator.device if generator else "cpu")
        order = order.to(points.device)
        residual = torch.empty_like(x)
        point_sigma = torch.empty(n, dtype=x.dtype, device=x.device)
        for j, sigma in enumerate(sigmas):
            rows = order[j :: len(sigmas)]
            if rows.numel() == 0:
                continue
            denoised = denoiser(x[rows], float(sigma), obs_rows[rows], goal_rows[rows])
            residual[rows] = denoised - x[rows]
            point_sigma[rows] = float(sigma)
        return residual.reshape(n, -1), point_sigma

    return score_fn
