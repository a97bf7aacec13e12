"""AsyncActionStream: the robot loop asks for an action at its control rate and gets one at once.

stream = AsyncActionStream("ws://gpu-box:8765", task="open the drawer")
while running:
    robot.apply(stream.act({"observation.state": robot.state()}))     # (action_dim,), never waits
stream.close()

Each ``act`` is one control step (timestep t). A background thread keeps the queue of future actions
filled: when fewer than ``threshold`` are left it sends the current observation, and when the chunk
comes back (for timesteps t0, t0 + 1, ...) the actions whose timesteps have already been executed are
dropped and the overlap with the queue is joined by ``blend``:

- ``"inpaint"`` (default; needs a diffusion policy on the server): the request carries the queued
  actions, which are already committed, as a ``prefix``; the server samples the new chunk with them held
  (inpainting in the sampler), so the new chunk continues the old one and the queue takes it as it is;
- ``"latest"``: the new actions replace the queued ones; ``"weighted"``: ``0.3 old + 0.7 new`` (LeRobot's
  ``weighted_average``); ``"crossfade"``: a linear fade from the old to the new over the overlap.

``mode="sync"`` is the baseline: wait for each chunk when the queue is empty and run its first
``n_action_steps`` actions. Only the very first chunk (and, in sync mode, every chunk) is waited for; if
the queue runs dry later (a slow network) the last action is held and counted in ``stats["starved"]``. A
lost server is re-connected with back-off by the thread while the loop goes on. ``delay_steps`` (for
simulation, ``mode-policy eval --server``): a reply counts as arriving exactly ``delay_steps`` control
steps after its request, waiting for it if it is late, so that a run does not depend on the host's speed.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mode_policy.serving.client import PolicyClient, ServerError

BLENDS = ("inpaint", "latest", "weighted", "crossfade")
MODES = ("async", "sync")
OLD_WEIGHT = 0.3  # LeRobot's weighted_average: 0.3 old, 0.7 new


@dataclass
class _Job:
    start: int  # the timestep of the observation: the chunk's first action is for it
    observation: dict[str, np.ndarray]
    prefix: np.ndarray | None
    seed: int | None
    due: int | None  # simulated arrival step
    result: Any = None  # the chunk, or the exception it raised
    done: bool = False
    episode: Any = None  # the stream's episode when it was sent


class AsyncActionStream:
    """Actions for a robot loop from a policy server; see the module docstring.

    client: a :class:`PolicyClient` (used only by the stream's thread from then on) or a URL. task or
    task_index: what the robot does. threshold: request the next chunk when fewer actions than this are
    queued (default ``chunk_size - n_action_steps``, at least 1; at most ``chunk_size``: ask at every
    step); set it above the round trip in control steps (e.g. 150 ms at 20 Hz: 3 steps, so at least 4),
    or the queue runs dry and actions are held.
    hold_steps (inpaint): how many of the queued actions the request commits to, the steps the robot will
    run before the reply can land (the round trip in control steps, as real-time chunking's delay); the
    rest of the overlap is sampled afresh from the new observation. None: every queued action.
    seed: with a seed, request r carries seed + r (reproducible runs). max_in_flight: requests that may be
    out at once (each on its own connection): when the round trip is more than half a chunk, one request
    at a time cannot keep the queue filled, two staggered ones can.
    """

    def __init__(
        self,
        client: PolicyClient | str,
        task: str | None = None,
        *,
        task_index: int | None = None,
        blend: str = "inpaint",
        mode: str = "async",
        threshold: int | None = None,
        token: str | None = None,
        seed: int | None = None,
        delay_steps: int | None = None,
        max_in_flight: int = 1,
        hold_steps: int | None = None,
        first_chunk_timeout: float = 60.0,
    ) -> None:
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be 'async' or 'sync', got {mode!r}")
        if (task is None) == (task_index is None):
            raise ValueError("pass exactly one of task (an instruction) or task_index")
        self.client = PolicyClient(client, token=token) if isinstance(client, str) else client
        meta = self.client.metadata
        if blend == "inpaint" and mode == "async" and not meta.get("inpainting"):
            raise ValueError(
                f"the server's {meta.get('policy_type')} policy cannot inpaint a prefix; use "
                "blend='crossfade' or 'weighted'"
            )
        self.chunk_size, self.n_action_steps = meta["chunk_size"], meta["n_action_steps"]
        self.n_obs_steps = meta["n_obs_steps"]
        default = max(1, self.chunk_size - self.n_action_steps)
        self.threshold = _integer_in(  # threshold = chunk_size: ask at every step (see max_in_flight)
            "threshold", default if threshold is None else threshold, 1, self.chunk_size + 1
        )
        self.max_in_flight = 1 if mode == "sync" else _integer_in("max_in_flight", max_in_flight, 1, None)
        self.hold_steps = (
            None if hold_steps is None else _integer_in("hold_steps", hold_steps, 1, self.chunk_size)
        )
        self.task, self.task_index, self.blend, self.mode = task, task_index, blend, mode
        self.seed, self.delay_steps, self.first_chunk_timeout = seed, delay_steps, first_chunk_timeout
        self.stats = {"requests": 0, "starved": 0, "dropped": 0, "errors": 0, "reconnects": 0}
        self._pending_error: ServerError | None = None  # a refused request, raised by the next act
        self._lock = threading.Condition()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        # One connection per request in flight (a connection answers in order), the first one given.
        self._clients = [self.client] + [self.client.copy() for _ in range(self.max_in_flight - 1)]
        self._threads = [
            threading.Thread(target=self._work, args=(client,), daemon=True, name="action-stream")
            for client in self._clients
        ]
        for thread in self._threads:
            thread.start()
        self.reset()

    # The robot's side -------------------------------------------------------------------------------
    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        """The action (action_dim,) for this control step, given this step's observation (no batch axis)."""
        self.observe(observation)
        return self.take()

    def observe(self, observation: Mapping[str, Any]) -> None:
        """The first half of ``act``: record the observation and send a request if one is due, without
        waiting (a simulator stepping many robots observes them all, then takes their actions)."""
        with self._lock:
            self._raise_pending()
            self._observe(observation)
            t = self.t
            while self.delay_steps is not None and self._flight and self._flight[0].due <= t:
                self._wait(self._flight[0], None)
            if self.mode == "sync":
                if not self._flight and t not in self._queue:
                    self._request(t)
            elif len(self._flight) < self.max_in_flight and self._covered(t) < self.threshold:
                self._request(t)

    def take(self) -> np.ndarray:
        """The second half of ``act``: this step's action (waiting only for a first or a sync chunk)."""
        with self._lock:
            t = self.t
            if self.mode == "sync" and t not in self._queue and self._flight:
                self._wait(self._flight[0], None)
            if self._last is None:  # the first chunk: nothing to hold yet, so wait (and retry) for it
                deadline = time.monotonic() + self.first_chunk_timeout
                while t not in self._queue:
                    if not self._flight:
                        self._request(t)
                    self._wait(self._flight[0], max(0.0, deadline - time.monotonic()))
            if t in self._queue:
                action = self._queue.pop(t)
            else:
                self.stats["starved"] += 1
                action = self._last
            self._last = action
            self.t += 1
            return action.copy()

    def reset(self) -> None:
        """A new episode: forget the queue and the observation history (a reply in flight is dropped)."""
        with self._lock:
            self.t = 0
            self._queue: dict[int, np.ndarray] = {}
            self._history: collections.deque = collections.deque(maxlen=self.n_obs_steps)
            self._last: np.ndarray | None = None
            self._flight: list[_Job] = []  # requests sent and not merged yet, oldest first
            self._newest_merged = -1  # the start of the newest chunk merged (older replies are stale)
            self._episode = object()  # replies of an older episode are ignored

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(5)
        for client in self._clients:
            client.close()

    def __enter__(self) -> AsyncActionStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # Queue ---------------------------------------------------------------------------------------------
    def _observe(self, observation: Mapping[str, Any]) -> None:
        frame = {key: np.asarray(value) for key, value in observation.items()}
        if not self._history:
            self._history.extend([frame] * self.n_obs_steps)  # the first observation fills the history
        else:
            self._history.append(frame)

    def _covered(self, t: int) -> int:
        """How many steps from t on are queued or will be when the requests in flight land."""
        ends = [max(self._queue, default=t - 1), *(job.start + self.chunk_size - 1 for job in self._flight)]
        return max(0, max(ends) - t + 1)

    def _request(self, t: int) -> _Job:
        observation = {key: np.stack([frame[key] for frame in self._history]) for key in self._history[0]}
        if self.n_obs_steps == 1:
            observation = {key: value[0] for key, value in observation.items()}
        prefix = None
        if self.blend == "inpaint" and self.mode == "async":
            held = self.chunk_size - 1 if self.hold_steps is None else self.hold_steps
            committed = [self._queue[s] for s in range(t, t + held) if s in self._queue]
            prefix = np.stack(committed) if committed else None
        seed = None if self.seed is None else self.seed + self.stats["requests"]
        due = None if self.delay_steps is None else t + self.delay_steps
        job = _Job(t, observation, prefix, seed, due, episode=self._episode)
        self.stats["requests"] += 1
        self._flight.append(job)
        self._jobs.put(job)
        return job

    def _wait(self, job: _Job | None, timeout: float | None) -> None:
        """Block until ``job`` has its reply, then merge it (held lock released while waiting)."""
        if job is None:
            return
        if not self._lock.wait_for(lambda: job.done, timeout):
            raise TimeoutError(f"no chunk from {self.client.url} within {timeout:.3g} s")
        self._merge(job)
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._pending_error is not None:
            problem, self._pending_error = self._pending_error, None
            raise problem

    def _merge(self, job: _Job) -> None:
        """Join a reply into the queue (see the module docstring); called with the lock held."""
        if job in self._flight:
            self._flight.remove(job)
        if job.episode is not self._episode or job.result is None:
            return
        if job.start < self._newest_merged:  # overtaken by a newer chunk (replies out of order)
            job.result = None
            return
        if isinstance(job.result, ServerError):  # the request itself was wrong (a shape, the task): the
            self._pending_error, job.result = job.result, None  # robot loop's error, raised by act
            return
        if isinstance(job.result, Exception):
            self.stats["errors"] += 1
            job.result = None
            return
        chunk, job.result = job.result, None
        self._newest_merged = job.start
        if self.mode == "sync":
            chunk = chunk[: self.n_action_steps]
        steps = [job.start + i for i in range(len(chunk))]
        fresh = [(s, a) for s, a in zip(steps, chunk, strict=True) if s >= self.t]
        self.stats["dropped"] += len(chunk) - len(fresh)
        overlap = [s for s, _ in fresh if s in self._queue]
        for s, new in fresh:
            old = self._queue.get(s)
            if old is None or self.blend in ("inpaint", "latest"):
                self._queue[s] = new
            elif self.blend == "weighted":
                self._queue[s] = OLD_WEIGHT * old + (1 - OLD_WEIGHT) * new
            else:  # crossfade: the weight of the new chunk rises linearly over the overlap
                weight = (overlap.index(s) + 1) / (len(overlap) + 1)
                self._queue[s] = (1 - weight) * old + weight * new
        for s in [s for s in self._queue if s < self.t]:
            del self._queue[s]

    # The thread ----------------------------------------------------------------------------------------
    def _work(self, client: PolicyClient) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                result: Any = client.infer(
                    job.observation, self.task, task_index=self.task_index, prefix=job.prefix, seed=job.seed
                )
            except Exception as problem:  # delivered to the loop, which decides: raise, or hold and retry
                result = problem
            with self._lock:
                job.result, job.done = result, True
                self.stats["reconnects"] = sum(c.reconnects for c in self._clients)
                if self.delay_steps is None and self.mode == "async":
                    self._merge(job)
                self._lock.notify_all()


def _integer_in(name: str, value: Any, low: int, high: int | None) -> int:
    """``value`` if it is an integer in [low, high) (high None: no bound), else one clear ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value >= high)
    ):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return value
