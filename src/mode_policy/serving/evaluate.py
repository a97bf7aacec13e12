"""``evaluate_served()``: Meta-World rollouts driven through a policy server, with a simulated network.

results = evaluate_served("ws://127.0.0.1:8765", suite="mt10", latency_ms=[0, 50, 150], control_hz=20)

The episodes, their seeds and their success criterion are those of ``mode_policy.evaluation.evaluate``.
Each episode is a robot with its own connection and :class:`AsyncActionStream`; all robots of a wave
step in lockstep, so the server batches their requests. Time is simulated: a control step lasts
``1 / control_hz`` and a reply arrives ``ceil((latency_ms + round_trip_ms) / step_ms)`` steps after its
request, where ``round_trip_ms`` is the loopback round trip measured before the runs. An async robot
asks for a new chunk every ``replan_steps`` steps (default the policy's ``n_action_steps``, as often as it
replans synchronously; at most ``chunk_size - delay``, so that each reply lands before the queue runs
dry), with ``ceil(delay / replan_steps)`` requests in flight; with inpainting it commits to the ``delay``
actions it runs while waiting. Modes:

- ``sync``: wait for each chunk, run its first ``n_action_steps`` actions (the robot stands still while
  it waits, so its actions do not depend on the latency: it runs once, and its robot time is reported);
- ``latest`` / ``weighted`` / ``crossfade``: async, the overlap blended on the robot;
- ``inpaint``: async, the committed actions held by the server's sampler (consistent hand-over).

Reported per mode and latency: success (Wilson 95%), action jerk (mean squared change of the action
between consecutive steps, over all steps and dimensions), steps run on a held action (``starved``),
replies lost to an error (``lost_replies``, 0 unless the server failed), requests, and the robot time the
episodes took.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from mode_policy.evaluation.env_pool import EnvPool
from mode_policy.evaluation.stats import summarize
from mode_policy.io import atomic_write, check_output_dir
from mode_policy.keys import IMAGE_KEY_PREFIX, STATE_KEY
from mode_policy.serving.client import PolicyClient
from mode_policy.serving.stream import BLENDS, AsyncActionStream

MODES = ("sync", *BLENDS)
RESULT_FILES = ("served.json", "served.md")
# The clock is simulated, so a reply is waited for however long the host takes (a busy host must not turn
# into a lost reply and held actions); a server that does not answer at all still ends the run.
REPLY_TIMEOUT_S = 600.0


def evaluate_served(
    url: str,
    suite: str = "mt10",
    tasks: str | list[str] | None = None,
    episodes_per_task: int = 10,
    seed: int = 0,
    *,
    latency_ms: list[float] = (0.0,),
    control_hz: float = 20.0,
    modes: list[str] = ("sync", "weighted", "inpaint"),
    replan_steps: int | None = None,
    token: str | None = None,
    num_workers: int = 2,
    max_concurrent: int = 100,
    max_episode_steps: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every mode at every latency (sync once); returns the results dict (also served.json/.md)."""
    from mode_policy.envs.metaworld import MAX_EPISODE_STEPS, episode_seed, instruction, suite_tasks

    latencies = _checked_latencies(latency_ms)
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ValueError(f"--modes must be some of {', '.join(MODES)}, got {list(modes)}")
    if not control_hz > 0:
        raise ValueError(f"--control-hz must be > 0, got {control_hz}")
    if replan_steps is not None and (isinstance(replan_steps, bool) or not isinstance(replan_steps, int)
                                     or replan_steps < 1):  # fmt: skip
        raise ValueError(f"--replan-steps must be an integer >= 1, got {replan_steps!r}")
    names = suite_tasks(suite, tasks)
    if out_dir is not None:
        out_dir = check_output_dir(out_dir, option="--out", owned=RESULT_FILES, what="results folder")
    horizon = min(max_episode_steps or MAX_EPISODE_STEPS, MAX_EPISODE_STEPS)
    probe = PolicyClient(url, token=token)
    metadata = probe.metadata
    if "inpaint" in modes and not metadata["inpainting"]:
        raise ValueError(f"the server's {metadata['policy_type']} policy cannot inpaint: leave 'inpaint' out")
    round_trip_ms = _round_trip_ms(probe, metadata, instruction(names[0]))
    probe.close()
    step_ms = 1000.0 / control_hz
    jobs = [
        (episode * len(names) + t, task, episode, episode_seed(task, episode, "eval", seed))
        for episode in range(episodes_per_task)
        for t, task in enumerate(names)
    ]
    cameras = [key.removeprefix(IMAGE_KEY_PREFIX) for key in metadata["observation"] if key != STATE_KEY]
    pool_options = {}
    if cameras:
        shape = metadata["observation"][IMAGE_KEY_PREFIX + cameras[0]]["shape"]
        pool_options = {"cameras": cameras, "image_size": tuple(shape[-2:])}
    results = {
        "server": url, "policy_type": metadata["policy_type"], "suite": suite.lower(), "tasks": names,
        "episodes_per_task": episodes_per_task, "seed": seed, "control_hz": control_hz,
        "round_trip_ms": round_trip_ms, "max_episode_steps": horizon,
        "replan_steps": replan_steps or metadata["n_action_steps"], "runs": [],
    }  # fmt: skip
    runs = results["runs"]
    plan = [(mode, latency) for mode in modes for latency in (latencies[:1] if mode == "sync" else latencies)]
    with EnvPool(max(1, min(num_workers, len(jobs))), **pool_options) as pool:
        for mode, latency in plan:
            delay = max(1, math.ceil((latency + round_trip_ms) / step_ms))
            began = time.perf_counter()
            episodes = _play(pool, jobs, url, token, metadata, mode, delay, horizon, max_concurrent, seed,
                             progress, results["replan_steps"])  # fmt: skip
            runs.append(_summary(mode, latency, delay, episodes, names, step_ms, round_trip_ms, latency,
                                 time.perf_counter() - began))  # fmt: skip
            if mode != "sync":
                threshold, _ = _request_schedule(metadata["chunk_size"], delay, results["replan_steps"])
                runs[-1]["replan_steps"] = metadata["chunk_size"] - threshold + 1
            if progress:
                print(_row(runs[-1]))
            if out_dir is not None:  # after every run: a long evaluation keeps what it has measured
                _write(results, Path(out_dir))
    if out_dir is not None:
        results["results_dir"] = str(out_dir)
    return results


