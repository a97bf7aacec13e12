"""Meta-World benchmark: collect scripted demos, train the default state-based MoDE policy, evaluate it.

    python benchmarks/metaworld.py --suite mt10 --demos-per-task 50 --minutes 25
    python benchmarks/metaworld.py --suite mt50 --demos-per-task 10 --minutes 40
    python benchmarks/metaworld.py --suite mt10 --demos-per-task 50 --minutes 25 --export mt10-mode-small
    python benchmarks/metaworld.py --suite mt10 --steps 10000 --minutes 60 --val-episodes 20 --tag mt10-long

Writes benchmarks/results/metaworld-<suite>-<demos>demos.{json,md} (per-task success with Wilson 95%
intervals, command, seeds, wall times, model size) and the learning curve PNG beside them. ``--export NAME``
also ships the trained policy as a pretrained checkpoint (src/mode_policy/pretrained/NAME, weights stored in
float16 to stay under 10 MB) and evaluates that exported copy, so the recorded numbers are the shipped
model's. The run directory (data, checkpoints, TensorBoard logs) goes to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# This script shares its name with the metaworld package: drop its folder from the import path so that
# `import metaworld` (here and in worker processes, which inherit sys.path) finds the real package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from mode_policy.envs.collect import collect_demonstrations  # noqa: E402
from mode_policy.envs.metaworld import TEST_SEED, VALIDATION_SEED  # noqa: E402
from mode_policy.evaluation.report import machine_description  # noqa: E402
from mode_policy.evaluation.rollout import evaluate  # noqa: E402
from mode_policy.io import atomic_write, atomic_write_text  # noqa: E402
from mode_policy.policies.mode.modeling import MoDEPolicy  # noqa: E402
from mode_policy.training.train import train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PRETRAINED = REPO / "src" / "mode_policy" / "pretrained"


def export_pretrained(policy_dir: Path, name: str, card: str) -> Path:
    """Copy a saved policy into the package, denoiser weights as float16 (loading casts them back)."""
    target = PRETRAINED / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(policy_dir, target)
    weights = target / "model.safetensors"
    state = load_file(str(weights))
    half = {
        k: (v.half() if k.startswith("denoiser.") and v.is_floating_point() else v) for k, v in state.items()
    }
    atomic_write(weights, lambda tmp: save_file(half, str(tmp)))
    atomic_write_text(target / "README.md", card)
    return target


def _finished(run_dir: Path, steps: int) -> bool:
    """Whether ``run_dir`` already trained all ``steps`` in one session and exported its policy."""
    summary = run_dir / "train_summary.json"
    if not (summary.is_file() and (run_dir / "policy" / "config.json").is_file()):
        return False
    values = json.loads(summary.read_text())
    return values["global_step"] >= steps and values["steps_this_session"] == values["global_step"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=["mt10", "mt50"], default="mt10")
    parser.add_argument("--demos-per-task", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=25.0, help="training wall-clock budget")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: from --minutes)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-episodes", type=int, default=50, help="per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run folder (default runs/bench-<suite>-<demos>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="policy override")
    parser.add_argument("--export", default=None, metavar="NAME", help="ship the policy as a pretrained name")
    parser.add_argument(
        "--val-episodes", type=int, default=0,
        help="per task, also on the validation seeds (5000 + seed) that recipe choices are made on",
    )  # fmt: skip
    parser.add_argument("--tag", default=None, help="results name (default metaworld-<suite>-<demos>demos)")
    args = parser.parse_args()

    tag = args.tag or f"metaworld-{args.suite}-{args.demos_per_task}demos"
    out = Path(args.out or f"runs/bench-{args.suite}-{args.demos_per_task}")
    command = "python benchmarks/metaworld.py " + " ".join(sys.argv[1:])
    timings = {}
    started = time.perf_counter()
    data_dir = out / "data"
    if not (data_dir / "meta" / "info.json").is_file():
        collect_demonstrations(
            data_dir, suite=args.suite, episodes_per_task=args.demos_per_task, seed=args.seed, workers=2
        )
    timings["collect_s"] = round(time.perf_counter() - started, 1)

    began = time.perf_counter()
    # Steps: about what fits the budget at the rate measured on this machine (~5 steps/s at batch 128);
    # max_minutes stops early (and exports the EMA weights) if the machine is slower.
    steps = args.steps or int(args.minutes * 60 * 4.5)
    run_dir = out / "run"
    if _finished(run_dir, steps):  # e.g. rerun with --export: the trained policy is reused as it is
        summary = json.loads((run_dir / "train_summary.json").read_text())
        timings["train_s"] = summary["seconds_this_session"]
    else:
        train(
            data_dir,
            run_dir,
            steps=steps,
            batch_size=args.batch_size,
            seed=args.seed,
            lr=args.lr,
            policy_overrides=args.set or None,
            checkpoint_every=max(200, steps // 10),
            max_minutes=args.minutes,
            resume=(run_dir / "checkpoints" / "last.ckpt").exists(),
        )
        timings["train_s"] = round(time.perf_counter() - began, 1)
        summary = json.loads((run_dir / "train_summary.json").read_text())

    policy_dir = run_dir / "policy"
    policy = MoDEPolicy.from_pretrained(policy_dir)
    counts = policy.parameter_counts()
    if args.export:
        card = (
            f"# {args.export}\n\nA state-based MoDE policy for Meta-World {args.suite.upper()}, made by\n\n"
            f"    {command}\n\n"
            f"{args.demos_per_task} scripted-expert demos per task (seed {args.seed}), "
            f"{summary['global_step']} training steps, EMA weights, stored as float16 "
            f"({counts['total'] / 1e6:.2f}M parameters, {counts['active'] / 1e6:.2f}M active).\n"
            f"Evaluation: see benchmarks/RESULTS.md ({tag}).\n\n"
            f"    mode-policy eval --policy {args.export} --suite {args.suite}\n"
        )
        policy_dir = export_pretrained(policy_dir, args.export, card)

    began = time.perf_counter()
    results = evaluate(
        policy_dir,
        suite=args.suite,
        episodes_per_task=args.eval_episodes,
        seed=args.seed + TEST_SEED,
        out_dir=out / "eval",
    )
    timings["eval_s"] = round(time.perf_counter() - began, 1)
    validation = None
    if args.val_episodes:
        began = time.perf_counter()
        validation = evaluate(
            policy_dir, suite=args.suite, episodes_per_task=args.val_episodes,
            seed=args.seed + VALIDATION_SEED, out_dir=out / "eval-validation",
        )  # fmt: skip
        timings["validation_s"] = round(time.perf_counter() - began, 1)
    timings["total_s"] = round(time.perf_counter() - started, 1)

    record = {
        "command": command,
        "suite": args.suite,
        "demos_per_task": args.demos_per_task,
        "seeds": {"demos": args.seed, "training": args.seed, "evaluation": args.seed + TEST_SEED},
        "eval_episodes_per_task": args.eval_episodes,
        "train_summary": summary,
        "parameters": counts,
        "timings": timings,
        "torch_threads": torch.get_num_threads(),
        "mean_success": results["mean_success"],
        "mean_ci95": results["mean_ci95"],
        "per_task": {
            t: {k: v for k, v in e.items() if k != "episodes"} for t, e in results["per_task"].items()
        },
        "inference": results["inference"],
        "policy": str(policy_dir),
        "machine": machine_description(),
    }
    if validation is not None:
        record["validation"] = {
            "seed": args.seed + VALIDATION_SEED, "episodes_per_task": args.val_episodes,
            "mean_success": validation["mean_success"], "mean_ci95": validation["mean_ci95"],
            "per_task": {t: e["success_rate"] for t, e in validation["per_task"].items()},
        }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{tag}.json", json.dumps(record, indent=2, default=str) + "\n")
    curve = run_dir / "learning_curve.png"
    if curve.exists():
        shutil.copy(curve, RESULTS / f"{tag}-learning-curve.png")
    lines = [
        f"### Meta-World {args.suite.upper()}, {args.demos_per_task} demos per task",
        "",
        f"Command: `{command}`. Seeds: demos {args.seed}, training {args.seed}, "
        f"evaluation {args.seed + TEST_SEED} "
        f"({args.eval_episodes} episodes per task). Model: {counts['total'] / 1e6:.2f}M parameters "
        f"({counts['active'] / 1e6:.2f}M active). Wall time: collect {timings['collect_s']:.0f} s, train "
        f"{timings['train_s']:.0f} s ({summary['global_step']} steps at batch {args.batch_size}), evaluate "
        f"{timings['eval_s']:.0f} s. Inference (expert cache on): "
        f"{results['inference']['ms_per_chunk_batch1_median']:.1f} ms per chunk at batch 1.",
        "",
        "| task | success | 95% CI |",
        "|---|---:|---|",
    ]
    for task, entry in results["per_task"].items():
        low, high = entry["ci95"]
        lines.append(f"| {task} | {entry['success_rate']:.2f} | [{low:.2f}, {high:.2f}] |")
    low, high = results["mean_ci95"]
    lines.append(f"| **mean** | **{results['mean_success']:.3f}** | [{low:.3f}, {high:.3f}] |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(RESULTS / f"{tag}.md", table)
    print(table)


if __name__ == "__main__":
    main()
