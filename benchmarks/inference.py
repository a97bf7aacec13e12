"""Inference cost of one action chunk, every way the library runs it, for two models.

    python benchmarks/inference.py            # every row, both models, batch 1 and 32 (~10 min on 2 cores)
    python benchmarks/inference.py --quick    # the rows behind the ratios (< 3 min; 1 min once exported)

Models: "256/8" (width 256, 8 layers, 8 heads, 4 experts top-2, chunk 10 x 4, 10 DDIM steps, 39-d state,
384-d MiniLM goal; random weights) and the shipped "mt10-mode-small" policy (width 128, 4 layers). Rows:

- ``eager uncached`` / ``eager cached``: ``policy.predict_action_chunk`` routing at every step / with the
  expert cache (the library's default);
- ``dense, same active``: a dense model with the parameters of two experts per layer (256/8 only);
- ``torch.compile``: ``policy.compile()`` (inductor; compile time reported);
- ``ONNX fp32`` / ``ONNX int8``: the exported chunk (``export_onnx``, dynamic batch) on ONNX Runtime,
  through ``OnnxPolicy.predict_action_chunk``: input checks, normalisation and noise included.

Every row is one ``predict_action_chunk`` call, so the rows compare like for like. Latencies are medians
over repetitions that interleave the rows (each repetition times every row once, each call after a 50 ms
pause): a noisy machine slows them alike and the ratios stay meaningful. MACs: torch's FlopCounterMode
over the sampler (every matmul). Exports are cached under ``benchmarks/.cache/`` (keyed by the weights and
the library version; the first run exports them, two at a time, in about 2 minutes, so a cold ``--quick``
takes ~3 minutes and a warm one ~1); the export time reported is that of the run that wrote them.
Results: ``benchmarks/results/inference.json``. The last line is machine-readable
(256/8 model, batch 1): ``ratios: cached/dense_active=.. cached/uncached=.. cache_memory=..% onnx/eager=..
int8/onnx=.. compile/eager=..``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import mode_policy
from mode_policy.nn import MoDEConfig
from mode_policy.nn.flops import count_chunk_macs
from mode_policy.policies import MoDEPolicy, MoDEPolicyConfig, load_policy

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
RESULTS = ROOT / "results" / "inference.json"
STEPS = 10
PAUSE = 0.05  # seconds before each timed call
TASKS = [f"task {i}" for i in range(10)]  # instructions of the 256/8 model (MiniLM embeds any text)


# Models ----------------------------------------------------------------------------------------------
def model_256_8(dense: bool = False) -> MoDEPolicy:
    """The 256/8 policy of the earlier inference issues (random weights, unit statistics); ``dense``: one
    SwiGLU per layer with the parameters of two experts."""
    denoiser = MoDEConfig(width=256, depth=8, heads=8, num_experts=4, top_k=2, goal_dropout=0.0)
    if dense:
        denoiser = replace(
            denoiser, num_experts=1, top_k=1, expert_hidden_mult=2 * denoiser.expert_hidden_mult
        )
    config = MoDEPolicyConfig(
        state_dim=39, action_dim=4, chunk_size=10, n_action_steps=10, tasks=list(TASKS),
        num_inference_steps=STEPS, denoiser=denoiser,
    )  # fmt: skip
    stats = {key: {"mean": [0.0] * n, "std": [1.0] * n, "min": [-1.0] * n, "max": [1.0] * n}
             for key, n in (("observation.state", 39), ("action", 4))}  # fmt: skip
    torch.manual_seed(0)
    return MoDEPolicy(config, stats).eval()


def observation(policy: Any, batch: int, seed: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    tasks = list(policy.config.tasks) or TASKS
    return {
        "observation.state": torch.randn(batch, policy.config.state_dim, generator=generator),
        "task": [tasks[(seed + i) % len(tasks)] for i in range(batch)],
    }


# Exports (cached) ---------------------------------------------------------------------------------------
def fingerprint(policy: Any) -> str:
    digest = hashlib.sha256(mode_policy.__version__.encode())
    digest.update(json.dumps(policy.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(policy.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def build(name: str) -> Any:
    return model_256_8() if name == "256/8" else load_policy(name, device="cpu")


def cache_paths(policy: Any, name: str, quantize: str | None) -> tuple[Path, Path]:
    stem = f"{name.replace('/', '-')}-{quantize or 'fp32'}-{fingerprint(policy)}"
    return CACHE / f"{stem}.onnx", CACHE / f"{stem}.json"


def export_into_cache(name: str, quantize: str | None) -> None:
    """One export in a worker process: tracing is single-threaded Python, so two run side by side."""
    torch.set_num_threads(1)
    exported(build(name), name, quantize)


def prepare_exports(plan: dict[str, set[str]]) -> None:
    """Every export the plan needs and the cache lacks, two at a time (longest first), before any timing."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    wanted = [(name, q) for name, rows in plan.items() for row, q in (("int8", "int8"), ("onnx", None))
              if row in rows]  # fmt: skip
    missing = [(n, q) for n, q in wanted if not all(p.exists() for p in cache_paths(build(n), n, q))]
    if not missing:
        return
    print(f"exporting {len(missing)} models into {CACHE.relative_to(ROOT.parent)} (once)", flush=True)
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        for job in [pool.submit(export_into_cache, n, q) for n, q in missing]:
            job.result()