def _checked_latencies(latency_ms: Any) -> list[float]:
    values = [latency_ms] if isinstance(latency_ms, (int, float)) else list(latency_ms)
    if not values or not all(isinstance(v, (int, float)) and 0 <= v < 60_000 for v in values):
        raise ValueError(f"--latency-ms takes delays in milliseconds >= 0 (e.g. 0,50,150), got {latency_ms}")
    return [float(v) for v in values]


def _round_trip_ms(client: PolicyClient, metadata: dict[str, Any], task: str, repeats: int = 7) -> float:
    """Median loopback round trip of one chunk, which the simulated robot waits for on top of the latency."""
    observation = {}
    for key, spec in metadata["observation"].items():
        shape = spec["shape"][1:] if metadata["n_obs_steps"] == 1 else spec["shape"]
        observation[key] = np.zeros(shape, dtype=spec["dtype"])
    times = []
    for _ in range(repeats + 1):
        began = time.perf_counter()
        client.infer(observation, task=task)
        times.append(1000 * (time.perf_counter() - began))
    return round(statistics.median(times[1:]), 3)


def _observation(raw: Any) -> dict[str, np.ndarray]:
    """An env's observation -> one sample of the protocol: the state (39,) float32, frames (3, H, W) uint8."""
    if not isinstance(raw, dict):
        return {STATE_KEY: np.asarray(raw, dtype=np.float32)}
    return {
        key: np.asarray(value, np.float32)
        if key == STATE_KEY
        else np.ascontiguousarray(value.transpose(2, 0, 1))
        for key, value in raw.items()
    }


def _request_schedule(chunk: int, delay: int, replan_steps: int) -> tuple[int, int]:
    """(threshold, max_in_flight) of an async robot that asks for a new chunk every ``replan_steps``.

    A request sent at t0 covers steps up to t0 + chunk - 1, so with threshold ``chunk - r + 1`` the next
    one goes out at t0 + r; it lands ``delay`` steps after it was sent, so ``ceil(delay / r)`` requests are
    out at once, and r is cut to ``chunk - delay`` (when it is more) so that a reply lands before the queue
    runs dry.
    """
    replan = max(1, min(replan_steps, chunk - delay))
    return chunk - replan + 1, max(1, math.ceil(delay / replan))


