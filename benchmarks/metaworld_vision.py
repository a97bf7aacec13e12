"""Image-only MoDE on a Meta-World MT10 subset: success, training samples/s, decode frames/s, ms per chunk.

Default (sized for a 2-core CPU, ~1 h): 4 MT10 tasks (reach, drawer-close, button-press-topdown,
window-close), 20 scripted demos each, one "corner" camera at 64x64 (MP4), no state (use_state=False), a
ResNet-18 with GroupNorm + FiLM (shared trunk), width-128 4-layer MoDE, 3000 steps of batch 64,
10 evaluation episodes per task. ``--tiny`` proves the pipeline in ~2 minutes (numbers meaningless).

    python benchmarks/metaworld_vision.py [--tiny] [--out benchmarks/results]

Appends one row to ``<out>/metaworld_vision.json`` (a list) and ``<out>/metaworld_vision.md`` (a table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# This folder holds benchmarks/metaworld.py, which would shadow the metaworld package in spawned workers.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

DEFAULT_TASKS = "reach-v3,drawer-close-v3,button-press-topdown-v3,window-close-v3"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--demos", type=int, default=20, help="scripted demos per task")
    parser.add_argument("--camera", default="corner")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="collection / evaluation processes")
    parser.add_argument("--work-dir", default="runs/bench_vision")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--tiny", action="store_true", help="2 tasks x 2 demos, 32 px, 5 steps, 1 short episode"
    )
    args = parser.parse_args(argv)
    max_episode_steps = None
    if args.tiny:
        args.tasks, args.demos, args.image_size = "reach-v3,drawer-close-v3", 2, 32
        args.steps, args.batch_size, args.eval_episodes, max_episode_steps = 5, 8, 1, 20
        args.work_dir = str(Path(args.work_dir) / "tiny")

    import torch

    from mode_policy.data import ActionChunkDataset, LeRobotDataset
    from mode_policy.envs.collect import collect_demonstrations
    from mode_policy.evaluation.rollout import evaluate
    from mode_policy.training.train import train

    work = Path(args.work_dir)
    data_dir, run_dir = work / "data", work / f"run-{int(time.time())}"
    key = f"observation.images.{'gripperPOV' if args.camera == 'gripper' else args.camera}"
    started = time.perf_counter()
    if not (data_dir / "meta/info.json").is_file():
        collect_demonstrations(
            data_dir,
            tasks=args.tasks,
            episodes_per_task=args.demos,
            cameras=args.camera,
            image_size=args.image_size,
            workers=args.workers,
            overwrite=True,
        )
    collect_s = time.perf_counter() - started

    # Data loading: decode every frame once (what training does), then the cost of a training batch.
    dataset = LeRobotDataset(data_dir)
    began = time.perf_counter()
    frames = dataset.images(key)
    decode_fps = len(frames) / (time.perf_counter() - began)
    windows = ActionChunkDataset(dataset, n_obs_steps=1, chunk_size=10, state_key=None, image_keys=[key])
    loader = torch.utils.data.DataLoader(windows, batch_size=args.batch_size, shuffle=True)
    began, items = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        items += len(batch["action"])
        if i == 20:
            break
    batch_fps = items / (time.perf_counter() - began)

    overrides = {
        "image_keys": [key],
        "use_state": False,
        "vision_norm": "group",
        "vision_shared": True,
        "language_encoder": "onehot",
    }
    began = time.perf_counter()
    train(data_dir, run_dir, steps=args.steps, batch_size=args.batch_size, policy_overrides=overrides)
    train_s = time.perf_counter() - began
    results = evaluate(
        run_dir,
        tasks=args.tasks,
        episodes_per_task=args.eval_episodes,
        num_workers=args.workers,
        max_episode_steps=max_episode_steps,
        progress=False,
    )
    row = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tiny": args.tiny,
        "tasks": args.tasks.split(","),
        "demos_per_task": args.demos,
        "camera": key,
        "image_size": args.image_size,
        "use_state": False,
        "frames": int(dataset.num_frames),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "mean_success": results["mean_success"],
        "per_task_success": {t: v["success_rate"] for t, v in results["per_task"].items()},
        "train_samples_per_s": round(args.steps * args.batch_size / train_s, 1),
        "decode_frames_per_s": round(decode_fps, 1),
        "batch_items_per_s": round(batch_fps, 1),
        "ms_per_chunk_batched": results["inference"]["ms_per_chunk_batched_mean"],
        "ms_per_chunk_batch1": results["inference"]["ms_per_chunk_batch1_median"],
        "collect_s": round(collect_s, 1),
        "train_s": round(train_s, 1),
        "eval_s": results["eval_seconds"],
        "torch_threads": torch.get_num_threads(),
    }
    _append(Path(args.out), row)
    print(json.dumps(row, indent=2))
    return row


def _append(out: Path, row: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metaworld_vision.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows.append(row)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    header = (
        "| date | tiny | tasks | demos | px | success | train samples/s | decode frames/s | batch items/s "
        "| ms/chunk (batched) | ms/chunk (batch 1) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['date']} | {r['tiny']} | {len(r['tasks'])} | {r['demos_per_task']} | {r['image_size']} "
        f"| {r['mean_success']:.2f} | {r['train_samples_per_s']} | {r['decode_frames_per_s']} "
        f"| {r['batch_items_per_s']} | {r['ms_per_chunk_batched']} | {r['ms_per_chunk_batch1']} |"
        for r in rows
    ]
    (out / "metaworld_vision.md").write_text(
        "# Meta-World vision benchmark (image-only MoDE)\n\n" + header + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
