"""The policy server on loopback: round trip against the policy's own chunk time, batching throughput, and
16 robots at 10 Hz.

    python benchmarks/serving.py            # torch and ONNX servers, 60 s of 16 robots each (~6 min)
    python benchmarks/serving.py --quick    # 15 s of 16 robots each (~2.5 min)

For each policy (the shipped ``mt10-mode-small`` in torch, and its ONNX fp32 export) a ``mode-policy serve``
process is started on 127.0.0.1 (its own process, as on a robot's inference box), then:

1. round trip: one client, blocks of 10 round trips interleaved with blocks of 10 direct
   ``predict_action_chunk`` calls of the same policy in this process (batch 1); medians and p99;
2. throughput: requests per second of one client at a time, and of 16 clients sending back to back
   (the server batches them), over the same duration;
3. 16 robots, each sending one request every 100 ms (10 Hz) for the duration; every reply is checked
   against the robot's own expected chunk (fixed observation and seed per robot): lost (no reply in 10 s)
   and mismatched replies are counted, latency p50 / p99 reported.

Results: ``benchmarks/results/serving.json``; the table goes to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mode_policy
from mode_policy.policies import load_policy
from mode_policy.serving import PolicyClient

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "serving.json"
ROBOTS, ROBOT_HZ = 16, 10.0
SHIPPED = "mt10-mode-small"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(policy: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mode_policy.cli", "serve", "--policy", policy, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    PolicyClient(f"ws://127.0.0.1:{port}", retry_s=120).close()  # waits until it answers
    return server


def observation(seed: int) -> dict[str, np.ndarray]:
    return {"observation.state": np.random.default_rng(seed).uniform(-0.5, 0.5, 39).astype(np.float32)}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def round_trip(url: str, policy: Any, blocks: int) -> dict[str, float]:
    """Interleaved blocks of 10 direct chunks and 10 round trips (batch 1, same observation and task)."""
    task = policy.config.tasks[0]
    obs = observation(0)
    batch = {"observation.state": torch.from_numpy(obs["observation.state"])[None], "task": [task]}
    direct, trips = [], []
    with PolicyClient(url) as client:
        client.infer(obs, task=task, seed=0)
        policy.predict_action_chunk(batch)
        for _ in range(blocks):
            for _ in range(10):
                began = time.perf_counter()
                policy.predict_action_chunk(batch)
                direct.append(1000 * (time.perf_counter() - began))
            for _ in range(10):
                began = time.perf_counter()
                client.infer(obs, task=task, seed=0)
                trips.append(1000 * (time.perf_counter() - began))
    chunk = statistics.median(direct)
    p99 = percentile(trips, 99)
    return {"chunk_ms_median": chunk, "round_trip_ms_median": statistics.median(trips),
            "round_trip_ms_p99": p99, "goal_ms": 1.5 * chunk + 2.0, "samples": len(trips)}  # fmt: skip


def closed_loop(url: str, task: str, clients: int, seconds: float) -> float:
    """Requests per second of ``clients`` clients each sending its next request as soon as it has a reply."""
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def robot(i: int) -> None:
        with PolicyClient(url) as client:
            while time.perf_counter() < stop:
                client.infer(observation(i), task=task, seed=i)
                counts[i] += 1

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def robots_at_rate(url: str, task: str, seconds: float) -> dict[str, Any]:
    """16 robots at 10 Hz; every reply checked against the robot's expected chunk."""
    latencies: list[float] = []
    lost = mismatched = sent = 0
    lock = threading.Lock()

    def robot(i: int) -> None:
        nonlocal lost, mismatched, sent
        with PolicyClient(url, timeout=10.0) as client:
            expected = client.infer(observation(100 + i), task=task, seed=100 + i)
            tick = time.perf_counter()
            stop = tick + seconds
            while tick < stop:
                began = time.perf_counter()
                try:
                    chunk = client.infer(observation(100 + i), task=task, seed=100 + i)
                    ok = np.allclose(chunk, expected, atol=1e-5)
                    with lock:
                        latencies.append(1000 * (time.perf_counter() - began))
                        mismatched += not ok
                except TimeoutError:
                    with lock:
                        lost += 1
                with lock:
                    sent += 1
                tick += 1.0 / ROBOT_HZ
                time.sleep(max(0.0, tick - time.perf_counter()))

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(ROBOTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"robots": ROBOTS, "hz": ROBOT_HZ, "seconds": seconds, "sent": sent, "replies": len(latencies),
            "lost": lost, "mismatched": mismatched, "latency_ms_p50": percentile(latencies, 50),
            "latency_ms_p99": percentile(latencies, 99)}  # fmt: skip


def onnx_export() -> str:
    """The shipped policy exported (dynamic batch), reusing benchmarks/inference.py's cache."""
    sys.path.insert(0, str(ROOT))
    import inference

    policy = load_policy(SHIPPED, device="cpu")
    inference.exported(policy, SHIPPED, None)
    return str(inference.cache_paths(policy, SHIPPED, None)[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="15 s per measurement instead of 60 s")
    parser.add_argument("--policies", default="torch,onnx", help="torch, onnx or both (torch,onnx)")
    args = parser.parse_args()
    seconds = 15.0 if args.quick else 60.0
    torch.set_num_threads(2)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for kind in args.policies.split(","):
        path = SHIPPED if kind == "torch" else onnx_export()
        policy = load_policy(path, device="cpu")
        port = free_port()
        server = start_server(path, port)
        url = f"ws://127.0.0.1:{port}"
        task = policy.config.tasks[0]
        try:
            row = {"policy": path, "round_trip": round_trip(url, policy, blocks=5 if args.quick else 10)}
            single = closed_loop(url, task, 1, seconds / 3)
            many = closed_loop(url, task, ROBOTS, seconds / 3)
            row["throughput"] = {"one_client_rps": single, "16_clients_rps": many, "ratio": many / single}
            row["robots"] = robots_at_rate(url, task, seconds)
        finally:
            server.terminate()
            server.wait(10)
        results[kind] = row
        trip, flow, robots = row["round_trip"], row["throughput"], row["robots"]
        print(
            f"{kind}: chunk {trip['chunk_ms_median']:.1f} ms, round trip median "
            f"{trip['round_trip_ms_median']:.1f} p99 {trip['round_trip_ms_p99']:.1f} ms (goal <= "
            f"{trip['goal_ms']:.1f}); throughput 1 client {flow['one_client_rps']:.1f}/s, 16 clients "
            f"{flow['16_clients_rps']:.1f}/s ({flow['ratio']:.2f}x); 16 robots at 10 Hz: "
            f"{robots['replies']}/{robots['sent']} replies, {robots['lost']} lost, {robots['mismatched']} "
            f"mismatched, p50 {robots['latency_ms_p50']:.1f} ms, p99 {robots['latency_ms_p99']:.1f} ms",
            flush=True,
        )
    wall = time.perf_counter() - started
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d"), "wall_s": wall,
        "machine": {"processor": platform.processor(), "cpus": os.cpu_count()}, "torch": torch.__version__,
        "mode_policy": mode_policy.__version__, "seeds": "robot i: observation and seed 100 + i",
        "results": results,
    }, indent=2))  # fmt: skip
    print(f"wall time {wall:.0f} s; results in {RESULTS.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    main()
