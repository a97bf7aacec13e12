"""VDD on Meta-World MT10: distil the MoDE teacher into a one-step Gaussian mixture, evaluate both, time both.

    python benchmarks/distill_mt10.py                                   # the end-to-end benchmark's teacher
    python benchmarks/distill_mt10.py --teacher mt10-mode-small --dataset data/mt10
    python benchmarks/distill_mt10.py --steps 20 --eval-episodes 1 --tasks reach-v3 --results /tmp/x.json

Teacher: --teacher, else runs/bench-mt10-50/run (benchmarks/metaworld.py), else the shipped pretrained
``mt10-mode-small``. States come from the teacher run's training data (--dataset overrides; a teacher
without a run and no --dataset gets fresh scripted demos in OUT/data). Student and teacher are evaluated on
the same seeded episodes (mode_policy.evaluation.evaluate), and so is the student after the warm start
alone (before VDD; --warm-start-steps 0 skips it). Latency: ms per action chunk at batch 1, median over
repetitions that interleave the policies (teacher with its expert cache), so a busy machine slows all alike.
Writes benchmarks/results/distill-mt10.json (or --results) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

# benchmarks/metaworld.py would shadow the `metaworld` package for this script and its env worker processes
# (they inherit sys.path): drop this folder from the path first, as benchmarks/metaworld.py does.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from mode_policy.distill import VDDPolicy, distill, load_teacher  # noqa: E402
from mode_policy.distill.trainer import batch_source  # noqa: E402
from mode_policy.distill.warm_start import WARM_START_LR, WARM_START_STEPS, warm_start  # noqa: E402
from mode_policy.evaluation.rollout import evaluate  # noqa: E402
from mode_policy.io import atomic_write_text  # noqa: E402
from mode_policy.policies.folders import resolve_policy_dir, shipped_pretrained  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "distill-mt10.json"
DEFAULT_RUN = Path("runs/bench-mt10-50/run")
SHIPPED = "mt10-mode-small"


def default_teacher() -> str:
    if (DEFAULT_RUN / "policy" / "config.json").is_file():
        return str(DEFAULT_RUN)
    if SHIPPED in shipped_pretrained():
        return SHIPPED
    raise SystemExit(
        f"no teacher: {DEFAULT_RUN} does not exist (run `python benchmarks/metaworld.py --suite mt10`) and "
        f"{SHIPPED!r} is not shipped; pass --teacher RUN"
    )


@torch.no_grad()
def interleaved_latency_ms(policies: dict, obs: dict, repeats: int) -> dict[str, float]:
    """Median ms per chunk at batch 1 for each policy, timing them in turn within every repetition."""
    times: dict[str, list[float]] = {name: [] for name in policies}
    generator = torch.Generator().manual_seed(0)
    for policy in policies.values():  # warm-up: expert cache, allocator, one-hot cache
        policy.predict_action_chunk(obs, generator=generator)
    for _ in range(repeats):
        for name, policy in policies.items():
            began = time.perf_counter()
            policy.predict_action_chunk(obs, generator=generator)
            times[name].append(1000 * (time.perf_counter() - began))
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default=None, help="MoDE run / policy dir / shipped name")
    parser.add_argument("--dataset", default=None, help="states (default: the teacher run's dataset)")
    parser.add_argument("--out", default="runs/distill-mt10", help="student run folder")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--covariance", choices=["full", "diagonal"], default="full")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-start-steps", type=int, default=WARM_START_STEPS, help="0: VDD from random")
    parser.add_argument("--warm-start-lr", type=float, default=WARM_START_LR)
    parser.add_argument("--score-estimator", choices=["centred", "plain"], default="centred")
    parser.add_argument("--tasks", default=None, help="comma-separated MT10 subset (default: all ten)")
    parser.add_argument("--eval-episodes", type=int, default=50, help="per task, same seeds for both")
    parser.add_argument("--eval-seed", type=int, default=1000, help="as benchmarks/metaworld.py")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timing-repeats", type=int, default=50)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    command = "python benchmarks/distill_mt10.py " + " ".join(sys.argv[1:])
    teacher_arg = args.teacher or default_teacher()
    teacher, run_dir = load_teacher(teacher_arg)
    out = Path(args.out)
    dataset = args.dataset
    if dataset is None and (run_dir is None or not (run_dir / "train_config.json").is_file()):
        from mode_policy.envs.collect import collect_demonstrations

        dataset = out / "data"
        if not (dataset / "meta" / "info.json").is_file():
            collect_demonstrations(dataset, suite="mt10", episodes_per_task=50, seed=args.seed, workers=2)

    # The warm start runs here rather than inside distill() so that its student is also evaluated alone:
    # how much of the result is the demonstrations' regression and how much the teacher's VDD signal.
    torch.manual_seed(args.seed)
    student = VDDPolicy.from_teacher(teacher, num_experts=args.experts, covariance=args.covariance)
    policies = {"MoDE teacher": teacher}
    warm_seconds = 0.0
    if args.warm_start_steps:
        source = batch_source(dataset, run_dir, student.config, need_actions=True)
        began = time.perf_counter()
        warm_start(student, source, steps=args.warm_start_steps, batch_size=args.batch_size,
                   lr=args.warm_start_lr, generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
        warm_seconds = time.perf_counter() - began
        policies["warm start only"] = copy.deepcopy(student).eval()
    result = distill(
        teacher_arg if run_dir is not None else teacher,
        dataset,
        out,
        student=student,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        score_estimator=args.score_estimator,
        warm_start_steps=0,
        overwrite=True,
    )
    policies["VDD student"] = student
    evals = {
        name: evaluate(
            policy,
            suite="mt10",
            tasks=args.tasks,
            episodes_per_task=args.eval_episodes,
            seed=args.eval_seed,
            num_workers=args.workers,
            progress=False,
        )
        for name, policy in policies.items()
    }
    first_task = evals["VDD student"]["tasks"][0]
    from mode_policy.envs.metaworld import instruction

    obs = {"observation.state": torch.zeros(1, teacher.config.state_dim), "task": [instruction(first_task)]}
    latency = interleaved_latency_ms(policies, obs, args.timing_repeats)

    rows = []
    for name, policy in policies.items():
        rows.append({
            "policy": name,
            "mean_success": evals[name]["mean_success"],
            "ms_per_chunk_batch1": latency[name],
            "parameters": policy.parameter_counts()["total"],
            "network_calls_per_chunk": teacher.config.num_inference_steps if policy is teacher else 1,
        })  # fmt: skip
    ratios = {
        "speedup_teacher_over_student": round(latency["MoDE teacher"] / latency["VDD student"], 2),
        "success_student_minus_teacher": round(
            evals["VDD student"]["mean_success"] - evals["MoDE teacher"]["mean_success"], 4
        ),
    }
    print(f"\n{'policy':<16} {'success':>8} {'ms/chunk (b=1)':>15} {'params':>10} {'calls':>6}")
    for row in rows:
        print(f"{row['policy']:<16} {row['mean_success']:>8.3f} {row['ms_per_chunk_batch1']:>15.3f} "
              f"{row['parameters']:>10,} {row['network_calls_per_chunk']:>6}")  # fmt: skip
    print(f"ratios: speedup={ratios['speedup_teacher_over_student']}x "
          f"success_delta={ratios['success_student_minus_teacher']:+.3f}")  # fmt: skip

    record = {
        "command": command,
        "teacher": str(resolve_policy_dir(teacher_arg)[0]),
        "student": str(out / "policy"),
        "distill": {"steps": args.steps, "batch_size": args.batch_size, "experts": args.experts,
                    "covariance": args.covariance, "lr": args.lr, "seed": args.seed,
                    "score_estimator": args.score_estimator, "warm_start_steps": args.warm_start_steps,
                    "warm_start_lr": args.warm_start_lr, "warm_start_seconds": round(warm_seconds, 1),
                    "seconds": round(result.seconds, 1),
                    "final": result.history[-1] if result.history else {}},
        "evaluation": {"tasks": evals["VDD student"]["tasks"], "episodes_per_task": args.eval_episodes,
                       "seed": args.eval_seed},
        "table": rows,
        "ratios": ratios,
        "per_task_success": {name: {t: r["success_rate"] for t, r in e["per_task"].items()}
                             for name, e in evals.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
    }  # fmt: skip
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
