"""The ``mode-policy`` command line. Each command is a thin wrapper over a Python function."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from mode_policy.messages import ModePolicyWarning

_python_show_warning = warnings.showwarning


# What a command reports as one line instead of a traceback: bad values and files (ValueError, with the
# library's DatasetError / CorruptFileError / TeacherError), missing or taken paths (OSError), missing keys,
# and an optional dependency that is not installed (ImportError, whose message names the extra).
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, KeyError, ImportError)


def reports_errors(command: str, *errors: type[Exception]) -> Callable:
    """Turn the user errors a command expects (``USER_ERRORS`` and ``errors``) into one line
    ``mode-policy <command>: error: ...`` on stderr and exit code 2, instead of a traceback."""

    def decorate(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(run)
        def wrapper(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except (*USER_ERRORS, *errors) as err:
                text = err.args[0] if isinstance(err, KeyError) and err.args else err
                message = " ".join(str(text).split())  # one line, whatever the message held
                print(f"mode-policy {command}: error: {message}", file=sys.stderr)
                return 2

        return wrapper

    return decorate


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad flag or value reported as one line (and exit code 2) instead of the usage."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings as one plain line on stderr; any other warning as Python prints it."""
    if issubclass(category, ModePolicyWarning):
        print(f"mode-policy: warning: {message}", file=file or sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


def _numbers(text: str) -> list[float]:
    """``"0.05,0.1"`` -> [0.05, 0.1], for comma-separated numeric flags."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, e.g. 0.05,0.1,0.2; got {text!r}"
        ) from None


def demo(args: argparse.Namespace) -> int:
    """Train a small MoDE denoiser on a two-mode toy, sample it with and without the expert cache."""
    import torch

    from mode_policy.diffusion.schedules import exponential_schedule
    from mode_policy.training.toy import mode_fractions, train_two_mode_toy

    result = train_two_mode_toy(seconds=args.seconds, max_steps=args.steps, seed=args.seed, progress=True)
    denoiser = result.denoiser
    sigmas = exponential_schedule(10, sigma_min=0.01, sigma_max=80.0)
    zeros = torch.zeros(args.samples, 1)
    cached = denoiser.sample_actions(zeros, zeros, sigmas, generator=torch.Generator().manual_seed(1))
    uncached = denoiser.sample_actions(
        zeros, zeros, sigmas, generator=torch.Generator().manual_seed(1), use_cache=False
    )
    fractions, off_mode = mode_fractions(cached)
    routes = denoiser.cache_experts(sigmas).expert_ids()
    summary = {
        "train_steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "final_loss": round(result.final_loss, 4),
        "mode_fractions": [round(f, 3) for f in fractions],
        "off_mode_fraction": round(off_mode, 3),
        "cached_vs_uncached_max_abs_diff": (cached - uncached).abs().max().item(),
        "experts_per_step_layer0": [list(step[0]) for step in routes],
    }
    print(f"trained {result.steps} steps in {result.seconds:.1f}s, final loss {result.final_loss:.4f}")
    print(f"samples per mode: {fractions[0]:.1%} / {fractions[1]:.1%} (off-mode {off_mode:.1%})")
    print(f"cached vs uncached sampling, max |difference|: {summary['cached_vs_uncached_max_abs_diff']:.2e}")
    print("experts chosen at each sampler step (layer 0):", summary["experts_per_step_layer0"])
    if args.json:
        print(json.dumps(summary))
    return 0


@reports_errors("collect", RuntimeError)  # RuntimeError: the scripted experts or the renderer failed
def collect(args: argparse.Namespace) -> int:
    """Record Meta-World scripted-expert demonstrations into a LeRobotDataset v3."""
    from mode_policy.data.lerobot import LeRobotDataset
    from mode_policy.envs.collect import collect_demonstrations

    out = collect_demonstrations(
        args.out,
        suite=args.suite,
        tasks=args.tasks,
        episodes_per_task=args.episodes_per_task,
        seed=args.seed,
        keep_failed=args.keep_failed,
        progress=True,
        workers=args.workers,
        overwrite=args.overwrite,
        cameras=args.cameras,
        image_size=args.image_size,
        image_format=args.image_format,
    )
    dataset = LeRobotDataset(out)
    print(
        f"wrote {dataset.num_episodes} episodes, {dataset.num_frames} frames, {len(dataset.tasks)} tasks "
        f"at {dataset.fps} fps to {out}"
    )
    return 0


@reports_errors("train", FloatingPointError)  # FloatingPointError: training diverged
def train_command(args: argparse.Namespace) -> int:
    """Train a policy on a LeRobot dataset or a mixture of several (Lightning; resumable; DDP by flags)."""
    from mode_policy.training.train import train

    run = train(
        args.dataset,  # a list: one dataset, or a mixture
        args.out,
        policy_type=args.policy_type,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        resume=args.resume,
        policy_overrides=args.set or None,
        devices=int(args.devices) if args.devices.isdigit() else args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        max_minutes=args.max_minutes,
        num_workers=args.num_workers,
        val_dataset=args.val_dataset,
        val_every=args.val_every,
        init_from=args.init_from,
        freeze=args.freeze,
        extend_tasks=args.extend_tasks,
        dataset_weights=args.dataset_weights,
        normalization=args.normalization,
        rename=args.rename,
        drop=args.drop,
    )
    print(f"policy (EMA weights) saved to {run / 'policy'}; learning curve {run / 'learning_curve.png'}")
    return 0


@reports_errors("eval", ConnectionError)  # ConnectionError: no server at --server
def eval_command(args: argparse.Namespace) -> int:
    """Evaluate a policy on Meta-World with seeded episodes; print and save the success table."""
    if (args.policy is None) == (args.server is None):
        raise ValueError("pass --policy (evaluate here) or --server ws://HOST:PORT (through a policy server)")
    episodes = dict(
        suite=args.suite, tasks=args.tasks, episodes_per_task=args.episodes_per_task, seed=args.seed,
        num_workers=args.workers, max_episode_steps=args.max_episode_steps, out_dir=args.out,
    )  # fmt: skip
    results = _eval_here(args, episodes) if args.server is None else _eval_served(args, episodes)
    if "results_dir" in results:
        print(f"results written to {results['results_dir']}")
    return 0


def _eval_here(args: argparse.Namespace, episodes: dict) -> dict:
    from mode_policy.evaluation.rollout import evaluate

    if any(getattr(args, name) is not None for name in ("latency_ms", "modes", "token_file")):
        raise ValueError("--latency-ms, --modes and --token-file go with --server")
    return evaluate(
        args.policy,
        video_dir=args.video_dir,
        use_expert_cache=False if args.no_expert_cache else None,
        compile=args.compile,
        inference_dataset=args.inference_dataset,
        replan_steps=args.replan_steps,
        **episodes,
    )


def _eval_served(args: argparse.Namespace, episodes: dict) -> dict:
    from mode_policy.serving.evaluate import evaluate_served

    if args.no_expert_cache or args.compile or args.video_dir is not None or args.inference_dataset:
        raise ValueError(
            "--no-expert-cache, --compile, --video-dir and --inference-dataset are the server's business "
            "with --server"
        )
    return evaluate_served(
        args.server,
        latency_ms=args.latency_ms if args.latency_ms is not None else [0.0],
        control_hz=args.control_hz,
        modes=args.modes.split(",") if args.modes else ("sync", "weighted", "inpaint"),
        replan_steps=args.replan_steps,
        token=_read_token(args.token_file),
        **episodes,
    )


def _read_token(path: str | None) -> str | None:
    """The shared secret in a file (one line); None without a file."""
    if path is None:
        return None
    token_file = Path(path)
    if not token_file.is_file():
        raise FileNotFoundError(f"--token-file {path} does not exist; write a secret into it, e.g. "
                                f"`openssl rand -hex 16 > {path}`")  # fmt: skip
    token = token_file.read_text(errors="replace").strip()
    if not token or "\n" in token:
        raise ValueError(f"--token-file {path} must hold one non-empty line (the shared secret)")
    return token


@reports_errors("serve")
def serve_command(args: argparse.Namespace) -> int:
    """Serve a policy (run, saved or shipped policy, or exported .onnx) to robots over websockets."""
    from mode_policy.policies.registry import load_policy
    from mode_policy.serving.server import PolicyServer

    token = _read_token(args.token_file)
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        raise ValueError(
            f"--host {args.host} opens the policy to the network: pass --token-file too (clients must then "
            "present the token)"
        )
    policy = load_policy(args.policy, device=args.device, inference_dataset=args.inference_dataset)
    server = PolicyServer(
        policy, host=args.host, port=args.port, token=token, batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch, max_message_bytes=args.max_message_bytes, control_hz=args.control_hz,
    )  # fmt: skip
    print(
        f"serving {args.policy} ({type(policy).name}, chunk {policy.config.chunk_size} x "
        f"{policy.config.action_dim}) on ws://{args.host}:{args.port}"
        + (" (token required)" if token else "")
        + "; Ctrl-C stops",
        flush=True,
    )
    server.run()
    return 0


@reports_errors("inspect")
def inspect_command(args: argparse.Namespace) -> int:
    """Plot per-layer expert usage (sampler step x expert) of a trained policy."""
    from mode_policy.evaluation.inspect import inspect_policy

    report = inspect_policy(args.policy, args.out, dataset=args.dataset, seed=args.seed)
    print(f"expert usage ({report['router_input']} routing) written to {report['out']}")
    return 0


@reports_errors("quickstart", RuntimeError, FloatingPointError)
def quickstart_command(args: argparse.Namespace) -> int:
    """Collect MT10 demos, train a small MoDE policy and evaluate it, within a time budget."""
    from mode_policy.training.quickstart import quickstart

    quickstart(minutes=args.minutes, out=args.out, seed=args.seed)
    return 0


@reports_errors("distill", FloatingPointError)  # FloatingPointError: the distillation loss diverged
def distill_command(args: argparse.Namespace) -> int:
    """Distil a trained MoDE policy into a one-step mixture of Gaussian experts (VDD)."""
    from mode_policy.distill import distill

    result = distill(
        args.teacher,
        args.dataset,
        args.out,
        experts=args.experts,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        covariance=args.covariance,
        samples_per_expert=args.samples_per_expert,
        score_sigmas=args.sigmas,
        score_estimator=args.score_estimator,
        gating_targets=args.gating_targets,
        warm_start_steps=args.warm_start_steps,
        warm_start_lr=args.warm_start_lr,
        student_overrides={"action_mode": args.action_mode},
        max_minutes=args.max_minutes,
        inference_dataset=args.inference_dataset,
        overwrite=args.overwrite,
    )
    print(
        f"VDD student ({result.student.config.num_experts} experts) saved to {result.out / 'policy'} after "
        f"{result.seconds:.0f} s; curves {result.out / 'distill_curve.png'}; evaluate it with "
        f"`mode-policy eval --policy {result.out}`"
    )
    return 0


@reports_errors("export", RuntimeError)  # RuntimeError: the exported graph differs from torch (a bug)
def export_command(args: argparse.Namespace) -> int:
    """Export a policy's whole action chunk to one ONNX file for ONNX Runtime (fp32 or int8)."""
    from mode_policy.runtime.export import export_onnx

    report = export_onnx(
        args.policy,
        args.out,
        quantize=args.quantize,
        batch=args.batch,
        dynamic_batch=args.dynamic_batch,
        task=args.task,
        calibration=args.calibration,
        inference_dataset=args.inference_dataset,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {report.path} ({report.bytes / 1e6:.1f} MB, {report.quantize or 'fp32'}; weights used "
        f"{report.weight_bytes / 1e6:.1f} MB fp32) in {report.seconds:.0f} s; max |ONNX Runtime - torch| "
        f"{report.max_abs_diff:.1e}; run it with `mode-policy eval --policy {report.path}`"
    )
    return 0


def _add_inference_dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--inference-dataset", default=None, metavar="NAME",
        help="a mixture policy with per-dataset stats: normalise with this training dataset's (default: its "
        "first; names are the datasets' folder names)",
    )  # fmt: skip


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help="export a policy's action chunk to ONNX (fp32 or int8) for ONNX Runtime"
    )
    parser.add_argument("--policy", required=True, help="run dir, save_pretrained dir or shipped name")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--quantize", default=None, help="int8 (weights) or int8-static (QDQ, calibrated)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--batch", type=int, default=1, help="the batch size the graph takes (1)")
    size.add_argument("--dynamic-batch", action="store_true", help="any batch size")
    parser.add_argument("--task", default=None, help="the instruction a goal-routed policy is exported for")
    parser.add_argument("--calibration", default=None, help="LeRobot dataset for --quantize int8-static")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_inference_dataset(parser)
    parser.set_defaults(run=export_command)


