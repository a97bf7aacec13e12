"""Inference cost of one action chunk: MoDE uncached vs MoDE expert-cached vs a dense equal-active denoiser.

    python benchmarks/inference.py                 # fp32 and bf16, batch 1 and 256 (a few minutes on 2 cores)
    python benchmarks/inference.py --quick         # fewer repetitions

Latencies are medians over repetitions that interleave the variants (each repetition times every variant
once), so a noisy machine slows all of them alike and the ratios stay meaningful. MACs are counted with
torch's FlopCounterMode (mode_policy.nn.flops): every matmul, experts included. The last line is
machine-readable: ``ratios: cached/dense_active=X cached/uncached=Y cache_memory=Z%`` (fp32, batch 1).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from mode_policy.diffusion.schedules import exponential_schedule
from mode_policy.nn import MoDEConfig, MoDEDenoiser
from mode_policy.nn.expert_cache import can_cache_experts
from mode_policy.nn.flops import count_chunk_macs

STEPS = 10  # sampler steps per chunk (DDIM = 1 model evaluation per step)


def build_variants(dtype: torch.dtype) -> dict[str, tuple[MoDEDenoiser, bool]]:
    """name -> (denoiser, use_cache). The dense model has one SwiGLU of 2x the expert width per layer, so
    its parameters equal MoDE's *active* parameters (2 of 4 experts)."""
    mode_config = MoDEConfig(width=256, depth=8, heads=8, num_experts=4, top_k=2, chunk_size=10, action_dim=4)
    dense_config = replace(
        mode_config, num_experts=1, top_k=1, expert_hidden_mult=2 * mode_config.expert_hidden_mult
    )
    torch.manual_seed(0)
    mode = MoDEDenoiser(mode_config).to(dtype).eval()
    dense = MoDEDenoiser(dense_config).to(dtype).eval()
    return {
        "MoDE uncached": (mode, False),
        "MoDE cached": (mode, True),
        "dense, same active params": (dense, True),
    }


def time_chunks(
    variants, batch: int, sigmas: torch.Tensor, repetitions: int, warmup: int
) -> dict[str, float]:
    """Median ms per chunk for each variant, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(warmup + repetitions):
        for name, (denoiser, use_cache) in variants.items():
            config = denoiser.config
            dtype = next(denoiser.parameters()).dtype
            obs = torch.randn(batch, config.obs_dim, dtype=dtype)
            goal = torch.randn(batch, config.goal_dim, dtype=dtype)
            generator = torch.Generator().manual_seed(rep)
            start = time.perf_counter()
            options = {"use_cache": use_cache} if can_cache_experts(denoiser) else {}
            denoiser.sample_actions(obs, goal, sigmas, generator=generator, **options)
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[name].append(elapsed * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def weight_bytes(denoiser: MoDEDenoiser) -> int:
    return sum(p.numel() * p.element_size() for p in denoiser.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps_small, reps_large = (7, 1) if args.quick else (25, 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {STEPS} DDIM steps, chunk 10")

    rows = []
    ratio_line = None
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        variants = build_variants(dtype)
        sigmas = exponential_schedule(STEPS, sigma_min=0.05, sigma_max=80.0).to(dtype)
        mode = variants["MoDE cached"][0]
        cache = mode.cache_experts(sigmas)
        cache_fraction = cache.memory_bytes() / weight_bytes(mode)
        ms_small = time_chunks(variants, 1, sigmas, reps_small, warmup=3)
        ms_large = time_chunks(variants, 256, sigmas, reps_large, warmup=1)
        for name, (denoiser, use_cache) in variants.items():
            macs = count_chunk_macs(denoiser, sigmas, batch_size=1, use_cache=use_cache).macs
            counts = denoiser.parameter_counts()
            rows.append(
                (dtype_name, name, ms_small[name], ms_large[name], macs, counts["total"], counts["active"])
            )
        if dtype_name == "float32" or ratio_line is None:
            cached, dense = ms_small["MoDE cached"], ms_small["dense, same active params"]
            ratio_line = (
                f"ratios: cached/dense_active={cached / dense:.2f} "
                f"cached/uncached={cached / ms_small['MoDE uncached']:.2f} "
                f"cache_memory={100 * cache_fraction:.3f}%"
            )
        print(
            f"{dtype_name}: expert cache holds {cache.memory_bytes() / 1024:.1f} KiB for {STEPS} steps "
            f"x 8 layers = {100 * cache_fraction:.3f}% of the {weight_bytes(mode) / 2**20:.1f} MiB of weights"
        )

    print()
    print(
        "| dtype | variant | ms/chunk, batch 1 | ms/chunk, batch 256 | MMACs/chunk (batch 1) "
        "| params total | params active |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype_name, name, small, large, macs, total, active in rows:
        print(
            f"| {dtype_name} | {name} | {small:.1f} | {large:.0f} | {macs / 1e6:.1f} | "
            f"{total / 1e6:.2f}M | {active / 1e6:.2f}M |"
        )
    print()
    print(ratio_line)


if __name__ == "__main__":
    main()
