"""Fine-tuning from a pretrained policy against training from scratch, on tasks the pretraining never saw.

    python benchmarks/finetune.py                     # defaults below (~25 min on 2 cores)
    python benchmarks/finetune.py --seeds 0 --pretrain-steps 400 --steps 100 --tag finetune-smoke

1. Demonstrations (``--demos`` per task, seed 0) of 8 MT10 tasks (pretraining) and of the other 2
   (``--new-tasks``, fine-tuning).
2. A MoDE policy (the quickstart's size, one-hot goals) is pretrained on the 8 tasks for
   ``--pretrain-steps``.
3. Per training seed, on the 2 new tasks: fine-tuned from it with a frozen router (``--init-from``,
   ``--freeze router``, ``--extend-tasks``) for ``--steps`` and for half of them, and from scratch for
   ``--steps``; each policy evaluated on the 2 tasks (``--episodes`` per task, test seeds 1000+).

Question answered: does fine-tuning reach the from-scratch success in at most half the steps?
Results: ``benchmarks/results/<tag>.json`` (written after every run; runs already there are kept and
skipped, so an interrupted benchmark continues); the table goes to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# This folder holds a metaworld.py of its own; keep it from shadowing the simulator package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

from mode_policy.envs.collect import collect_demonstrations  # noqa: E402
from mode_policy.envs.metaworld import suite_tasks  # noqa: E402
from mode_policy.evaluation.rollout import evaluate  # noqa: E402
from mode_policy.training.train import train  # noqa: E402

POLICY = ["language_encoder=onehot", "denoiser.width=128", "denoiser.depth=4", "denoiser.heads=4"]
TRAINING = {"batch_size": 128, "lr": 1e-3, "ema_decay": 0.995}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tasks", default="drawer-open-v3,window-open-v3")
    parser.add_argument("--demos", type=int, default=10, help="demonstrations per task")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=400, help="fine-tuning / from-scratch steps")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task")
    parser.add_argument("--out", type=Path, default=Path("runs/finetune-bench"))
    parser.add_argument("--tag", default="finetune-mt10-8to2")
    args = parser.parse_args()

    new = suite_tasks("mt10", args.new_tasks)
    old = [task for task in suite_tasks("mt10") if task not in new]
    results_path = ROOT / "results" / f"{args.tag}.json"
    record = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}
    record.update({
        "command": " ".join(["python", "benchmarks/finetune.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "pretrain_tasks": old, "new_tasks": new, "demos_per_task": args.demos, "demo_seed": 0,
        "pretrain_steps": args.pretrain_steps, "steps": args.steps, "policy": POLICY, "training": TRAINING,
        "evaluation": {"episodes_per_task": args.episodes, "seed": 1000},
    })  # fmt: skip
    began, earlier_seconds = time.perf_counter(), record.get("wall_seconds", 0)

    def save() -> None:
        record["wall_seconds"] = round(earlier_seconds + time.perf_counter() - began, 1)
        results_path.write_text(json.dumps(record, indent=2) + "\n")

    data = {}
    for name, tasks in (("pretrain", old), ("new", new)):
        data[name] = args.out / f"data-{name}"
        if not (data[name] / "meta" / "info.json").is_file():
            collect_demonstrations(data[name], tasks=tasks, episodes_per_task=args.demos, seed=0, workers=2)
    pretrained = args.out / "pretrain"
    if not (pretrained / "policy" / "config.json").is_file():
        train(data["pretrain"], pretrained, steps=args.pretrain_steps, seed=0, policy_overrides=POLICY,
              checkpoint_every=args.pretrain_steps, **TRAINING)  # fmt: skip
    for seed in (int(s) for s in args.seeds.split(",")):
        runs = {
            f"finetune-{args.steps // 2}-seed{seed}": {"steps": args.steps // 2, "init_from": pretrained},
            f"finetune-{args.steps}-seed{seed}": {"steps": args.steps, "init_from": pretrained},
            f"scratch-{args.steps}-seed{seed}": {"steps": args.steps, "init_from": None},
        }
        for name, run in runs.items():
            if name in record["runs"]:
                continue
            started, run_dir = time.perf_counter(), args.out / name
            tuned = {"init_from": run["init_from"], "freeze": "router", "extend_tasks": True}
            if not (run_dir / "policy" / "config.json").is_file():  # trained before an interruption: reused
                train(
                    data["new"], run_dir, steps=run["steps"], seed=seed, checkpoint_every=run["steps"],
                    resume=(run_dir / "checkpoints" / "last.ckpt").is_file(),
                    **(tuned if run["init_from"] else {"policy_overrides": POLICY}), **TRAINING,
                )  # fmt: skip
            trained = time.perf_counter() - started
            result = evaluate(run_dir, tasks=new, episodes_per_task=args.episodes, seed=1000, progress=False)
            record["runs"][name] = {
                "seed": seed, "steps": run["steps"], "from": "pretrained (router frozen)" if run["init_from"]
                else "scratch", "mean_success": result["mean_success"], "train_seconds": round(trained, 1),
                "per_task": {t: e["success_rate"] for t, e in result["per_task"].items()},
            }  # fmt: skip
            save()
            print(name, record["runs"][name]["mean_success"], flush=True)
    summary = {}
    for kind in (f"finetune-{args.steps // 2}", f"finetune-{args.steps}", f"scratch-{args.steps}"):
        values = [r["mean_success"] for n, r in record["runs"].items() if n.startswith(kind + "-seed")]
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[kind] = {
                "seeds": len(values),
                "mean": round(statistics.mean(values), 3),
                "std": round(spread, 3),
            }
    record["summary"] = summary
    save()
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