def exported(policy: Any, name: str, quantize: str | None) -> tuple[Any, dict[str, Any]]:
    """(OnnxPolicy, facts) for ``policy`` exported with dynamic batch, from the cache when it is there."""
    from mode_policy.runtime import OnnxPolicy, export_onnx

    CACHE.mkdir(exist_ok=True)
    path, facts_path = cache_paths(policy, name, quantize)
    if not (path.exists() and facts_path.exists()):
        report = export_onnx(policy, path, quantize=quantize, dynamic_batch=True, overwrite=True)
        facts = {"bytes": report.bytes, "weight_bytes": report.weight_bytes, "export_s": report.seconds,
                 "max_abs_diff": report.max_abs_diff}  # fmt: skip
        facts_path.write_text(json.dumps(facts))
    return OnnxPolicy(path), json.loads(facts_path.read_text())


# Rows -----------------------------------------------------------------------------------------------------
def rows_for(name: str, policy: Any, wanted: set[str], notes: dict[str, Any]) -> dict[str, Any]:
    """row name -> predict(obs, generator); fills ``notes`` with MACs, sizes and setup times."""
    rows: dict[str, Any] = {}
    sigmas = policy.config.sampling_sigmas()
    denoiser = policy.denoiser
    weights = sum(t.numel() * t.element_size() for t in policy.state_dict().values())
    notes["weight_bytes"] = weights
    if "eager uncached" in wanted:
        rows["eager uncached"] = lambda obs, g: policy.predict_action_chunk(
            obs, generator=g, use_expert_cache=False
        )
        notes["macs eager uncached"] = count_chunk_macs(denoiser, sigmas, batch_size=1, use_cache=False).macs
    rows["eager cached"] = lambda obs, g: policy.predict_action_chunk(obs, generator=g, use_expert_cache=True)
    notes["macs eager cached"] = count_chunk_macs(denoiser, sigmas, batch_size=1, use_cache=True).macs
    notes["cache_bytes"] = denoiser.cache_experts(sigmas).memory_bytes()
    if "dense" in wanted and name == "256/8":
        dense = model_256_8(dense=True)
        rows["dense, same active"] = lambda obs, g: dense.predict_action_chunk(obs, generator=g)
        notes["macs dense, same active"] = count_chunk_macs(dense.denoiser, sigmas, batch_size=1).macs
    if "compile" in wanted:
        compiled = copy.deepcopy(policy)
        start = time.perf_counter()
        compiled.compile()
        notes["compile_s"] = time.perf_counter() - start
        rows["torch.compile"] = lambda obs, g: compiled.predict_action_chunk(obs, generator=g)
    for row, quantize in (("ONNX fp32", None), ("ONNX int8", "int8")):
        if ("onnx" if quantize is None else "int8") in wanted:
            runtime, facts = exported(policy, name, quantize)
            rows[row] = lambda obs, g, runtime=runtime: runtime.predict_action_chunk(obs, generator=g)
            notes[row] = facts
    return rows


def time_rows(
    policy: Any, rows: dict[str, Any], batch: int, repetitions: int, warmup: int
) -> dict[str, float]:
    """Median ms per chunk of each row, the rows interleaved within every repetition. Each call starts after
    a short pause (as a robot's control loop calls between chunks), so that the previous row's worker
    threads (torch's OpenMP, ONNX Runtime's pool) have stopped spinning on the 2 cores. The order of the rows
    rotates with every repetition: a row that always ran right after another row of the same model would
    find its weights still in the CPU's caches and look faster than it is."""
    times: dict[str, list[float]] = {row: [] for row in rows}
    order = list(rows.items())
    for rep in range(warmup + repetitions):
        obs = observation(policy, batch, seed=rep)
        shift = rep % len(order)
        for row, predict in order[shift:] + order[:shift]:
            generator = torch.Generator().manual_seed(rep)
            time.sleep(PAUSE)
            start = time.perf_counter()
            predict(obs, generator)
            if rep >= warmup:
                times[row].append((time.perf_counter() - start) * 1e3)
    return {row: statistics.median(values) for row, values in times.items()}