def _add_distill_command(commands: argparse._SubParsersAction) -> None:
    from mode_policy.distill.warm_start import WARM_START_LR, WARM_START_STEPS  # torch is loaded already

    parser = commands.add_parser(
        "distill", help="distil a trained MoDE policy into a one-step Gaussian mixture of experts (VDD)"
    )
    parser.add_argument("--teacher", required=True, help="MoDE run dir, save_pretrained dir or shipped name")
    parser.add_argument("--out", required=True, help="run directory for the student (OUT/policy, curves)")
    parser.add_argument("--experts", type=int, default=4, help="Gaussian experts (4)")
    parser.add_argument("--dataset", default=None, help="states from here (default: the teacher run's data)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64, help="states per step (64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--covariance", choices=["full", "diagonal"], default="full")
    parser.add_argument("--samples-per-expert", type=int, default=1, help="reparameterised draws per step")
    parser.add_argument(
        "--sigmas", type=_numbers, default=[0.05, 0.1, 0.2], help="teacher score noise levels (0.05,0.1,0.2)"
    )
    parser.add_argument(
        "--score-estimator", choices=["centred", "plain"], default="centred",
        help="centred: the score's Gaussian part in closed form (lower variance); plain: as the paper",
    )  # fmt: skip
    parser.add_argument(
        "--gating-targets", choices=["data", "teacher"], default="data",
        help="actions whose responsibilities refit the gating: demonstrations or teacher samples",
    )  # fmt: skip
    parser.add_argument(
        "--warm-start-steps", type=int, default=WARM_START_STEPS,
        help="steps fitting expert means and gating to the demos first (%(default)s, no teacher); 0: paper",
    )  # fmt: skip
    parser.add_argument("--warm-start-lr", type=float, default=WARM_START_LR)
    parser.add_argument(
        "--action-mode", choices=["mean", "greedy", "sample"], default="mean",
        help="acting: mean of a sampled expert (VDD), mean of the likeliest expert, or a full draw",
    )  # fmt: skip
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget")
    parser.add_argument("--overwrite", action="store_true", help="replace a student already at --out")
    _add_inference_dataset(parser)
    parser.set_defaults(run=distill_command)


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    train_parser = commands.add_parser("train", help="train a policy (MoDE by default) on a LeRobot dataset")
    train_parser.add_argument(
        "--dataset",
        required=True,
        action="append",
        help="LeRobotDataset v3 folder; repeat it to train on a mixture of datasets",
    )
    train_parser.add_argument(
        "--dataset-weights",
        type=_numbers,
        default=None,
        metavar="W1,W2,...",
        help="a mixture: the probability of drawing from each --dataset, in order (default: by frames)",
    )
    train_parser.add_argument(
        "--normalization",
        choices=("pooled", "per-dataset"),
        default=None,
        help="a mixture's stats: pooled over the datasets (default), or each dataset's own",
    )
    train_parser.add_argument(
        "--rename",
        action="append",
        metavar="OLD=NEW",
        default=None,
        help="rename a feature key in the datasets that have it (repeatable)",
    )
    train_parser.add_argument(
        "--drop",
        action="append",
        metavar="KEY",
        default=None,
        help="leave a feature out of every dataset (repeatable)",
    )
    train_parser.add_argument("--out", required=True, help="run directory (checkpoints, logs, policy/)")
    train_parser.add_argument(
        "--policy-type", default="mode", help="a registered policy type (mode); a resumed run keeps its own"
    )
    train_parser.add_argument("--steps", type=int, default=None, help="optimizer steps in total (20000)")
    train_parser.add_argument("--batch-size", type=int, default=None, help="per device (256)")
    train_parser.add_argument("--seed", type=int, default=None, help="(0)")
    train_parser.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (3e-4)")
    train_parser.add_argument("--resume", action="store_true", help="continue RUN from its last checkpoint")
    train_parser.add_argument("--devices", default="1", help="devices per node, or 'auto'")
    train_parser.add_argument("--num-nodes", type=int, default=1)
    train_parser.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp")
    train_parser.add_argument(
        "--precision",
        default="auto",
        help="auto (bf16-mixed on bf16 GPUs, else 32-true) or a Lightning value",
    )
    train_parser.add_argument("--checkpoint-every", type=int, default=None, help="steps (1000)")
    train_parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock training budget")
    train_parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    train_parser.add_argument(
        "--val-dataset",
        default=None,
        help="held-out LeRobot dataset: its loss is in metrics.csv and the curve",
    )
    train_parser.add_argument("--val-every", type=int, default=None, help="steps (--checkpoint-every)")
    train_parser.add_argument(
        "--init-from", default=None, help="fine-tune this trained policy (run, policy folder or shipped name)"
    )
    train_parser.add_argument(
        "--freeze", default=None, help="with --init-from: groups to keep fixed, e.g. router,experts"
    )
    train_parser.add_argument(
        "--extend-tasks", action="store_true", help="with --init-from: new tasks for a one-hot encoder"
    )
    train_parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="policy config override, e.g. denoiser.width=64"
    )
    train_parser.set_defaults(run=train_command)

    eval_parser = commands.add_parser("eval", help="evaluate a policy on Meta-World MT10 / MT50")
    eval_parser.add_argument(
        "--policy", default=None, help="run dir, save_pretrained dir, exported .onnx or shipped name"
    )
    eval_parser.add_argument(
        "--server", default=None, help="ws://HOST:PORT: drive the rollouts through a server"
    )
    eval_parser.add_argument(
        "--latency-ms", type=_numbers, default=None, help="with --server: injected delays, e.g. 0,50,150"
    )
    eval_parser.add_argument(
        "--control-hz", type=float, default=20.0, help="with --server: control rate (20)"
    )
    eval_parser.add_argument(
        "--modes",
        default=None,
        help="with --server: sync,latest,weighted,crossfade,inpaint (sync,weighted,inpaint)",
    )
    eval_parser.add_argument(
        "--replan-steps", type=int, default=None,
        help="run N actions of each chunk before predicting the next (default the policy's n_action_steps; "
        "with --server: an async robot asks for a chunk every N steps)",
    )  # fmt: skip
    eval_parser.add_argument("--token-file", default=None, help="with --server: the server's token")
    eval_parser.add_argument("--suite", choices=["mt10", "mt50"], default="mt10")
    eval_parser.add_argument("--tasks", default=None, help="comma-separated subset, e.g. reach-v3,push-v3")
    eval_parser.add_argument("--episodes-per-task", type=int, default=10)
    eval_parser.add_argument("--seed", type=int, default=0, help="base seed of the evaluation placements")
    eval_parser.add_argument("--workers", type=int, default=2, help="environment processes")
    eval_parser.add_argument("--video-dir", default=None, help="MP4 of each task's first episode (libosmesa)")
    eval_parser.add_argument("--no-expert-cache", action="store_true", help="route at every step instead")
    eval_parser.add_argument("--compile", action="store_true", help="run the chunk under torch.compile")
    eval_parser.add_argument("--out", default=None, help="results folder (default RUN/eval/<suite>-seed<S>)")
    eval_parser.add_argument(
        "--max-episode-steps", type=int, default=None,
        help="end episodes sooner than Meta-World's 500 steps (smoke tests; results are not comparable)",
    )  # fmt: skip
    _add_inference_dataset(eval_parser)
    eval_parser.set_defaults(run=eval_command)

    inspect_parser = commands.add_parser(
        "inspect", help="expert-usage heatmaps (sampler step x expert, per layer) of a trained policy"
    )
    inspect_parser.add_argument("policy", help="training run folder, save_pretrained folder or shipped name")
    inspect_parser.add_argument("--out", default=None, help="output folder (default RUN/inspect)")
    inspect_parser.add_argument("--dataset", default=None, help="observations from this LeRobot dataset")
    inspect_parser.add_argument("--seed", type=int, default=0)
    inspect_parser.set_defaults(run=inspect_command)
    quick_parser = commands.add_parser(
        "quickstart", help="collect MT10 demos, train a small MoDE policy, evaluate it (<= --minutes)"
    )
    quick_parser.add_argument("--minutes", type=float, default=10.0, help="total wall-clock budget")
    quick_parser.add_argument("--out", default="runs/quickstart")
    quick_parser.add_argument("--seed", type=int, default=0)
    quick_parser.set_defaults(run=quickstart_command)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mode-policy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    demo_parser = commands.add_parser("demo", help="train and sample a MoDE denoiser on a 2-D two-mode toy")
    demo_parser.add_argument("--seconds", type=float, default=40.0, help="training time budget")
    demo_parser.add_argument("--steps", type=int, default=1500, help="maximum training steps")
    demo_parser.add_argument("--samples", type=int, default=2000)
    demo_parser.add_argument("--seed", type=int, default=0)
    demo_parser.add_argument("--json", action="store_true", help="also print a JSON summary line")
    demo_parser.set_defaults(run=demo)
    collect_parser = commands.add_parser(
        "collect", help="record Meta-World scripted-expert demos into a LeRobotDataset v3 folder"
    )
    collect_parser.add_argument("--suite", choices=["mt10", "mt50"], default="mt10")
    collect_parser.add_argument("--tasks", default=None, help="comma-separated subset, e.g. reach-v3,push-v3")
    collect_parser.add_argument("--episodes-per-task", type=int, default=50)
    collect_parser.add_argument("--out", required=True, help="dataset folder to create (must not exist)")
    collect_parser.add_argument("--seed", type=int, default=0, help="base seed of the demo goal placements")
    collect_parser.add_argument("--keep-failed", action="store_true", help="also keep episodes that failed")
    collect_parser.add_argument(
        "--workers", type=int, default=1, help="processes collecting tasks in parallel"
    )
    collect_parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset at --out"
    )
    collect_parser.add_argument(
        "--cameras",
        default=None,
        help="also render these Meta-World cameras, e.g. corner,gripper (corner, corner2, corner3, corner4, "
        "topview, behindGripper, gripperPOV; gripper = gripperPOV); CPU needs libosmesa6",
    )
    collect_parser.add_argument("--image-size", type=int, default=96, help="camera frames are SIZE x SIZE")
    collect_parser.add_argument(
        "--image-format", choices=["video", "image"], default="video", help="MP4 videos (PyAV) or PNG frames"
    )
    collect_parser.set_defaults(run=collect)
    _add_training_commands(commands)
    _add_distill_command(commands)
    _add_export_command(commands)
    _add_serve_command(commands)
    return parser


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    from mode_policy.serving.protocol import DEFAULT_PORT, MAX_BATCH, MAX_MESSAGE_BYTES, WINDOW_MS

    parser = commands.add_parser("serve", help="serve a policy to robots (websockets + msgpack)")
    parser.add_argument("--policy", required=True, help="run dir, save_pretrained dir, .onnx or shipped name")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    parser.add_argument("--token-file", default=None, help="file holding a secret clients must present")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-window-ms", type=float, default=WINDOW_MS, help="wait for company (ms)")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH, help="requests per forward pass")
    parser.add_argument("--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES, help="per message")
    parser.add_argument("--control-hz", type=float, default=None, help="the robot's control rate (metadata)")
    _add_inference_dataset(parser)
    parser.set_defaults(run=serve_command)


def main(argv: list[str] | None = None) -> int:
    previous, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
