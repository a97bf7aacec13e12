"""Main-process side of the environment workers: scatter jobs over processes, gather their replies."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np

from mode_policy.evaluation.workers import Job, worker_main


class WorkerError(RuntimeError):
    """An environment worker raised; the message carries its traceback."""


class EnvPool:
    """``num_workers`` spawned processes; job ``j`` lives on worker ``j % num_workers``.

    Jobs are assigned by their index, never by timing, so results do not depend on the worker count.
    """

    def __init__(
        self,
        num_workers: int,
        *,
        video_dir: str | None = None,
        video_fps: int = 30,
        cameras: list[str] | None = None,
        image_size: tuple[int, int] = (96, 96),
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        context = mp.get_context("spawn")
        self._conns = []
        self._procs = []
        for _ in range(num_workers):
            parent, child = context.Pipe()
            proc = context.Process(
                target=worker_main,
                args=(child, video_dir, video_fps, list(cameras or []), tuple(image_size)),
                daemon=True,
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def _owner(self, job: int) -> int:
        return job % len(self._conns)

    def _call(self, per_worker: dict[int, tuple[str, Any]]) -> dict[int, Any]:
        for worker, message in per_worker.items():
            self._conns[worker].send(message)
        replies = {}
        for worker in per_worker:
            try:
                status, payload = self._conns[worker].recv()
            except EOFError:
                raise WorkerError(
                    f"environment worker {worker} died (exit code {self._procs[worker].exitcode})"
                ) from None
            if status == "error":
                raise WorkerError(f"environment worker {worker} failed:\n{payload}")
            replies[worker] = payload
        return replies

    def start(self, jobs: list[Job]) -> dict[int, np.ndarray]:
        """Reset an env per job to its seed; {job: first observation}."""
        split: dict[int, list[Job]] = {}
        for job in jobs:
            split.setdefault(self._owner(job[0]), []).append(job)
        replies = self._call({w: ("start", js) for w, js in split.items()})
        return {job: obs for reply in replies.values() for job, obs in reply.items()}

    def step(self, actions: dict[int, np.ndarray]) -> dict[int, tuple[np.ndarray, bool]]:
        """One env step per job; {job: (observation, success)}."""
        split: dict[int, dict[int, np.ndarray]] = {}
        for job, action in actions.items():
            split.setdefault(self._owner(job), {})[job] = action
        replies = self._call({w: ("step", acts) for w, acts in split.items()})
        return {job: out for reply in replies.values() for job, out in reply.items()}

    def finish(self, jobs: list[int]) -> None:
        split: dict[int, list[int]] = {}
        for job in jobs:
            split.setdefault(self._owner(job), []).append(job)
        self._call({w: ("finish", js) for w, js in split.items()})

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs, strict=True):
            try:
                conn.send(("close", None))
                conn.recv()
            except (EOFError, BrokenPipeError, OSError):
                pass
            conn.close()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