# Report ---------------------------------------------------------------------------------------------------
def print_table(table: list[dict[str, Any]], notes_by_model: dict[str, dict[str, Any]]) -> None:
    print("| model | row | ms/chunk, batch 1 | ms/chunk, batch 32 | MMACs/chunk (batch 1) | file MB |")
    print("|---|---|---:|---:|---:|---:|")
    for name, notes in notes_by_model.items():
        for row in dict.fromkeys(r["row"] for r in table if r["model"] == name):
            by_batch = {r["batch"]: r["ms"] for r in table if (r["model"], r["row"]) == (name, row)}
            macs = notes.get(f"macs {row}")
            size = notes.get(row, {}).get("bytes")
            cells = [
                name, row, f"{by_batch[1]:.1f}", f"{by_batch[32]:.0f}" if 32 in by_batch else "-",
                f"{macs / 1e6:.0f}" if macs else "-", f"{size / 1e6:.1f}" if size else "-",
            ]  # fmt: skip
            print("| " + " | ".join(cells) + " |")


def describe(notes: dict[str, Any]) -> str:
    parts = [
        f"weights {notes['weight_bytes'] / 1e6:.1f} MB",
        f"expert cache {notes['cache_bytes'] / 1024:.1f} KiB",
    ]
    if "compile_s" in notes:
        parts.append(f"compile {notes['compile_s']:.0f} s")
    for row in ("ONNX fp32", "ONNX int8"):
        if row in notes:
            facts = notes[row]
            used = facts["weight_bytes"] / 1e6
            parts.append(
                f"{row} file {facts['bytes'] / 1e6:.1f} MB (weights it uses {used:.1f} MB fp32; export "
                f"{facts['export_s']:.0f} s; max |ORT - torch| {facts['max_abs_diff']:.1e})"
            )
    return "; ".join(parts)


# Main -----------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and rows (< 3 minutes)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (2)")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    if args.quick:  # the ratio line's rows for 256/8; the shipped policy's eager and ONNX latency
        plan = {"256/8": {"eager uncached", "dense", "compile", "onnx", "int8"}, "mt10-mode-small": {"onnx"}}
        repetitions = {1: 7, 32: 2}
    else:
        every = {"eager uncached", "dense", "compile", "onnx", "int8"}
        plan = {"256/8": every, "mt10-mode-small": every}
        repetitions = {1: 25, 32: 5}
    print(f"mode-policy {mode_policy.__version__}, torch {torch.__version__}, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}, {STEPS} DDIM steps")  # fmt: skip

    prepare_exports(plan)
    table, notes_by_model = [], {}
    for name, wanted in plan.items():
        policy = build(name)
        notes: dict[str, Any] = {}
        rows = rows_for(name, policy, wanted, notes)
        notes_by_model[name] = notes
        for batch, reps in repetitions.items():
            if args.quick and batch > 1 and name != "256/8":
                continue
            timed = {
                row: rows[row] for row in rows if not (args.quick and batch > 1 and row == "torch.compile")
            }
            medians = time_rows(policy, timed, batch, reps, warmup=2 if batch == 1 else 1)
            for row, ms in medians.items():
                table.append({"model": name, "row": row, "batch": batch, "ms": ms})
            timings = ", ".join(f"{row} {ms:.1f} ms" for row, ms in medians.items())
            print(f"  {name} batch {batch}: {timings}", flush=True)

    def ms(model: str, row: str, batch: int = 1) -> float:
        return next(r["ms"] for r in table if (r["model"], r["row"], r["batch"]) == (model, row, batch))

    print()
    print_table(table, notes_by_model)
    print()
    for name, notes in notes_by_model.items():
        print(f"{name}: {describe(notes)}")

    big = notes_by_model["256/8"]
    ratios = {
        "cached/dense_active": ms("256/8", "eager cached") / ms("256/8", "dense, same active"),
        "cached/uncached": ms("256/8", "eager cached") / ms("256/8", "eager uncached"),
        "cache_memory": 100 * big["cache_bytes"] / big["weight_bytes"],
        "onnx/eager": ms("256/8", "ONNX fp32") / ms("256/8", "eager cached"),
        "int8/onnx": ms("256/8", "ONNX int8") / ms("256/8", "ONNX fp32"),
        "compile/eager": ms("256/8", "torch.compile") / ms("256/8", "eager cached"),
    }
    wall = time.perf_counter() - started
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d"), "wall_s": wall,
        "machine": {"processor": platform.processor(), "cpus": os.cpu_count(), "threads": args.threads},
        "torch": torch.__version__, "mode_policy": mode_policy.__version__, "steps": STEPS,
        "repetitions": repetitions, "seeds": "repetition r: observation and noise seed r",
        "rows": table, "notes": notes_by_model, "ratios": ratios,
    }, indent=2, default=float))  # fmt: skip
    print(f"wall time {wall:.0f} s; results in {RESULTS.relative_to(ROOT.parent)}")
    print(
        f"ratios: cached/dense_active={ratios['cached/dense_active']:.2f} "
        f"cached/uncached={ratios['cached/uncached']:.2f} cache_memory={ratios['cache_memory']:.3f}% "
        f"onnx/eager={ratios['onnx/eager']:.2f} int8/onnx={ratios['int8/onnx']:.2f} "
        f"compile/eager={ratios['compile/eager']:.2f}"
    )


if __name__ == "__main__":
    main()
