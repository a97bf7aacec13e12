"""The ``mode-policy`` command line. Each command is a thin wrapper over a Python function."""

from __future__ import annotations

import argparse
import json
import sys


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mode-policy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="train and sample a MoDE denoiser on a 2-D two-mode toy")
    demo_parser.add_argument("--seconds", type=float, default=40.0, help="training time budget")
    demo_parser.add_argument("--steps", type=int, default=1500, help="maximum training steps")
    demo_parser.add_argument("--samples", type=int, default=2000)
    demo_parser.add_argument("--seed", type=int, default=0)
    demo_parser.add_argument("--json", action="store_true", help="also print a JSON summary line")
    demo_parser.set_defaults(run=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
