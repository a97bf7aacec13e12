"""Training from a dataset larger than we want in RAM: peak memory, startup and samples/s against MT10 in RAM.

    python benchmarks/data_scale.py                         # 20M frames, 2,000 episodes (~25 min, ~9 GB disk)
    python benchmarks/data_scale.py --frames 2000000 --episodes 200 --tag data-scale-2m   # a quicker look
    python benchmarks/data_scale.py --open-only --repeats 2      # only the first open (cache build), timed

1. A synthetic LeRobot v3 state dataset is written by our writer (``add_episode``): 39-d state, 4-d action,
   ``--frames`` frames in ``--episodes`` episodes over 10 tasks, data files of 100 MB (LeRobot's default),
   into ``--data`` (kept and reused when complete).
2. Each measurement runs in a fresh process (so its peak RSS is its own): open the dataset (the first
   open of the large set builds the column cache: timed apart from a later, cached open), index its
   training windows, then train ``--steps`` optimizer steps at batch ``--batch-size`` with the quickstart's
   policy size. Peak RSS above the process's RSS before opening (``ru_maxrss`` minus ``VmRSS`` after
   the imports) and training samples/s (steps after the first 20, x batch) are reported.
3. The same for the MT10 set in RAM (``--mt10``, collected with 40 demos per task if absent). The large
   set and MT10 alternate ``--repeats`` times, and the samples/s ratio is taken per pair.

``--open-only`` times just the first open (the column cache build) ``--repeats`` times, the cache removed
before each, in fresh processes, and adds them to the results as ``first_opens`` (the source tree the child
imported is recorded, so ``PYTHONPATH=<other checkout>/src`` compares two versions on the same files).

Results: ``benchmarks/results/<tag>.json`` (written after every measurement); the table goes to
benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mode_policy.evaluation.report import machine_description

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
STATE_DIM, ACTION_DIM, TASKS = 39, 4, 10
# The quickstart's policy: small, so the data side weighs as much as it ever does in a training step.
POLICY = ["language_encoder=onehot", "denoiser.width=128", "denoiser.depth=4", "denoiser.heads=4"]


def write_synthetic(root: Path, frames: int, episodes: int, seed: int = 0) -> float:
    """A random-walk state dataset of ``frames`` frames in ``episodes`` equal episodes; seconds taken."""
    from tqdm import tqdm

    from mode_policy.data.lerobot import LeRobotDatasetWriter

    features = {
        "observation.state": {"dtype": "float32", "shape": [STATE_DIM], "names": None},
        "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": None},
    }
    rng = np.random.default_rng(seed)
    length = frames // episodes
    began = time.perf_counter()
    with LeRobotDatasetWriter(root, fps=80, features=features, robot_type="synthetic") as writer:
        for episode in tqdm(range(episodes), desc="write", unit="episode"):
            steps = rng.normal(scale=0.01, size=(length, STATE_DIM)).astype(np.float32)
            state = np.cumsum(steps, axis=0) + rng.normal(size=STATE_DIM).astype(np.float32)
            action = np.tanh(state[:, :ACTION_DIM] * 3).astype(np.float32)
            writer.add_episode({"observation.state": state, "action": action}, task=f"task {episode % TASKS}")
    return time.perf_counter() - began


def rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def measure(dataset_dir: str, steps: int, batch_size: int) -> dict:
    """Runs in a child process: open, index, train; prints one JSON line."""
    import tempfile

    import lightning as L

    from mode_policy.data.lerobot import LeRobotDataset
    from mode_policy.data.windows import ActionChunkDataset
    from mode_policy.training.train import train

    times: list[float] = []

    class StepTimes(L.Callback):
        def on_train_batch_start(self, *args):
            self.began = time.perf_counter()

        def on_train_batch_end(self, *args):
            times.append(time.perf_counter() - self.began)

    start_rss = rss_now_mb()
    began = time.perf_counter()
    dataset = LeRobotDataset(dataset_dir)  # the column cache: $MODE_POLICY_CACHE, set by the parent
    opened = time.perf_counter()
    windows = ActionChunkDataset(dataset, n_obs_steps=1, chunk_size=10)
    indexed = time.perf_counter()
    with tempfile.TemporaryDirectory() as run:
        train(
            dataset_dir, Path(run) / "run", steps=steps, batch_size=batch_size, seed=0, progress=False,
            policy_overrides=list(POLICY), checkpoint_every=steps, log_every=10,
            extra_callbacks=[StepTimes()],
        )  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timed = times[20:]
    return {
        "dataset": dataset_dir,
        "storage": dataset.storage,
        "frames": dataset.num_frames,
        "windows": len(windows),
        "open_seconds": round(opened - began, 2),
        "index_seconds": round(indexed - opened, 3),
        "start_rss_mb": round(start_rss, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_above_start_mb": round(peak - start_rss, 1),
        "samples_per_second": round(batch_size * len(timed) / sum(timed), 1),
        "steps": steps,
        "batch_size": batch_size,
    }


def first_open(data: Path, cache_home: Path) -> dict:
    """Open ``data`` in a fresh process with an empty column cache: wall seconds of the open (cache build)."""
    code = (
        "import sys, time; began = time.perf_counter(); import mode_policy; "
        "from mode_policy.data.lerobot import LeRobotDataset; LeRobotDataset(sys.argv[1]); "
        "print(mode_policy.__file__, time.perf_counter() - began)"
    )
    env = {**os.environ, "MODE_POLICY_CACHE": str(cache_home)}
    done = subprocess.run([sys.executable, "-c", code, str(data)], check=True, env=env, capture_output=True,
                          text=True)  # fmt: skip
    source, seconds = done.stdout.split()[-2:]
    return {"source": str(Path(source).parent), "seconds": round(float(seconds), 2),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip


def run_child(dataset: Path, args: argparse.Namespace, cache_home: Path) -> dict:
    command = [sys.executable, __file__, "--child", str(dataset), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size)]  # fmt: skip
    env = {**os.environ, "MODE_POLICY_CACHE": str(cache_home)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"measurement of {dataset} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000_000)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument(
        "--data", type=Path, default=None, help="default /tmp/mode-policy-data-scale-<frames>"
    )
    parser.add_argument("--mt10", type=Path, default=Path("/tmp/mode-policy-data-scale-mt10"))
    parser.add_argument("--cache-home", type=Path, default=None, help="$MODE_POLICY_CACHE for the runs")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tag", default="data-scale")
    parser.add_argument("--open-only", action="store_true", help="time only the first open (cache build)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.batch_size)))
        return

    data = args.data or Path(f"/tmp/mode-policy-data-scale-{args.frames}")
    cache_home = args.cache_home or data.parent / f"{data.name}-cache"
    command = " ".join(["python", "benchmarks/data_scale.py", *sys.argv[1:]])
    record: dict = {
        "command": command,
        "machine": machine_description(),
        "frames": args.frames, "episodes": args.episodes, "steps": args.steps,
        "batch_size": args.batch_size, "seed": 0, "policy": POLICY, "runs": [],
    }  # fmt: skip
    out = RESULTS / f"{args.tag}.json"
    if out.is_file():  # a rerun on the same data keeps how long writing it and building its cache took
        earlier = json.loads(out.read_text())
        kept = ("write_seconds", "cache_build_seconds", "first_opens", "open_only_writes")
        kept += ("runs", "summary", "command", "machine", "wall_seconds") if args.open_only else ()
        record.update({k: earlier[k] for k in kept if k in earlier})
    began = time.perf_counter()

    def save() -> None:
        record["open_only_wall_seconds" if args.open_only else "wall_seconds"] = round(
            time.perf_counter() - began, 1
        )
        out.write_text(json.dumps(record, indent=2) + "\n")

    if not (data / "meta" / "info.json").is_file():
        written = round(write_synthetic(data, args.frames, args.episodes), 1)
        if args.open_only:  # the training runs kept above may come from another machine: kept apart
            record.setdefault("open_only_writes", []).append(
                {"seconds": written, "machine": machine_description()}
            )
        else:
            record["write_seconds"] = written
        save()
    if args.open_only:
        record.setdefault("first_opens", [])
        for _ in range(args.repeats):
            shutil.rmtree(cache_home, ignore_errors=True)
            opened = first_open(data, cache_home)
            record["first_opens"].append({**opened, "machine": machine_description(), "command": command})
            save()
            print(json.dumps(record["first_opens"][-1]), flush=True)
        return
    if not (args.mt10 / "meta" / "info.json").is_file():
        # In a process of its own: this script's folder (on sys.path here) holds a metaworld.py.
        collect = ["-m", "mode_policy.cli", "collect", "--suite", "mt10", "--episodes-per-task", "40"]
        subprocess.run([sys.executable, *collect, "--out", str(args.mt10)], check=True, cwd=ROOT.parent)
    if not (cache_home / "columns").is_dir():  # the first open builds the column cache: timed on its own
        began_build = time.perf_counter()
        code = "import sys; from mode_policy.data.lerobot import LeRobotDataset; LeRobotDataset(sys.argv[1])"
        env = {**os.environ, "MODE_POLICY_CACHE": str(cache_home)}
        subprocess.run([sys.executable, "-c", code, str(data)], check=True, env=env)
        record["cache_build_seconds"] = round(time.perf_counter() - began_build, 1)
        save()
    for repeat in range(args.repeats):
        for name, dataset in (("large", data), ("mt10", args.mt10)):
            result = run_child(dataset, args, cache_home)
            record["runs"].append({"repeat": repeat, "set": name, **result})
            save()
            print(json.dumps(record["runs"][-1]), flush=True)
    large = [r for r in record["runs"] if r["set"] == "large"]
    mt10 = [r for r in record["runs"] if r["set"] == "mt10"]
    ratios = [a["samples_per_second"] / b["samples_per_second"] for a, b in zip(large, mt10, strict=True)]
    record["summary"] = {
        "peak_above_start_mb_large": max(r["peak_above_start_mb"] for r in large),
        "peak_above_start_mb_mt10": max(r["peak_above_start_mb"] for r in mt10),
        "open_seconds_large_cached": max(r["open_seconds"] + r["index_seconds"] for r in large),
        "samples_per_second_ratio": [round(r, 3) for r in ratios],
        "samples_per_second_ratio_median": round(statistics.median(ratios), 3),
    }
    save()
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()
