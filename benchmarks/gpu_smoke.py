"""GPU smoke test: every family member trains, samples and agrees with the CPU on CUDA; then GPU latency.

    python benchmarks/gpu_smoke.py                  # on a CUDA machine; elsewhere it skips with a message
    python benchmarks/gpu_smoke.py --device cpu     # the same checks on the CPU (to test this script)

Checks, one row each (ok, or FAIL with the reason); exit code 1 if any fails:

1. train: for each family member (MoDE with sigma, token, task, sigma_goal and stage routing, dense; the
   CNN baseline), 30 steps of ``compute_loss`` + AdamW in float32 and under bfloat16 autocast (the default
   stochastic routing dispatches through the grouped GEMM, whose kernel is chosen by device and dtype);
   the VDD student: 30 distillation steps from a MoDE teacher. Losses must stay finite;
2. sample: cached and uncached chunks on the device, equal to each other (1e-4);
3. agree: a float32 forward on the device (TF32 off) against the CPU forward of the same weights (1e-4);
4. Lightning: ``train(..., precision="bf16-mixed")`` for 30 steps on a small synthetic dataset;
5. latency of the 256/8 model (10 DDIM steps, cached): eager and ``policy.compile()`` (CUDA graphs) at
   batch 1 and 256, interleaved medians.

Figures go to ``benchmarks/results/gpu_smoke.json`` (``gpu_smoke-cpu.json`` for a dry run on the CPU) with
the command, device, steps and wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mode_policy
from mode_policy.nn import CNNDenoiserConfig, MoDEConfig
from mode_policy.policies import MoDEPolicy, MoDEPolicyConfig

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_smoke.json"
TASKS = ["reach the goal", "open the drawer", "push the puck"]
ROUTINGS = {
    "sigma": {},
    "token": {"router_input": "token"},
    "task": {"router_input": "task"},
    "sigma_goal": {"router_input": "sigma_goal"},
    "stage": {"router_input": "stage", "stage_boundaries": [1.0], "num_experts": 2, "top_k": 1},
    "dense": {"num_experts": 1, "top_k": 1},
}
STATE, ACTION, CHUNK = 39, 4, 10
STATS = {key: {"mean": [0.0] * n, "std": [1.0] * n, "min": [-1.0] * n, "max": [1.0] * n}
         for key, n in (("observation.state", STATE), ("action", ACTION))}  # fmt: skip


def small_policy(name: str, device: str) -> MoDEPolicy:
    if name == "cnn":
        denoiser: Any = CNNDenoiserConfig(down_dims=(64, 128), cond_embed_dim=64)
    else:
        denoiser = MoDEConfig(width=128, depth=4, heads=4, **ROUTINGS[name])
    config = MoDEPolicyConfig(state_dim=STATE, action_dim=ACTION, chunk_size=CHUNK, language_encoder="onehot",
                              tasks=TASKS, denoiser=denoiser)  # fmt: skip
    torch.manual_seed(0)
    return MoDEPolicy(config, STATS).to(device)


def batch(size: int, device: str, seed: int = 0) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "observation.state": torch.randn(size, 1, STATE, generator=generator).to(device),
        "action": (torch.rand(size, CHUNK, ACTION, generator=generator) * 2 - 1).to(device),
        "task": [TASKS[i % len(TASKS)] for i in range(size)],
    }


# Checks -----------------------------------------------------------------------------------------------------
def check_training(name: str, device: str, autocast: bool) -> str:
    policy = small_policy(name, device).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    losses = []
    for step in range(30):
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss, _ = policy.compute_loss(batch(64, device, seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    if not all(np.isfinite(losses)):
        raise AssertionError(f"non-finite loss: {losses}")
    return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def check_sampling(name: str, device: str) -> str:
    policy = small_policy(name, device).eval()
    obs = {"observation.state": torch.randn(8, STATE, device=device), "task": TASKS[1]}
    cached = policy.predict_action_chunk(obs, generator=torch.Generator(device).manual_seed(0))
    uncached = policy.predict_action_chunk(
        obs, generator=torch.Generator(device).manual_seed(0), use_expert_cache=False
    )
    diff = float((cached - uncached).abs().max())
    if not diff <= 1e-4:
        raise AssertionError(f"cached and uncached differ by {diff:.2e}")
    return f"|cached - uncached| {diff:.1e}"


def check_agreement(name: str, device: str) -> str:
    policy = small_policy(name, "cpu").eval()
    noisy, obs = torch.randn(4, CHUNK, ACTION), torch.randn(4, 1, STATE)
    goal = policy._goal(TASKS[:2] * 2)
    with torch.no_grad():
        on_cpu = policy.denoiser(noisy, 1.3, obs, goal)
        policy.to(device)
        on_device = policy.denoiser(noisy.to(device), 1.3, obs.to(device), goal.to(device))
    diff = float((on_device.cpu() - on_cpu).abs().max())
    if not diff <= 1e-4:
        raise AssertionError(f"{device} and CPU forwards differ by {diff:.2e}")
    return f"|{device} - cpu| {diff:.1e}"


def check_student(device: str) -> str:
    from mode_policy.distill import distill

    teacher = small_policy("sigma", device).eval()
    data = {key: value.cpu() for key, value in batch(256, "cpu").items() if key != "task"}
    data["task"] = [TASKS[i % len(TASKS)] for i in range(256)]
    result = distill(teacher, data, steps=30, warm_start_steps=10, batch_size=32, progress=False)
    action = result.student.predict_action_chunk(
        {"observation.state": torch.randn(2, STATE), "task": TASKS[0]}
    )
    if not torch.isfinite(action).all():
        raise AssertionError("the student's actions are not finite")
    return f"student on {next(result.student.parameters()).device}"


def check_lightning(device: str, precision: str) -> str:
    from mode_policy.data.writer import LeRobotDatasetWriter
    from mode_policy.training.train import train

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        features = {"observation.state": {"dtype": "float32", "shape": [STATE]},
                    "action": {"dtype": "float32", "shape": [ACTION]}}  # fmt: skip
        with LeRobotDatasetWriter(Path(tmp) / "data", fps=80, features=features) as writer:
            for task in TASKS:
                for _ in range(20):
                    writer.add_frame({"observation.state": rng.normal(size=STATE),
                                      "action": rng.uniform(-1, 1, size=ACTION)})  # fmt: skip
                writer.save_episode(task=task)
        overrides = ["language_encoder=onehot", "denoiser.width=64", "denoiser.depth=2"]
        run = train(Path(tmp) / "data", Path(tmp) / "run", steps=30, batch_size=32, precision=precision,
                    accelerator="gpu" if device == "cuda" else "cpu", progress=False,
                    policy_overrides=overrides)  # fmt: skip
        metrics = (run / "metrics.csv").read_text().splitlines()
    return f"{len(metrics) - 1} logged rows, precision {precision}"


def latency_rows(device: str, repetitions: int) -> list[dict[str, Any]]:
    """ms per chunk of the 256/8 model: eager cached vs compiled (CUDA graphs on a GPU), interleaved."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference import model_256_8, observation

    eager = model_256_8().to(device)
    compiled = model_256_8().to(device)
    start = time.perf_counter()
    compiled.compile()
    compile_s = time.perf_counter() - start
    rows = []
    for size in (1, 256):
        times: dict[str, list[float]] = {"eager cached": [], "torch.compile": []}
        for rep in range(repetitions + 2):
            obs = observation(eager, size, rep)
            obs["observation.state"] = obs["observation.state"].to(device)
            for row, policy in (("eager cached", eager), ("torch.compile", compiled)):
                _sync(device)
                begin = time.perf_counter()
                policy.predict_action_chunk(obs, generator=torch.Generator(device).manual_seed(rep))
                _sync(device)
                if rep >= 2:
                    times[row].append((time.perf_counter() - begin) * 1e3)
        for row, values in times.items():
            rows.append({"row": row, "batch": size, "ms": statistics.median(values), "compile_s": compile_s})
    return rows


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# Main -------------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (to test this script)")
    parser.add_argument("--repetitions", type=int, default=20, help="latency repetitions per row")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: skipped: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU "
              "machine, or with --device cpu to test the script")  # fmt: skip
        return 0
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"mode-policy {mode_policy.__version__}, torch {torch.__version__}, {name}")
    checks: list[tuple[str, Any]] = []
    for variant in [*ROUTINGS, "cnn"]:
        checks += [
            (f"train {variant} float32", lambda v=variant: check_training(v, device, autocast=False)),
            (f"train {variant} bf16 autocast", lambda v=variant: check_training(v, device, autocast=True)),
            (f"sample {variant} cached = uncached", lambda v=variant: check_sampling(v, device)),
            (f"agree {variant} {device} = cpu", lambda v=variant: check_agreement(v, device)),
        ]
    checks += [
        ("distill vdd student", lambda: check_student(device)),
        ("lightning bf16-mixed", lambda: check_lightning(device, "bf16-mixed")),
    ]
    results, failures = [], 0
    for label, check in checks:
        try:
            detail, ok = check(), True
        except Exception as error:  # a smoke test reports every failure, then exits 1
            detail, ok = f"{type(error).__name__}: {error}".splitlines()[0][:300], False
            traceback.print_exc(limit=3)
        failures += not ok
        results.append({"check": label, "ok": ok, "detail": detail})
        print(f"{'ok  ' if ok else 'FAIL'} {label}: {detail}", flush=True)
    latency = [] if args.skip_latency else latency_rows(device, args.repetitions)
    for row in latency:
        print(f"latency 256/8 {row['row']} batch {row['batch']}: {row['ms']:.2f} ms/chunk "
              f"(compile {row['compile_s']:.0f} s)")  # fmt: skip
    wall = time.perf_counter() - started
    out = RESULTS if device == "cuda" else RESULTS.with_name(f"gpu_smoke-{device}.json")  # a dry run
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d"), "device": name,
        "torch": torch.__version__, "training_steps": 30, "sampler_steps": 10, "wall_s": wall,
        "checks": results, "latency": latency,
    }, indent=2))  # fmt: skip
    print(f"{len(results) - failures}/{len(results)} checks passed in {wall:.0f} s; figures in {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
