"""The sampling cache at batch 1, at one and two torch threads: is the cached chunk faster here?

    python benchmarks/cache_threads.py                 # ~1 min once compare_routing's MT50 data is there
    python benchmarks/cache_threads.py --repetitions 60 --variants mode,dense_active,mot

For each variant of ``compare_routing.py`` named (untrained weights: cost does not depend on them), time
the whole ``policy.predict_action_chunk`` at batch 1 with its sampling cache on (row ``<name>``) and off
(``<name>/cache-off``; MoDE's experts, MoT's context; a dense model's cache holds only phi(sigma)), and for
each cached MoDE variant a row ``<name>/per-expert``: its cache run as before the strided expert path, one
matmul pair per chosen expert (an A/B of that change in one interleaved run). Every
row interleaved and rotated in each repetition (``inference.time_rows``), first with two torch threads,
then with one. The MT50 data (10 demos per task) is collected by ``compare_routing.py`` the first time
(~1.5 min). Results:
``benchmarks/results/cache-threads.json`` (median ms per row and thread count, command, machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _load_sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare_routing = _load_sibling("compare_routing")  # also drops this folder from sys.path (metaworld.py)

import torch  # noqa: E402

from mode_policy.evaluation.report import machine_description  # noqa: E402
from mode_policy.nn.moe.routes import CachedRoute  # noqa: E402


def per_expert(predict):
    """``predict`` with every cached route run a matmul pair per expert (``CachedRoute.strided`` hidden)."""

    def call(obs, generator):
        CachedRoute.strided = property(lambda route: None)  # a data descriptor: wins over cached values
        try:
            return predict(obs, generator)
        finally:
            CachedRoute.strided = strided

    strided = CachedRoute.__dict__["strided"]
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="mode_topk,dense_active,mot")
    parser.add_argument("--repetitions", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/compare-mt50-10"))
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(compare_routing.VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(compare_routing.VARIANTS)}")

    data_dir, _ = compare_routing.collect_data(args.out, "mt50", 10)
    dataset = compare_routing.LeRobotDataset(data_dir)
    torch.manual_seed(0)
    policies = {name: compare_routing.untrained_policy(name, dataset) for name in names}
    rows = {  # "<name>" with the cache, "<name>/cache-off" without
        row: compare_routing.chunk_call(policy, use_cache)
        for row, (policy, use_cache) in compare_routing.cache_rows(policies, cache_off=True).items()
    }
    for name, policy in policies.items():
        if policy.denoiser.sampling_cache == "experts" and not policy.denoiser.config.is_dense:
            rows[f"{name}/per-expert"] = per_expert(rows[name])
    reference = next(iter(policies.values()))  # same data, so the same observation fits every variant
    began = time.perf_counter()
    medians = {}
    for threads in (2, 1):
        torch.set_num_threads(threads)
        medians[threads] = compare_routing.inference.time_rows(reference, rows, 1, args.repetitions, warmup=3)
    print("| row | ms/chunk b=1, 2 threads | ms/chunk b=1, 1 thread |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row} | {medians[2][row]:.1f} | {medians[1][row]:.1f} |")
    target = ROOT / "results" / "cache-threads.json"
    target.write_text(json.dumps({
        "command": "python benchmarks/cache_threads.py " + " ".join(sys.argv[1:]),
        "machine": machine_description(), "repetitions": args.repetitions, "batch": 1,
        "seconds": round(time.perf_counter() - began, 1),
        "ms_per_chunk": {f"{threads} threads": values for threads, values in medians.items()},
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
