"""The routing family and the baselines on one benchmark: same data, steps and seeds for every variant.

    python benchmarks/compare_routing.py --suite mt50 --demos-per-task 10 --steps 3000 --seeds 0,1,2
    python benchmarks/compare_routing.py --variants mode,mot --seeds 0        # some rows, added to the rest
    python benchmarks/compare_routing.py --variants mode --seeds 1 --runs-only   # one more run, no table
    python benchmarks/compare_routing.py --table-only             # the table from the kept runs, no training
    python benchmarks/compare_routing.py --variants mode,dense_active --steps 200 --eval-episodes 2 \
        --tag smoke                                                            # a smoke run, kept apart
    python benchmarks/compare_routing.py --costs-only --variants mode,dense_active,dense_total,mot
                                            # cost columns only, untrained weights, this machine (~3 min)

For each variant and seed: train the state-based policy (same defaults as `mode-policy train`, only the
denoiser differs) with a validation loss on held-out demonstrations (2 per task, their own seeds) every
tenth of the run, evaluate it on the suite (evaluation seeds 1000 + seed, which the demos never use), and
record mean success. Every finished run is kept in benchmarks/results/<tag>-runs.json at once, and a run
already there is not repeated, so the comparison builds up over several invocations (the step count and
evaluation episodes must match). Invocations may run side by side (the file is re-read and written under a
lock): on two cores, two one-thread runs (`OMP_NUM_THREADS=1`, other variants or seeds) train ~1.45x the
steps per second of one two-thread run. Each run records its torch threads beside its wall time, and the
step it resumed from (0 unless an interrupted run was resumed; its wall time covers only the steps after it).
Then, per variant, measure total and active parameters, MACs per chunk (torch FlopCounterMode, every
matmul/conv) and ms per chunk at batch 1 and 256 (variants interleaved in one run, the sampling cache on
where the variant has one: MoDE's experts, MoT's context), and save its expert-usage heatmap
(benchmarks/results/routing/<tag>/<variant>.png). A variant whose run folders are gone (trained in an
earlier session) is costed with untrained weights of its config (cost does not depend on them) and keeps
the heatmap saved then. The table (benchmarks/results/<tag>.{json,md}) gives per variant the seeds it
has, mean +- std over seeds, a 95% interval (Student t over seed means with 2+ seeds, or Wilson over the
pooled episodes where that is wider, as it is with one seed), and whether the validation curve was flat
at the end (less than 2% down over the last fifth of the run).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import importlib.util
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

# benchmarks/metaworld.py would shadow the metaworld package here and in worker processes (they inherit
# sys.path): drop this folder from the import path first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from mode_policy.data.lerobot import LeRobotDataset  # noqa: E402
from mode_policy.envs.collect import collect_demonstrations  # noqa: E402
from mode_policy.evaluation.inspect import inspect_policy  # noqa: E402
from mode_policy.evaluation.rollout import evaluate  # noqa: E402
from mode_policy.evaluation.stats import wilson_interval  # noqa: E402
from mode_policy.io import atomic_write_text  # noqa: E402
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


inference = _load_sibling("inference")

RESULTS = Path(__file__).resolve().parent / "results"

# Every variant keeps MoDE's active expert compute (two SwiGLUs of hidden 4D per layer, or one of 8D)
# except dense_total, which matches MoDE's total expert parameters. The routed variants sample their
# experts in training as the reference does (STOCHASTIC, the library's default until mode_topk beat it on
# held-out loss); mode_topk trains with eval's deterministic top-2, today's default.
STOCHASTIC = "denoiser.stochastic_routing=true"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "mode": ("MoDE: noise-conditioned routing, 4 experts top-2, sampled in training", [STOCHASTIC]),
    "mode8": ("MoDE: noise-conditioned routing, 8 experts top-2, sampled in training",
              ["denoiser.num_experts=8", STOCHASTIC]),
    "mode_topk": ("MoDE, 4 experts top-2, deterministic top-2 in training too (default)",
                  ["denoiser.stochastic_routing=false"]),
    "dense_active": ("dense DiT, equal active parameters", ["denoiser.num_experts=1", "denoiser.top_k=1",
                     "denoiser.expert_hidden_mult=8"]),
    "dense_total": ("dense DiT, equal total parameters", ["denoiser.num_experts=1", "denoiser.top_k=1",
                    "denoiser.expert_hidden_mult=16"]),
    "token": ("DiT-MoE: token routing, 1 shared + 1 of 3 routed", ["denoiser.router_input=token",
              "denoiser.shared_expert=true", STOCHASTIC]),
    "task": ("task routing (M3ViT / Edge-MoE)", ["denoiser.router_input=task", STOCHASTIC]),
    "sigma_goal": ("noise + goal routing (reference use_goal_in_routing)",
                   ["denoiser.router_input=sigma_goal", STOCHASTIC]),
    "stage": ("stage experts (eDiff-I), 2 stages split at sigma 1", ["denoiser.router_input=stage",
              "denoiser.stage_boundaries=[1.0]", "denoiser.num_experts=2", "denoiser.top_k=1",
              "denoiser.expert_hidden_mult=8"]),
    "mot": ("Mixture-of-Transformers: context / action weights", ["denoiser.kind=mot"]),
    "cnn": ("Diffusion Policy CNN (1-D U-Net, FiLM)", ["denoiser.kind=cnn",
            "denoiser.down_dims=[64,128,256]"]),
}  # fmt: skip
VALIDATION_DEMOS_PER_TASK, VALIDATION_SEED = 2, 7919  # held-out demonstrations, seeds no run trains on
FLAT = 0.02  # a validation curve is flat when it fell less than this over the last fifth of the run
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def cache_rows(policies: dict[str, MoDEPolicy], cache_off: bool) -> dict[str, tuple[MoDEPolicy, bool]]:
    """{row: (policy in eval mode, use_cache)}: a row ``<name>`` per variant, its sampling cache on where it
    has one, and with ``cache_off`` a row ``<name>/cache-off`` for each variant that has a cache."""
    rows = {}
    for name, policy in policies.items():
        has_cache = policy.eval().denoiser.sampling_cache is not None
        for use_cache in (True, False) if has_cache and cache_off else (True,):
            rows[name if use_cache else f"{name}/cache-off"] = (policy, use_cache)
    return rows


def chunk_call(policy: MoDEPolicy, use_cache: bool):
    """``predict(obs, generator)``: one chunk of the whole policy as a user calls it (``time_rows``' row)."""
    return lambda obs, generator: policy.predict_action_chunk(
        obs, generator=generator, use_expert_cache=use_cache
    )


def cost_rows(
    policies: dict[str, MoDEPolicy], repetitions: int, cache_off: bool = False
) -> dict[str, dict[str, float]]:
    """Parameters, MACs and ms per chunk (batch 1 and 256; the whole policy as a user calls it, its
    sampling cache on where there is one; the variants interleaved in every repetition) of each variant.
    ``cache_off``: also a row ``<name>/cache-off`` for each variant that has a cache, sampled without it."""
    rows, predict = {}, {}
    for key, (policy, use_cache) in cache_rows(policies, cache_off).items():
        denoiser = policy.denoiser
        cache = denoiser.sampling_cache  # "experts", "context" (MoT) or None
        counts = denoiser.parameter_counts()
        rows[key] = {
            "params_total": counts["total"],
            "params_active": counts["active"],
            "macs_per_chunk": count_chunk_macs(
                denoiser, policy.config.sampling_sigmas(), batch_size=1, use_cache=bool(cache) and use_cache
            ).macs,
            "sampling_cache": cache if use_cache else None,
        }
        predict[key] = chunk_call(policy, use_cache)
    reference = next(iter(policies.values()))  # same data, so the same observation fits every variant
    small = inference.time_rows(reference, predict, 1, repetitions, warmup=2)
    large = inference.time_rows(reference, predict, 256, max(1, repetitions // 5), warmup=1)
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
    parser.add_argument(
        "--costs-only", action="store_true",
        help="no training: every variant built with random weights (cost does not depend on them), its "
        "parameters, MACs and ms per chunk measured interleaved on this machine; results/<tag>-costs.*",
    )  # fmt: skip
    parser.add_argument(
        "--cache-off",
        action="store_true",
        help="with --costs-only: also each cached variant without its cache",
    )
    only = parser.add_mutually_exclusive_group()  # one skips the table, the other training
    only.add_argument(
        "--runs-only",
        action="store_true",
        help="train and evaluate the missing runs, keep them in results/<tag>-runs.json, skip the table",
    )
    only.add_argument(
        "--table-only",
        action="store_true",
        help="train nothing: the table from the runs kept in results/<tag>-runs.json, whatever their seeds",
    )  # without it, a table command naming a seed that has no run yet would start training it
    parser.add_argument("--out", default=None, help="runs folder (default runs/compare-<suite>-<demos>)")
    parser.add_argument(
        "--tag", default=None, help="results name (default compare-routing-<suite>-<demos>demos)"
    )
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    tag = args.tag or f"compare-routing-{args.suite}-{args.demos_per_task}demos"
    out = Path(args.out or f"runs/compare-{args.suite}-{args.demos_per_task}")
    command = "python benchmarks/compare_routing.py " + " ".join(sys.argv[1:])
    data_dir, val_dir = collect_data(out, args.suite, args.demos_per_task)

    if args.costs_only:
        write_costs(
            names, data_dir, args.timing_repetitions, RESULTS / f"{tag}-costs", command, args.cache_off
        )
        return
    runs_file = RESULTS / f"{tag}-runs.json"
    setting = {"suite": args.suite, "demos_per_task": args.demos_per_task, "steps": args.steps,
               "batch_size": args.batch_size, "lr": args.lr, "eval_episodes": args.eval_episodes}  # fmt: skip
    runs = load_runs(runs_file, setting)
    for name in [] if args.table_only else names:
        for seed in seeds:
            key = f"{name}/seed{seed}"
            if key in runs["runs"]:
                print(
                    f"{key}: kept from {runs_file.name} ({runs['runs'][key]['mean_success']:.3f})", flush=True
                )
                continue
            finished = train_and_evaluate(name, seed, out, data_dir, val_dir, args, command)
            print(f"{key}: mean success {finished['mean_success']:.3f} ({finished['seconds']:.0f} s)",
                  flush=True)  # fmt: skip
            runs = keep_run(runs_file, setting, key, finished)  # at once: nothing is lost
    if args.runs_only:
        return

    present = [name for name in VARIANTS if any(key.split("/")[0] == name for key in runs["runs"])]
    record = {"setting": setting, "runs_file": runs_file.name, "variants": {}}
    policies, dataset = {}, None  # the dataset is opened only for a variant whose run folders are gone
    heatmaps = RESULTS / "routing" / tag  # per tag: a 9000-step table must not overwrite a 3000-step one's
    for name in present:
        mine = {key: run for key, run in runs["runs"].items() if key.split("/")[0] == name}
        first_run = out / min(mine, key=lambda key: mine[key]["seed"]).replace("/", "-")
        if (first_run / "policy" / "config.json").is_file():
            policies[name] = MoDEPolicy.from_pretrained(first_run / "policy")
            usage = heatmap(name, policies[name], first_run, heatmaps)
        else:  # trained in an earlier session whose runs folder is gone: costs do not depend on weights
            dataset = dataset or LeRobotDataset(data_dir)
            policies[name] = untrained_policy(name, dataset)
            usage = kept_heatmap(heatmaps / f"{name}.png")
        record["variants"][name] = {
            "description": VARIANTS[name][0], "overrides": VARIANTS[name][1], **summary(list(mine.values())),
            "heatmap": usage,
        }  # fmt: skip
    for name, row in cost_rows(policies, args.timing_repetitions).items():
        record["variants"][name].update(row)
    record["cost_command"] = command
    table = render(record)
    atomic_write_text(RESULTS / f"{tag}.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(RESULTS / f"{tag}.md", table)
    print(table)


def write_costs(
    names: list[str], data_dir: Path, repetitions: int, path: Path, command: str, cache_off: bool
) -> None:
    """The cost columns of the table for ``names``, from untrained policies of each variant's config."""
    from mode_policy.evaluation.report import machine_description

    torch.manual_seed(0)
    dataset = LeRobotDataset(data_dir)
    rows = cost_rows({name: untrained_policy(name, dataset) for name in names}, repetitions, cache_off)
    record = {"command": command, "machine": machine_description(), "torch_threads": torch.get_num_threads(),
              "timing_repetitions": repetitions, "rows": rows}  # fmt: skip
    lines = [
        f"Command: `{command}` ({record['machine']}, {record['torch_threads']} threads; untrained weights).",
        "",
        "| variant | params total | params active | MMACs/chunk | ms/chunk b=1 | ms/chunk b=256 | cache |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        variant, _, off = name.partition("/")
        description = VARIANTS[variant][0] + (" (cache off)" if off else "")
        lines.append(
            f"| {description} | {row['params_total'] / 1e6:.2f}M | {row['params_active'] / 1e6:.2f}M | "
            f"{row['macs_per_chunk'] / 1e6:.1f} | {row['ms_batch1']:.1f} | {row['ms_batch256']:.0f} | "
            f"{row['sampling_cache'] or 'none'} |"
        )
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    atomic_write_text(path.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def untrained_policy(name: str, dataset: LeRobotDataset) -> MoDEPolicy:
    """A policy of variant ``name`` for ``dataset`` with random weights: enough for its cost columns."""
    from mode_policy.policies.config import parse_overrides
    from mode_policy.policies.mode.configuration import MoDEPolicyConfig

    overrides = parse_overrides(VARIANTS[name][1], MoDEPolicyConfig.override_keys())
    return MoDEPolicy(MoDEPolicyConfig.for_dataset(dataset, overrides), dataset.stats)


def kept_heatmap(target: Path) -> str | None:
    """The heatmap an earlier session saved at ``target``, if there is one."""
    return str(target.relative_to(RESULTS.parent.parent)) if target.is_file() else None


def collect_data(out: Path, suite: str, demos_per_task: int) -> tuple[Path, Path]:
    """The training demos and the held-out validation demos (their own seeds), collected once."""
    data_dir, val_dir = out / "data", out / "validation"
    if not (data_dir / "meta" / "info.json").is_file():
        collect_demonstrations(data_dir, suite=suite, episodes_per_task=demos_per_task, workers=2)
    if not (val_dir / "meta" / "info.json").is_file():
        collect_demonstrations(val_dir, suite=suite, episodes_per_task=VALIDATION_DEMOS_PER_TASK,
                               seed=VALIDATION_SEED, workers=2)  # fmt: skip
    return data_dir, val_dir


def load_runs(path: Path, setting: dict) -> dict:
    """The finished runs of this comparison; runs made with other settings are not mixed in."""
    if not path.is_file():
        return {"setting": setting, "runs": {}}
    runs = json.loads(path.read_text())
    if runs["setting"] != setting:
        sys.exit(f"{path} holds runs with {runs['setting']}, not {setting}: pass another --tag")
    return runs


def keep_run(path: Path, setting: dict, key: str, run: dict) -> dict:
    """Add one finished run to the runs file and return the file's runs. Read again under a lock first:
    another invocation (other variants, on the other core) may have added runs since this one started."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = load_runs(path, setting)
        runs["runs"][key] = run
        atomic_write_text(path, json.dumps(runs, indent=2) + "\n")
    return runs


def train_and_evaluate(
    name: str, seed: int, out: Path, data_dir: Path, val_dir: Path, args, command: str
) -> dict:
    """Train one variant with one seed (resuming an interrupted run), evaluate it; its record."""
    run = out / f"{name}-seed{seed}"
    began = time.perf_counter()
    trains_here = not (run / "policy" / "config.json").is_file()
    if trains_here:
        train(
            data_dir, run, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=seed,
            policy_overrides=VARIANTS[name][1] or None, checkpoint_every=max(100, args.steps // 10),
            resume=(run / "checkpoints" / "last.ckpt").is_file(), progress=False, val_dataset=val_dir,
        )  # fmt: skip
    trained = time.perf_counter() - began
    results = evaluate(
        run, suite=args.suite, episodes_per_task=args.eval_episodes, seed=1000 + seed, progress=False
    )
    curve = validation_curve(run / "metrics.csv")
    return {
        "variant": name, "seed": seed, "command": command, "steps": args.steps,
        "mean_success": results["mean_success"], "per_task": results["per_task"],
        "episodes": args.eval_episodes * len(results["per_task"]),
        "successes": sum(round(t["success_rate"] * t["episodes"]) for t in results["per_task"].values()),
        "validation_curve": curve, "validation_flat": is_flat(curve),
        "train_seconds": round(trained, 1), "seconds": round(time.perf_counter() - began, 1),
        "resumed_from_step": resumed_from_step(run) if trains_here else args.steps,
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def resumed_from_step(run: Path) -> int:
    """The step this invocation's training began at: 0 for a fresh run, the checkpoint's step on resume.
    ``train_seconds`` covers only the steps after it, so a resumed run's time is not its whole cost."""
    trained = json.loads((run / "train_summary.json").read_text())
    return trained["global_step"] - trained["steps_this_session"]


def validation_curve(metrics: Path) -> list[tuple[int, float]]:
    with metrics.open() as handle:
        return [(int(row["step"]), float(row["val_diffusion"])) for row in csv.DictReader(handle)
                if row.get("val_diffusion")]  # fmt: skip


def is_flat(curve: list[tuple[int, float]]) -> bool | None:
    """Less than FLAT down over the last fifth of the run (None: too few points to say)."""
    if len(curve) < 3:
        return None
    last_step, last = curve[-1]
    earlier = [value for step, value in curve if step <= 0.8 * last_step]
    return None if not earlier else (earlier[-1] - last) / earlier[-1] < FLAT


def summary(runs: list[dict]) -> dict:
    """Mean +- std over seeds and a 95% interval: Student t over the seed means (2+ seeds), or Wilson over
    the pooled episodes where that is wider. Every seed's score carries the sampling noise of its episodes
    (about +-0.02 for 500 episodes at 0.93); two or three seeds that happen to agree give a t interval
    narrower than that, which would claim more than was measured. One seed: Wilson only."""
    values = [run["mean_success"] for run in runs]
    mean = statistics.fmean(values)
    pooled = wilson_interval(sum(run["successes"] for run in runs), sum(run["episodes"] for run in runs))
    interval, kind, spread = pooled, "Wilson over episodes", None
    if len(values) > 1:
        spread = statistics.stdev(values)
        half = T_975.get(len(values) - 1, 1.96) * spread / math.sqrt(len(values))
        over_seeds = (max(0.0, mean - half), min(1.0, mean + half))
        if over_seeds[1] - over_seeds[0] > pooled[1] - pooled[0]:  # the wider of the two, as printed
            interval, kind = over_seeds, "t over seeds"
    flat = [run["validation_flat"] for run in runs]
    return {
        "seeds": sorted(run["seed"] for run in runs), "success_per_seed": values, "mean_success": mean,
        "success_spread": spread, "ci95": list(interval), "ci95_kind": kind, "steps": runs[0]["steps"],
        "validation_flat": flat, "final_validation_loss": [run["validation_curve"][-1][1] for run in runs],
        "seconds_per_seed": [run["seconds"] for run in runs],
        "resumed_from_step_per_seed": [run.get("resumed_from_step") for run in runs],
    }  # fmt: skip


def heatmap(name: str, policy: MoDEPolicy, run: Path, folder: Path) -> str | None:
    """The expert-usage heatmap of a routed variant's first seed (``policy``, saved in ``run``), copied
    into ``folder``."""
    if not routed_layers(policy.denoiser):
        return None
    report = inspect_policy(run, run / "inspect")
    target = folder / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(report["out"]) / "expert_usage.png", target)
    return str(target.relative_to(RESULTS.parent.parent))


def render(record: dict) -> str:
    given = record["setting"]
    lines = [
        f"{given['suite'].upper()}, {given['demos_per_task']} demos per task, {given['steps']} steps at "
        f"batch {given['batch_size']} (lr {given['lr']:g}), {given['eval_episodes']} evaluation episodes "
        f"per task and seed (evaluation seeds 1000 + seed). Runs: benchmarks/results/{record['runs_file']}; "
        f"costs measured by `{record['cost_command']}`. Flat: the validation loss fell less than {FLAT:.0%} "
        "over the last fifth of the run.",
        "",
        "| variant | seeds | mean success | std | 95% interval | flat | params total | params active "
        "| MMACs/chunk | ms/chunk b=1 | ms/chunk b=256 | cache |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in record["variants"].values():
        spread = "n/a" if row["success_spread"] is None else f"{row['success_spread']:.3f}"
        low, high = row["ci95"]
        flat = "/".join({True: "yes", False: "no", None: "?"}[f] for f in row["validation_flat"])
        lines.append(
            f"| {row['description']} | {len(row['seeds'])} | {row['mean_success']:.3f} | {spread} "
            f"| [{low:.2f}, {high:.2f}] ({'t' if row['ci95_kind'].startswith('t') else 'Wilson'}) | {flat} "
            f"| {row['params_total'] / 1e6:.2f}M | {row['params_active'] / 1e6:.2f}M "
            f"| {row['macs_per_chunk'] / 1e6:.1f} | {row['ms_batch1']:.1f} | {row['ms_batch256']:.0f} "
            f"| {row['sampling_cache'] or 'none'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
