"""Probe a quickstart recipe: the whole ``quickstart()`` on its time budget, then validation episodes.

    python benchmarks/quickstart_recipe.py --name default-2t                       # ~12 min
    python benchmarks/quickstart_recipe.py --name default-1t --threads 1           # the slow-machine stand-in
    python benchmarks/quickstart_recipe.py --name hist2 --set n_obs_steps=2 --action-steps 5,3

Each probe runs ``mode_policy.training.quickstart.quickstart`` as a user would (collection, the speed
probe and the 10-minute budget included, torch limited to ``--threads``), then evaluates the trained
policy on **validation** placements (evaluation seed 5000, ``--val-episodes`` per task) once per
executed-steps setting in ``--action-steps`` (the receding horizon is an inference-time choice, so one
trained policy answers all of them). Test seeds (1000+) are never used here: recipes are chosen on
validation episodes only. Results: ``benchmarks/results/quickstart-recipe.json``, one entry per
``--name``, written when the probe ends (a name already there is refused unless ``--replace``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# This folder holds a metaworld.py of its own; keep it from shadowing the simulator package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

import torch  # noqa: E402

from mode_policy.envs.metaworld import VALIDATION_SEED  # noqa: E402
from mode_policy.evaluation.report import machine_description  # noqa: E402
from mode_policy.evaluation.rollout import evaluate  # noqa: E402
from mode_policy.io import atomic_write_text  # noqa: E402
from mode_policy.policies.registry import load_policy  # noqa: E402
from mode_policy.training.quickstart import quickstart  # noqa: E402

RESULTS = ROOT / "results" / "quickstart-recipe.json"


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def validate(out: Path, action_steps: str, episodes: int, name: str) -> dict:
    """Validation success of the probe's policy at each executed-steps setting in ``action_steps``."""
    validation = {}
    policy = load_policy(out / "run" / "policy")
    for steps in (int(s) for s in action_steps.split(",")):
        results = evaluate(
            policy, suite="mt10", episodes_per_task=episodes, seed=VALIDATION_SEED, replan_steps=steps,
            progress=False,
        )  # fmt: skip
        per_task = {task: row["success_rate"] for task, row in results["per_task"].items()}
        validation[str(steps)] = {"mean_success": results["mean_success"], "per_task": per_task}
        below = {task: rate for task, rate in per_task.items() if rate < 0.95}
        mean = results["mean_success"]
        print(f"[{name}] n_action_steps={steps}: validation {mean:.3f}; below 0.95: {below}", flush=True)
    return validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the probe's key in the results file")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 = the slow-machine stand-in)"
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="policy override KEY=VALUE (repeatable)")
    parser.add_argument("--collect-episodes", type=int, default=None, help="demos per task (quickstart's)")
    parser.add_argument(
        "--action-steps", default="5", help="executed steps per chunk to validate, e.g. 5,3,2"
    )
    parser.add_argument("--val-episodes", type=int, default=20, help="validation episodes per task")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart-recipe"))
    parser.add_argument("--replace", action="store_true")
    parser.add_argument(
        "--more-action-steps", action="store_true",
        help="validate an existing probe's policy at more --action-steps (no training; added to its entry)",
    )  # fmt: skip
    args = parser.parse_args()

    record = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"probes": {}}
    if args.more_action_steps:
        if args.name not in record["probes"]:
            raise SystemExit(f"no probe {args.name!r} in {RESULTS} to validate further")
        torch.set_num_threads(record["probes"][args.name]["torch_threads"])
        entry = record["probes"][args.name]
        entry["validation"].update(
            validate(args.out / args.name, args.action_steps, args.val_episodes, args.name)
        )
        atomic_write_text(RESULTS, json.dumps(record, indent=2) + "\n")
        return
    if args.name in record["probes"] and not args.replace:
        raise SystemExit(
            f"{RESULTS} already holds a probe named {args.name!r}; pass --replace or another --name"
        )
    torch.set_num_threads(args.threads)
    overrides = dict(item.split("=", 1) for item in args.set)
    overrides = {key: _value(value) for key, value in overrides.items()}
    out = args.out / args.name
    started = time.perf_counter()
    extra = {} if args.collect_episodes is None else {"collect_episodes": args.collect_episodes}
    own = quickstart(args.minutes, out, seed=args.seed, policy_overrides=overrides, **extra)
    quick = json.loads((out / "quickstart.json").read_text())

    validation = validate(out, args.action_steps, args.val_episodes, args.name)

    record = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"probes": {}}
    record["probes"][args.name] = {
        "command": " ".join(["python", "benchmarks/quickstart_recipe.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_description(),
        "torch_threads": args.threads,
        "overrides": overrides,
        "quickstart": quick,
        "own_eval_seed": args.seed,
        "own_eval_mean_success": own["mean_success"],
        "validation_seed": VALIDATION_SEED,
        "validation_episodes_per_task": args.val_episodes,
        "validation": validation,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