def _play(pool: EnvPool, jobs: list, url: str, token: str | None, meta: dict[str, Any], mode: str, delay: int,
          horizon: int, max_concurrent: int, seed: int, progress: bool,
          replan_steps: int) -> list[dict[str, Any]]:  # fmt: skip
    from mode_policy.envs.metaworld import instruction

    episodes = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"served ({mode}, {delay} step delay)", unit="ep", leave=False)
    threshold, in_flight = _request_schedule(meta["chunk_size"], delay, replan_steps)
    for first in range(0, len(jobs), max_concurrent):
        wave = jobs[first : first + max_concurrent]
        streams = {}
        for job, task, _, _ in wave:
            streams[job] = AsyncActionStream(
                PolicyClient(url, token=token, timeout=REPLY_TIMEOUT_S), task=instruction(task),
                mode="sync" if mode == "sync" else "async", blend="latest" if mode == "sync" else mode,
                seed=seed * 1_000_003 + job * 10_007, delay_steps=delay,
                threshold=None if mode == "sync" else threshold, max_in_flight=in_flight,
                hold_steps=min(delay, meta["chunk_size"] - 1) if mode == "inpaint" else None,
            )  # fmt: skip
        try:
            current = pool.start(
                [(job, task, episode, episode_seed, False) for job, task, episode, episode_seed in wave]
            )
            actions = {job: [] for job, *_ in wave}
            outcome: dict[int, tuple[bool, int]] = {}
            active = sorted(current)
            for step in range(horizon):
                for job in active:
                    streams[job].observe(_observation(current[job]))
                step_actions = {job: streams[job].take().astype(np.float64) for job in active}
                for job, action in step_actions.items():
                    actions[job].append(action)
                replies = pool.step(step_actions)
                done = []
                for job in active:
                    current[job], success = replies[job]
                    if success or step + 1 == horizon:
                        outcome[job] = (bool(success), step + 1)
                        done.append(job)
                if done:
                    pool.finish(done)
                    active = [job for job in active if job not in outcome]
                    if bar is not None:
                        bar.update(len(done))
                if not active:
                    break
        finally:
            for stream in streams.values():
                stream.close()
        for job, task, episode, episode_seed in wave:
            moves = np.diff(np.stack(actions[job]), axis=0)
            episodes.append({
                "task": task, "episode": episode, "seed": episode_seed, "success": outcome[job][0],
                "steps": outcome[job][1], "jerk": float(np.mean(moves**2)) if len(moves) else 0.0,
                "requests": streams[job].stats["requests"], "starved": streams[job].stats["starved"],
                "errors": streams[job].stats["errors"],
            })  # fmt: skip
    if bar is not None:
        bar.close()
    return episodes


def _summary(mode: str, latency: float, delay: int, episodes: list, names: list[str], step_ms: float,
             round_trip_ms: float, latency_ms: float, seconds: float) -> dict[str, Any]:  # fmt: skip
    per_task = {task: [e["success"] for e in episodes if e["task"] == task] for task in names}
    summary = summarize(per_task)
    steps = sum(e["steps"] for e in episodes)
    requests = sum(e["requests"] for e in episodes)
    # Robot time: every control step, plus (sync only) the wait for each chunk while the robot stands.
    waiting = requests * (latency_ms + round_trip_ms) if mode == "sync" else 0.0
    return {
        "mode": mode, "latency_ms": None if mode == "sync" else latency, "delay_steps": delay,
        "mean_success": summary["mean_success"], "mean_ci95": summary["mean_ci95"],
        "per_task": {task: entry["success_rate"] for task, entry in summary["per_task"].items()},
        "jerk": statistics.fmean(e["jerk"] for e in episodes),
        "starved_steps": sum(e["starved"] for e in episodes),
        "lost_replies": sum(e["errors"] for e in episodes),
        "requests": requests, "steps": steps, "robot_seconds": round((steps * step_ms + waiting) / 1000, 2),
        "eval_seconds": round(seconds, 2), "episodes": episodes,
    }  # fmt: skip


def _row(run: dict[str, Any]) -> str:
    latency = "any" if run["latency_ms"] is None else f"{run['latency_ms']:g} ms"
    low, high = run["mean_ci95"]
    return (
        f"{run['mode']:>9}  latency {latency:>7}  success {run['mean_success']:.3f} [{low:.2f}, {high:.2f}]  "
        f"jerk {run['jerk']:.5f}  starved {run['starved_steps']}  requests {run['requests']}  "
        f"robot time {run['robot_seconds']:.0f} s"
    )


def _write(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = [
        "| mode | latency | delay (steps) | success | 95% CI | jerk | starved steps | requests | robot s |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        latency = "any" if run["latency_ms"] is None else f"{run['latency_ms']:g} ms"
        low, high = run["mean_ci95"]
        table.append(
            f"| {run['mode']} | {latency} | {run['delay_steps']} | {run['mean_success']:.3f} | "
            f"[{low:.2f}, {high:.2f}] | {run['jerk']:.5f} | {run['starved_steps']} | {run['requests']} | "
            f"{run['robot_seconds']:.0f} |"
        )
    header = (
        f"Served rollouts: {results['suite']}, {results['episodes_per_task']} episodes/task, seed "
        f"{results['seed']}, {results['control_hz']:g} Hz, loopback round trip "
        f"{results['round_trip_ms']:.1f} ms\n\n"
    )
    atomic_write(out_dir / "served.md", lambda tmp: tmp.write_text(header + "\n".join(table) + "\n"))
    atomic_write(out_dir / "served.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
