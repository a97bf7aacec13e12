"""The routing family and the baselines on one benchmark: same data, steps and seeds for every variant.

    python benchmarks/compare_routing.py --suite mt50 --demos-per-task 10 --steps 3000 --seeds 0,1,2
    python benchmarks/compare_routing.py --variants mode,dense_active --steps 200 --eval-episodes 2  # smoke

For each variant and seed: train the state-based policy (same defaults as `mode-policy train`, only the
denoiser differs), evaluate it on the suite, and record mean success. Then, per variant, measure total and
active parameters, MACs per chunk (torch FlopCounterMode, every matmul/conv) and ms per chunk at batch 1
and 256 (variants interleaved in one run, expert cache on where the variant allows it), and save its
expert-usage heatmap. Writes benchmarks/results/compare-routing-<suite>-<demos>demos.{json,md} and
benchmarks/results/routing/<variant>.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

# benchmarks/metaworld.py would shadow the metaworld package here and in worker processes (they inherit
# sys.path): drop this folder from the import path first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from mode_policy.envs.collect import collect_demonstrations  # noqa: E402
from mode_policy.evaluation.inspect import inspect_policy  # noqa: E402
from mode_policy.evaluation.rollout import evaluate  # noqa: E402
from mode_policy.io import atomic_write_text  # noqa: E402
from mode_policy.nn.expert_cache import can_cache_experts  # noqa: E402
from mode_policy.nn.flops import count_chunk_macs  # noqa: E402
from mode_policy.nn.usage import routed_layers  # noqa: E402
from mode_policy.policies.mode.modeling import MoDEPolicy  # noqa: E402
from mode_policy.training.train import train  # noqa: E402


def _load_sibling(name: str):
    # benchmarks/ is not a package, and putting it on sys.path would let benchmarks/metaworld.py shadow
    # the metaworld package, so load the sibling script by path.
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


time_chunks = _load_sibling("inference").time_chunks

RESULTS = Path(__file__).resolve().parent / "results"

# Every variant keeps MoDE's active expert compute (two SwiGLUs of hidden 4D per layer, or one of 8D)
# except dense_total, which matches MoDE's total expert parameters.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mode": ("MoDE: noise-conditioned routing, 4 experts top-2", []),
    "dense_active": ("dense DiT, equal active parameters", ["denoiser.num_experts=1", "denoiser.top_k=1",
                     "denoiser.expert_hidden_mult=8"]),
    "dense_total": ("dense DiT, equal total parameters", ["denoiser.num_experts=1", "denoiser.top_k=1",
                    "denoiser.expert_hidden_mult=16"]),
    "token": ("DiT-MoE: token routing, 1 shared + 1 of 3 routed", ["denoiser.router_input=token",
              "denoiser.shared_expert=true"]),
    "task": ("task routing (M3ViT / Edge-MoE)", ["denoiser.router_input=task"]),
    "sigma_goal": ("noise + goal routing (reference use_goal_in_routing)",
                   ["denoiser.router_input=sigma_goal"]),
    "stage": ("stage experts (eDiff-I), 2 stages split at sigma 1", ["denoiser.router_input=stage",
              "denoiser.stage_boundaries=[1.0]", "denoiser.num_experts=2", "denoiser.top_k=1",
              "denoiser.expert_hidden_mult=8"]),
    "cnn": ("Diffusion Policy CNN (1-D U-Net, FiLM)", ["denoiser.kind=cnn",
            "denoiser.down_dims=[64,128,256]"]),
}  # fmt: skip


def cost_rows(policies: dict[str, MoDEPolicy], repetitions: int) -> dict[str, dict[str, float]]:
    """Parameters, MACs and interleaved ms per chunk (batch 1 and 256) of each variant's denoiser."""
    variants = {}
    rows = {}
    for name, policy in policies.items():
        denoiser = policy.denoiser.eval()
        cacheable = can_cache_experts(denoiser)
        variants[name] = (denoiser, cacheable)
        sigmas = policy.config.sampling_sigmas()
        counts = denoiser.parameter_counts()
        rows[name] = {
            "params_total": counts["total"],
            "params_active": counts["active"],
            "macs_per_chunk": count_chunk_macs(denoiser, sigmas, batch_size=1, use_cache=cacheable).macs,
            "expert_cache": cacheable,
        }
    sigmas = next(iter(policies.values())).config.sampling_sigmas()
    small = time_chunks(variants, 1, sigmas, repetitions, warmup=2)
    large = time_chunks(variants, 256, sigmas, max(1, repetitions // 5), warmup=1)
    for name in rows:
        rows[name]["ms_batch1"] = small[name]
        rows[name]["ms_batch256"] = large[name]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=["mt10", "mt50"], default="mt50")
    parser.add_argument("--demos-per-task", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eval-episodes", type=int, default=10, help="per task and seed")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--timing-repetitions", type=int, default=15)
    parser.add_argument("--out", default=None, help="runs folder (default runs/compare-<suite>-<demos>)")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    tag = f"compare-routing-{args.suite}-{args.demos_per_task}demos"
    out = Path(args.out or f"runs/compare-{args.suite}-{args.demos_per_task}")
    command = "python benchmarks/compare_routing.py " + " ".join(sys.argv[1:])
    data_dir = out / "data"
    if not (data_dir / "meta" / "info.json").is_file():
        collect_demonstrations(data_dir, suite=args.suite, episodes_per_task=args.demos_per_task, workers=2)

    record = {"command": command, "seeds": seeds, "steps": args.steps, "variants": {}}
    policies = {}
    for name in names:
        description, overrides = VARIANTS[name]
        successes, wall = [], []
        for seed in seeds:
            run = out / f"{name}-seed{seed}"
            began = time.perf_counter()
            if not (run / "policy" / "config.json").is_file():
                resume = (run / "checkpoints" / "last.ckpt").is_file()
                train(
                    data_dir, run, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=seed,
                    policy_overrides=overrides or None, checkpoint_every=max(200, args.steps // 5),
                    resume=resume, progress=False,
                )  # fmt: skip
            results = evaluate(
                run, suite=args.suite, episodes_per_task=args.eval_episodes, seed=1000 + seed, progress=False
            )
            successes.append(results["mean_success"])
            wall.append(time.perf_counter() - began)
            print(
                f"{name} seed {seed}: mean success {results['mean_success']:.3f} ({wall[-1]:.0f} s)",
                flush=True,
            )
        policies[name] = MoDEPolicy.from_pretrained(out / f"{name}-seed{seeds[0]}" / "policy")
        heatmap = None
        if routed_layers(policies[name].denoiser):
            report = inspect_policy(
                out / f"{name}-seed{seeds[0]}", out / f"{name}-seed{seeds[0]}" / "inspect"
            )
            heatmap = RESULTS / "routing" / f"{name}.png"
            heatmap.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(report["out"]) / "expert_usage.png", heatmap)
        record["variants"][name] = {
            "description": description,
            "overrides": overrides,
            "success_per_seed": successes,
            "mean_success": statistics.fmean(successes),
            "success_spread": statistics.stdev(successes) if len(successes) > 1 else None,
            "seconds_per_seed": [round(w, 1) for w in wall],
            "heatmap": str(heatmap.relative_to(RESULTS.parent.parent)) if heatmap else None,
        }
    for name, row in cost_rows(policies, args.timing_repetitions).items():
        record["variants"][name].update(row)

    lines = [
        f"Command: `{command}` ({len(seeds)} seed(s): {seeds}; {args.steps} steps at batch "
        f"{args.batch_size}; {args.eval_episodes} evaluation episodes per task and seed). Spread = standard "
        "deviation over seeds.",
        "",
        "| variant | mean success | spread | params total | params active | MMACs/chunk | ms/chunk b=1 "
        "| ms/chunk b=256 | cache |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in record["variants"].values():
        spread = "n/a" if row["success_spread"] is None else f"{row['success_spread']:.3f}"
        lines.append(
            f"| {row['description']} | {row['mean_success']:.3f} | {spread} "
            f"| {row['params_total'] / 1e6:.2f}M | {row['params_active'] / 1e6:.2f}M "
            f"| {row['macs_per_chunk'] / 1e6:.1f} | {row['ms_batch1']:.1f} | {row['ms_batch256']:.0f} "
            f"| {'yes' if row['expert_cache'] else 'no'} |"
        )
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{tag}.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(RESULTS / f"{tag}.md", table)
    print(table)


if __name__ == "__main__":
    main()
