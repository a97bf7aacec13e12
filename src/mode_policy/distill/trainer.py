"""``distill()``: VDD-distil a MoDE diffusion policy into a one-step mixture of Gaussian experts.

result = distill("runs/mt10", out="runs/mt10-vdd", experts=4, steps=3000)
student = VDDPolicy.from_pretrained("runs/mt10-vdd/policy")   # or mode-policy eval --policy runs/mt10-vdd

Run directory::

    OUT/policy/               the student (VDDPolicy.save_pretrained; config.json has policy_type "vdd")
    OUT/distill_config.json   teacher, dataset and settings
    OUT/metrics.csv           objective, gating entropy, teacher residual, ... every ``log_every`` steps
    OUT/warm_start.csv        the warm start's likelihood loss (when warm_start_steps > 0)
    OUT/distill_curve.png     the same, plotted
    OUT/distill_summary.json  steps, seconds, final metrics, parameter counts

A plain loop rather than Lightning's ``train()``: one step is a student forward, one batched teacher call
per score sigma (no grad) and one optimizer step on a small MLP; there is nothing to shard, checkpoint
mid-run or average (EMA), and Lightning's per-step overhead would be a noticeable share of such steps on a
CPU. The loop is about 40 lines and deterministic for a seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mode_policy.distill.objective import SCORE_ESTIMATORS, vdd_loss
from mode_policy.distill.teacher import (
    TeacherError,
    check_same_normalizer,
    check_student_fits,
    load_teacher,
    teacher_score,
)
from mode_policy.distill.warm_start import WARM_START_LR, WARM_START_STEPS, warm_start
from mode_policy.io import atomic_write, atomic_write_text, check_output_dir
from mode_policy.keys import ACTION_KEY, STATE_KEY
from mode_policy.policies.folders import POLICY_SUBDIR, open_run_data
from mode_policy.policies.vdd.modeling import VDDPolicy
from mode_policy.training.schedule import warmup_cosine

GATING_TARGETS = ("data", "teacher")
RUN_MARKERS = ("distill_config.json", "policy")  # what marks a folder as a distillation run of ours
DEFAULT_SIGMAS = (0.05, 0.1, 0.2)


@dataclass
class DistillSettings:
    """What ``distill()`` was asked to do; saved as OUT/distill_config.json."""

    teacher: str
    dataset: str | None
    experts: int
    steps: int
    batch_size: int
    seed: int
    lr: float
    samples_per_expert: int
    score_sigmas: list[float]
    score_estimator: str
    gating_targets: str
    warm_start_steps: int
    warm_start_lr: float
    log_every: int
    student: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillResult:
    student: VDDPolicy
    history: list[dict[str, float]]  # one row per log_every steps
    warm_start_history: list[dict[str, float]]  # one row per 100 warm-start steps
    seconds: float
    out: Path | None


def distill(
    teacher: Any,
    data: Any = None,
    out: str | Path | None = None,
    *,
    experts: int = 4,
    steps: int = 2000,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 3e-4,
    samples_per_expert: int = 1,
    score_sigmas: Sequence[float] = DEFAULT_SIGMAS,
    score_estimator: str = "centred",
    gating_targets: str = "data",
    warm_start_steps: int = WARM_START_STEPS,
    warm_start_lr: float = WARM_START_LR,
    covariance: str = "full",
    student: VDDPolicy | None = None,
    student_overrides: Mapping[str, Any] | None = None,
    log_every: int = 10,
    max_minutes: float | None = None,
    inference_dataset: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> DistillResult:
    """Distil ``teacher`` into a VDD student; returns it (and its history), saved under ``out`` if given.

    teacher: a MoDEPolicy, a training run / saved policy directory / shipped name, or a bare denoiser
    ``D(x, sigma, obs, goal)`` in normalised space (then pass ``student``, built for its layout).
    data: where the states come from: a LeRobot dataset folder, an ``ActionChunkDataset`` (or any dataset
    of such items), or a dict ``{"observation.state": (N, n_obs_steps, state_dim), "task": list[str] | str,
    "action": (N, chunk_size, action_dim)}`` of raw values. None: the teacher run's training data
    (RUN/train_config.json; a mixture's datasets drawn with its weights, its keys renamed and dropped as in
    training; a teacher with per-dataset stats is distilled on its inference dataset alone, whose stats the
    student copies). Actions are needed for ``gating_targets="data"`` and the warm start.
    inference_dataset: a teacher with per-dataset stats normalises with this training dataset's (its own
    choice by default, the mixture's first), and so does the student.
    experts / covariance / student_overrides: the student (VDDPolicyConfig fields) when ``student`` is None.
    score_sigmas: teacher noise levels whose scores stand in for grad log pi (normalised action units).
    score_estimator: "centred" (the Gaussian part of the score in closed form; lower variance, same expected
    gradient) or "plain" (the paper's one-sample estimate); see ``mode_policy.distill.objective``.
    gating_targets: "data" (the batch's demonstration chunks, as VDD's reference code) or "teacher" (fresh
    teacher samples: needs states only, costs one full teacher sampling per step).
    warm_start_steps / warm_start_lr: first fit the experts' means and the gating to the demonstration
    chunks (``mode_policy.distill.warm_start``; no teacher calls, needs actions); 0 starts VDD from the
    random initialisation, as the paper.
    """
    sigmas = _check_arguments(
        gating_targets=gating_targets, score_estimator=score_estimator, steps=steps, batch_size=batch_size,
        samples_per_expert=samples_per_expert, log_every=log_every, experts=experts,
        warm_start_steps=warm_start_steps, lr=lr, warm_start_lr=warm_start_lr, score_sigmas=score_sigmas,
    )  # fmt: skip
    out = _check_out(out, overwrite)
    torch.manual_seed(seed)  # the student's initial weights
    teacher_policy, run_dir, denoiser = _resolve_teacher(teacher)
    if inference_dataset is not None:
        if teacher_policy is None:
            raise TeacherError("a bare denoiser teacher has no stats to choose: drop inference_dataset")
        teacher_policy.use_dataset_stats(inference_dataset)
    student = _student(student, teacher_policy, experts, covariance, student_overrides)
    need_actions = gating_targets == "data" or warm_start_steps > 0
    source = batch_source(data, run_dir, student.config, need_actions=need_actions, teacher=teacher_policy)
    settings = DistillSettings(
        teacher=str(teacher) if isinstance(teacher, (str, Path)) else type(teacher).__name__,
        dataset=source.description, experts=student.config.num_experts, steps=steps, batch_size=batch_size,
        seed=seed, lr=lr, samples_per_expert=samples_per_expert, score_sigmas=sigmas,
        score_estimator=score_estimator, gating_targets=gating_targets, warm_start_steps=warm_start_steps,
        warm_start_lr=warm_start_lr, log_every=log_every, student=student.config.to_dict(),
    )  # fmt: skip
    generator = torch.Generator(device=student.device).manual_seed(seed)
    start = time.perf_counter()  # seconds in the logs and summary count the warm start too
    warm_start_history = _warm_start(student, source, settings, generator, progress)
    deadline = None if max_minutes is None else start + 60 * max_minutes
    history, step = _vdd_steps(student, teacher_policy, denoiser, source, settings, generator, start,
                               deadline, progress)  # fmt: skip
    seconds = time.perf_counter() - start
    student.eval()
    if out is not None:
        _write_run(out, student, settings, history, warm_start_history, seconds, step)
    return DistillResult(student, history, warm_start_history, seconds, out)


# Steps of distill() -------------------------------------------------------------------------------------
def _check_arguments(
    *, gating_targets, score_estimator, warm_start_steps, lr, warm_start_lr, score_sigmas, **positive
) -> list[float]:
    """Refuse bad settings before anything loads; returns the score sigmas as floats."""
    if gating_targets not in GATING_TARGETS:
        raise ValueError(f"gating_targets must be one of {list(GATING_TARGETS)}, got {gating_targets!r}")
    if score_estimator not in SCORE_ESTIMATORS:
        raise ValueError(f"score_estimator must be one of {list(SCORE_ESTIMATORS)}, got {score_estimator!r}")
    _check_positive(**positive)
    if not isinstance(warm_start_steps, int) or isinstance(warm_start_steps, bool) or warm_start_steps < 0:
        raise ValueError(f"warm_start_steps must be a non-negative integer, got {warm_start_steps!r}")
    for name, value in (("lr", lr), ("warm_start_lr", warm_start_lr)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be a positive learning rate, got {value!r}")
    sigmas = [float(s) for s in score_sigmas]
    if not sigmas or any(not s > 0 for s in sigmas):
        raise ValueError(f"score_sigmas must be positive noise levels, got {list(score_sigmas)}")
    return sigmas


def _check_out(out: str | Path | None, overwrite: bool) -> Path | None:
    if out is None:
        return None
    out = check_output_dir(out, option="--out", owned=RUN_MARKERS, what="distillation run")
    if (out / POLICY_SUBDIR / "config.json").exists() and not overwrite:
        raise FileExistsError(
            f"{out} already holds a distilled policy; choose a new --out, or replace it with --overwrite "
            "(overwrite=True in Python)"
        )
    return out


def _student(student, teacher_policy, experts, covariance, overrides) -> VDDPolicy:
    """The given student (checked against the teacher) or a new one built from the teacher."""
    if student is None:
        if teacher_policy is None:
            raise TeacherError(
                "a bare denoiser teacher has no encoder or normalisation to copy: pass student=VDDPolicy(...)"
            )
        return VDDPolicy.from_teacher(
            teacher_policy, num_experts=experts, covariance=covariance, **(overrides or {})
        )
    if teacher_policy is not None:
        check_student_fits(student.config, teacher_policy.config)
        check_same_normalizer(student, teacher_policy)
    return student


def _warm_start(student, source, settings: DistillSettings, generator, progress) -> list[dict[str, float]]:
    if not settings.warm_start_steps:
        return []
    bar = _progress_bar(settings.warm_start_steps, progress, "warm start")
    history = warm_start(student, source, steps=settings.warm_start_steps, batch_size=settings.batch_size,
                         lr=settings.warm_start_lr, generator=generator, bar=bar)  # fmt: skip
    if bar is not None:
        bar.close()
    return history


def _vdd_steps(student, teacher_policy, denoiser, source, settings: DistillSettings, generator, start,
               deadline, progress) -> tuple[list[dict[str, float]], int]:  # fmt: skip
    """The VDD loop: per step one student forward, one teacher call per score sigma, one update.
    Returns the logged rows and the steps taken (fewer than asked when ``deadline`` passes)."""
    config, steps = student.config, settings.steps
    optimizer = torch.optim.AdamW(student.network.parameters(), lr=settings.lr, weight_decay=0.0)
    warmup = min(100, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps=warmup, total_steps=steps, min_lr_ratio=0.1)
    )
    chunk_shape = (config.chunk_size, config.action_dim)
    repeats = config.num_experts * settings.samples_per_expert
    history: list[dict[str, float]] = []
    window: dict[str, list[float]] = {}
    bar = _progress_bar(steps, progress, "distilling")
    student.train()
    step = 0
    for step in range(1, steps + 1):
        state, tasks, action = source.sample(settings.batch_size, generator)
        obs, goal = student.encode_inputs(state, tasks)  # the teacher's normalisation and encoder
        params = student.mixture(obs, goal)
        score_fn = teacher_score(denoiser, obs, goal, sigmas=settings.score_sigmas, repeats=repeats,
                                 action_shape=chunk_shape, generator=generator)  # fmt: skip
        if settings.gating_targets == "data":
            targets = student.normalizer.normalize(
                ACTION_KEY, action.to(device=student.device, dtype=student.dtype)
            )
        else:
            targets = _teacher_samples(teacher_policy, denoiser, obs, goal, chunk_shape, generator)
        loss = vdd_loss(
            params, score_fn, targets.flatten(1)[:, None], samples_per_expert=settings.samples_per_expert,
            score_estimator=settings.score_estimator, generator=generator,
        )  # fmt: skip
        if not bool(torch.isfinite(loss.total)):
            raise FloatingPointError(
                f"distillation loss became {loss.total.item()} at step {step}; lower --lr or use larger "
                "score sigmas (the teacher's score at tiny sigmas can be extreme far from its data)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        scheduler.step()
        for key, value in loss.logs.items():
            window.setdefault(key, []).append(float(value))
        if step % settings.log_every == 0 or step == steps:
            row = {"step": step, **{k: sum(v) / len(v) for k, v in window.items()}}
            row.update(lr=scheduler.get_last_lr()[0], seconds=round(time.perf_counter() - start, 3))
            history.append(row)
            window = {}
            if bar is not None:
                bar.set_postfix(
                    residual=f"{row['teacher_residual']:.3f}", H_gate=f"{row['gating_entropy']:.2f}"
                )
        if bar is not None:
            bar.update(1)
        if deadline is not None and time.perf_counter() > deadline:
            break
    if bar is not None:
        bar.close()
    return history, step


# Teacher and data ---------------------------------------------------------------------------------------
def _resolve_teacher(teacher: Any) -> tuple[Any, Path | None, Any]:
    """(MoDEPolicy or None, its run dir or None, the denoiser D(x, sigma, obs, goal))."""
    is_policy_like = isinstance(teacher, (str, Path)) or hasattr(teacher, "predict_action_chunk")
    if not is_policy_like and callable(teacher):
        return None, None, teacher
    policy, run_dir = load_teacher(teacher)
    return policy, run_dir, policy.denoiser.eval()


@torch.no_grad()
def _teacher_samples(policy, denoiser, obs, goal, chunk_shape, generator) -> torch.Tensor:
    """Fresh teacher action chunks (B, chunk, action_dim), normalised: its own sampler and schedule."""
    if policy is not None:
        config = policy.config
        sigmas = config.sampling_sigmas(dtype=obs.dtype, device=obs.device)
        options = {"use_cache": config.use_expert_cache} if denoiser.sampling_cache else {}
        return denoiser.sample_actions(
            obs, goal, sigmas, method=config.sampler, generator=generator, **options
        )
    from mode_policy.diffusion.samplers import sample
    from mode_policy.diffusion.schedules import exponential_schedule

    sigmas = exponential_schedule(10, 0.05, 80.0, dtype=obs.dtype, device=obs.device)
    noise = torch.randn((obs.shape[0], *chunk_shape), generator=generator, device=generator.device)
    x = noise.to(device=obs.device, dtype=obs.dtype) * sigmas[0]
    return sample(lambda x, sigma: denoiser(x, sigma, obs, goal), x, sigmas, method="ddim")


class BatchSource:
    """Random batches (with replacement) of raw states, instructions and, when present, action chunks;
    rows drawn with ``row_weights`` (N,) when given (a mixture's), else uniformly."""

    def __init__(self, state, tasks, action, description: str | None, row_weights=None) -> None:
        self.state, self.tasks, self.action, self.description = state, tasks, action, description
        self.row_weights = row_weights

    def sample(self, batch_size: int, generator: torch.Generator):
        if self.row_weights is None:
            rows = torch.randint(len(self.state), (batch_size,), generator=generator, device=generator.device)
        else:
            weights = self.row_weights.to(generator.device)
            rows = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        rows = rows.cpu()
        action = None if self.action is None else self.action[rows]
        return self.state[rows], [self.tasks[i] for i in rows.tolist()], action


def batch_source(
    data: Any, run_dir: Path | None, config: Any, *, need_actions: bool, teacher: Any = None
) -> BatchSource:
    """Distillation's states (and demonstration chunks, raw) from ``data`` as ``distill`` takes it, or from
    the teacher run's data when ``data`` is None; checked against the student's layout ``config``."""
    from mode_policy.data.lerobot import LeRobotDataset
    from mode_policy.data.windows import ActionChunkDataset

    description, row_weights = None, None
    if data is None:
        data, description, row_weights = _run_items(run_dir, config, teacher)
    if isinstance(data, (str, Path)):
        description = str(Path(data).resolve())
        data = LeRobotDataset(data)
    if isinstance(data, LeRobotDataset):
        description = description or str(data.root.resolve())
        data = ActionChunkDataset(data, n_obs_steps=config.n_obs_steps, chunk_size=config.chunk_size)
    if isinstance(data, Mapping):
        state = torch.as_tensor(data[STATE_KEY]).float()
        if state.dim() == 2:
            state = state.unsqueeze(1)
        tasks = data.get("task")
        tasks = [tasks] * len(state) if isinstance(tasks, str) else list(tasks or [])
        action = None if data.get(ACTION_KEY) is None else torch.as_tensor(data[ACTION_KEY]).float()
    else:  # a map-style dataset of ActionChunkDataset items
        items = [data[i] for i in range(len(data))]
        state = torch.stack([torch.as_tensor(it[STATE_KEY]) for it in items]).float()
        tasks = [it["task"] for it in items]
        action = torch.stack([torch.as_tensor(it[ACTION_KEY]) for it in items]).float()
    expected = (config.n_obs_steps, config.state_dim)
    if state.dim() != 3 or tuple(state.shape[1:]) != expected or len(state) == 0:
        raise ValueError(
            f"distillation states must have shape (N, n_obs_steps, state_dim) = (N, {expected[0]}, "
            f"{expected[1]}) like the teacher's, got {tuple(state.shape)}; is this the teacher's dataset?"
        )
    if len(tasks) != len(state):
        raise ValueError(f"need one task string per state: {len(tasks)} tasks for {len(state)} states")
    if need_actions:
        if action is None:
            raise ValueError(
                "gating_targets='data' and the warm start need the demonstration action chunks ('action'); "
                "pass a dataset with actions, or use gating_targets='teacher' and warm_start_steps=0"
            )
        if tuple(action.shape) != (len(state), config.chunk_size, config.action_dim):
            raise ValueError(
                f"'action' must have shape (N={len(state)}, chunk_size={config.chunk_size}, "
                f"action_dim={config.action_dim}), got {tuple(action.shape)}"
            )
    return BatchSource(state, tasks, action, description, row_weights)


def _run_items(run_dir: Path | None, config: Any, teacher: Any) -> tuple[Any, str, torch.Tensor | None]:
    """(training items, description, row weights or None) of the data the teacher run trained on: one
    dataset's windows; a mixture's windows drawn with its weights; for a teacher with per-dataset stats,
    its inference dataset's windows alone (the student normalises with that dataset's stats only)."""
    from mode_policy.data.mixture import DatasetMixture, MixtureDataset
    from mode_policy.data.windows import ActionChunkDataset

    source = open_run_data(run_dir)
    if source is None:
        raise ValueError(
            "no dataset given, and the teacher is not a training run whose recorded datasets still exist; "
            "pass the teacher's training dataset (--dataset DIR / data=...)"
        )

    def windows(dataset: Any) -> ActionChunkDataset:
        return ActionChunkDataset(dataset, n_obs_steps=config.n_obs_steps, chunk_size=config.chunk_size)

    if not isinstance(source, DatasetMixture):
        return windows(source), str(Path(source.root).resolve()), None
    if getattr(teacher, "per_dataset_stats", None) is not None:
        name = teacher.inference_dataset
        part = source.datasets[source.names.index(name)]
        return windows(part), f"{Path(part.root).resolve()} (the teacher's inference dataset {name})", None
    items = MixtureDataset([windows(part) for part in source.datasets], source)
    # Row r of dataset d is drawn with probability weight_d / size_d: the mixture's weights, as in training.
    share = torch.as_tensor(source.weights, dtype=torch.float64) / torch.as_tensor(items.sizes).clamp(min=1)
    row_weights = share.repeat_interleave(torch.as_tensor(items.sizes))
    return items, " + ".join(str(Path(root).resolve()) for root in source.roots), row_weights


# Output ---------------------------------------------------------------------------------------------------
def _write_run(
    out: Path, student: VDDPolicy, settings: DistillSettings, history, warm_start_history, seconds, steps
) -> None:
    from mode_policy.training.curves import write_metrics_csv

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "distill_config.json", json.dumps(asdict(settings), indent=2) + "\n")
    if history:
        write_metrics_csv(history, out / "metrics.csv")
        plot_distill_curve(history, out / "distill_curve.png")
    if warm_start_history:
        write_metrics_csv(warm_start_history, out / "warm_start.csv")
    summary = {
        "steps": steps,
        "seconds": round(seconds, 2),
        "final": history[-1] if history else {},
        "warm_start_final": warm_start_history[-1] if warm_start_history else {},
        "parameters": student.parameter_counts(),
    }
    atomic_write_text(out / "distill_summary.json", json.dumps(summary, indent=2) + "\n")
    student.save_pretrained(out / POLICY_SUBDIR)  # last: a run with policy/config.json is complete


def plot_distill_curve(rows: list[dict[str, float]], path: str | Path) -> None:
    """Objective, teacher residual (log) and gating entropy against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    figure, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    panels = (
        ("objective", "expert objective (surrogate)", False),
        ("teacher_residual", "RMS |D(a; sigma) - a|", True),
        ("gating_entropy", "gating entropy (nats)", False),
    )
    for axis, (key, label, log) in zip(axes, panels, strict=True):
        axis.plot(steps, [row.get(key) for row in rows])
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if log:
            axis.set_yscale("log")
    axes[0].set_title("VDD distillation")
    axes[-1].set_xlabel("step")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


def _progress_bar(total: int, enabled: bool, description: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
